"""The embedded-model recipe: aligned crops of the synthetic set, and a tiny end-to-end run of the recipe."""

from __future__ import annotations

import json

import torch

from v2a_sampler.media.specs import AudioSpec, VideoSpec
from v2a_sampler.pipelines.embedded import Pipeline
from v2a_sampler.training.synth_v2a import ClipCrops, build_synth_set, mel_video_ratio
from v2a_sampler.training.v2a_recipe import train_embedded


def test_crops_keep_audio_and_video_aligned():
    n, tv, ratio, crop = 3, 20, 2, 5
    # mel frame j and video frame k carry their own times, so alignment is visible in the values
    mels = torch.arange(ratio * tv + 1, dtype=torch.float32).repeat(n, 4, 1) + 1000 * torch.arange(n).view(n, 1, 1)
    frames = torch.arange(tv).view(1, tv, 1, 1, 1).repeat(n, 1, 2, 2, 3).to(torch.uint8) + 50 * torch.arange(n).view(
        n, 1, 1, 1, 1
    ).to(torch.uint8)
    mel, cond = ClipCrops(mels, frames, crop, ratio)(64, torch.Generator().manual_seed(0))
    vid = cond["video"]
    assert mel.shape == (64, 4, crop * ratio) and vid.shape == (64, crop, 2, 2, 3)
    clip = (mel[:, 0, 0] // 1000).long()
    assert torch.equal(clip, (vid[:, 0, 0, 0, 0] // 50).long())  # same clip
    start_mel = mel[:, 0, 0] - 1000 * clip
    start_vid = vid[:, 0, 0, 0, 0].long() - 50 * clip
    assert torch.equal(start_mel.long(), ratio * start_vid)  # same time
    assert mel_video_ratio(AudioSpec(), VideoSpec()) == 2


def test_recipe_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("V2A_CACHE", str(tmp_path / "cache"))
    tiny = {
        "num_clips": 4,
        "duration": 2.0,
        "crop_seconds": 1.0,
        "iterations": 6,
        "bad_iteration": 2,
        "batch_size": 2,
        "lr_warmup": 0,
        "lr_decay_start": None,
        "arch_kwargs": {"n_mels": 64, "patch": 2, "dim": 32, "depth": 1, "heads": 2, "video_dim": 16,
                        "frame_size": 32, "encoder_width": 8},
    }  # fmt: skip
    folder = train_embedded(tmp_path / "run", tiny, progress=False)
    assert json.loads((folder / "recipe.json").read_text())["iterations"] == 6
    assert json.loads((folder / "bad" / "config.json").read_text())["training"]["iteration"] == 2
    pipe = Pipeline.from_pretrained(folder)
    assert pipe.bad is not None and pipe.audio_spec.mel_mean
    assert not torch.equal(pipe.model.tok_out.weight, pipe.bad.tok_out.weight)  # really two checkpoints
    out = pipe(torch.randint(0, 255, (30, 32, 32, 3), dtype=torch.uint8), guidance="hg", steps=2, griffin_lim_iters=1)
    assert abs(out.duration - 30 / 25) < 0.05 and torch.isfinite(out.waveform).all()
    # the data set was cached: a second build reads it back
    data = build_synth_set(4, 2.0, 0, AudioSpec(), VideoSpec(), progress=False)
    assert data.mels.shape == (4, 64, AudioSpec().num_frames(2.0)) and data.frames.shape == (4, 50, 32, 32, 3)
