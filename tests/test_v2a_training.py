"""The embedded-model recipe: aligned crops of the synthetic set, and a tiny end-to-end run of the recipe."""

from __future__ import annotations

import json

import pytest
import torch

from v2a_sampler.media.specs import AudioSpec, VideoSpec
from v2a_sampler.models import V2AFlow, from_pretrained
from v2a_sampler.pipelines.embedded import Pipeline
from v2a_sampler.training.synth_v2a import ClipCrops, build_synth_set, mel_video_ratio
from v2a_sampler.training.v2a_recipe import bad_candidates, train_embedded


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


def test_recipe_runs_every_stage_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("V2A_CACHE", str(tmp_path / "cache"))
    arch = {"n_mels": 64, "patch": 2, "dim": 32, "depth": 1, "heads": 2, "video_dim": 16, "frame_size": 32,
            "encoder_width": 8}  # fmt: skip
    tiny = {
        "num_clips": 4,
        "duration": 2.0,
        "crop_seconds": 1.0,
        "batch_size": 2,
        "base": {"arch_kwargs": arch, "iterations": 4, "earlier": 2, "lr_warmup": 0, "lr_decay_start": None},
        "depth": 2,
        "frozen_encoder": True,
        "iterations": 10,
        "lr_warmup": 0,
        "lr_decay_start": None,
        "save_every": 0,
        "small": {"dim": 16, "heads": 2, "iterations": 2},
        "bad": "finetune",
    }
    run = tmp_path / "run"
    # the stages that need the shared base refuse to run before it exists
    with pytest.raises(ValueError, match="stage finetune needs .*base/iter-000004: run the stages before it first"):
        train_embedded(run, tiny, stages=["finetune"], progress=False)
    folder = train_embedded(run, tiny, progress=False)
    timings = json.loads((run / "timings.json").read_text())
    assert set(timings) == {"base", "main", "finetune", "small", "amg"}
    # candidates: the base run's iteration 2, the base, the fine-tune at 10/25/50/70 % (1, 2 (2.5 rounded), 5, 7),
    # the base fine-tuned for 50 % (5) with another seed, the half-width network
    found = bad_candidates(run, tiny)
    assert {k: (v.parent.name, int(v.name[5:])) for k, v in found.items()} == {
        "base-earlier": ("base", 2), "base": ("base", 4), "earlier:0.1": ("run", 1), "earlier:0.25": ("run", 2),
        "earlier:0.5": ("run", 5), "earlier:0.7": ("run", 7), "finetune": ("finetune", 5), "small": ("small", 2),
    }  # fmt: skip
    # the run records its recipe, so tools that read the run find the same candidates without being told the recipe
    import v2a_bad_models as VB

    from v2a_sampler.training.v2a_recipe import merge_recipe, run_recipe

    assert run_recipe(run) == merge_recipe(tiny)
    assert {k: v for k, v in VB.candidates(run).items() if not k.startswith("perturb:")} == found
    ft = json.loads((found["finetune"] / "config.json").read_text())
    assert ft["training"]["config"]["init_from"].endswith("base/iter-000004") and ft["arch_kwargs"]["depth"] == 2
    assert ft["training"]["config"]["seed"] == 11 and ft["training"]["config"]["lr"] == 6e-4
    assert json.loads((found["small"] / "config.json").read_text())["arch_kwargs"]["dim"] == 16
    recipe = json.loads((folder / "recipe.json").read_text())
    assert recipe["recipe"]["iterations"] == 10 and recipe["train_minutes"] == timings
    bad_cfg = json.loads((folder / "bad" / "config.json").read_text())
    assert bad_cfg["storage_dtype"] == "float16" and bad_cfg["training"]["role"].startswith("bad (finetune:")
    pipe = Pipeline.from_pretrained(folder)
    assert len(pipe.model.blocks) == 2 and pipe.default_guidance == "hg"
    base = from_pretrained(run / "base" / "iter-000004")
    for name, p in base.encoder.state_dict().items():  # the fine-tunes trained on the base's frozen video features
        assert torch.equal(pipe.model.encoder.state_dict()[name], p.half().float()), name
    assert pipe.model.tok_out.weight.dtype == torch.float32  # stored in float16, sampled in float32
    assert not torch.equal(pipe.model.tok_out.weight, pipe.bad.tok_out.weight)  # really two checkpoints
    out = pipe(torch.randint(0, 255, (30, 32, 32, 3), dtype=torch.uint8), guidance="hg", steps=2, griffin_lim_iters=1)
    assert abs(out.duration - 30 / 25) < 0.05 and torch.isfinite(out.waveform).all()
    # the AMG variant: the good run forked at 50 % and continued with AMG to the good model's iteration count
    amg = Pipeline.from_pretrained(run / "amg_model")
    amg_train = json.loads((run / "amg_model" / "config.json").read_text())["training"]
    assert amg.model.amg_weight == 0.5 and amg.bad is None and amg.default_guidance == "cfg(1.45)"
    assert amg_train["config"]["init_from"].endswith("run/iter-000005") and amg_train["config"]["iterations"] == 5
    assert amg_train["amg_weight_now"] == 0.5 and amg.plan().sampler.guidance.spec() == "cfg(1.45)"
    # a finished run is not trained again: exporting another candidate only copies it
    again = train_embedded(run, {**tiny, "bad": "base-earlier"}, stages=["export"], progress=False)
    assert json.loads((again / "bad" / "config.json").read_text())["training"]["iteration"] == 2
    assert json.loads((run / "timings.json").read_text()) == timings
    # --base: a model trained by the base recipe before is the shared base (its bad/ the base run's early checkpoint)
    other = tmp_path / "other"
    short = {**tiny, "iterations": 2, "checkpoints": [0.5], "frozen_encoder": False}  # end to end: the encoder trains
    train_embedded(other, short, stages=["base", "main"], base=folder, progress=False)
    assert not (other / "base").exists() and (other / "run" / "iter-000002").is_dir()
    trained = from_pretrained(other / "run" / "iter-000002").encoder.state_dict()
    assert any(not torch.equal(trained[k], p.half().float()) for k, p in pipe.model.encoder.state_dict().items())
    assert bad_candidates(other, short) == {"base-earlier": folder.resolve() / "bad", "base": folder.resolve(),
                                           "earlier:0.5": other / "run" / "iter-000001"}  # fmt: skip
    # the data set was cached: a second build reads it back
    data = build_synth_set(4, 2.0, 0, AudioSpec(), VideoSpec(), progress=False)
    assert data.mels.shape == (4, 64, AudioSpec().num_frames(2.0)) and data.frames.shape == (4, 50, 32, 32, 3)


def test_a_deepened_network_computes_the_same_function():
    torch.manual_seed(0)
    m = V2AFlow(n_mels=16, patch=2, dim=32, depth=2, heads=2, video_dim=16, frame_size=16, encoder_width=8)
    with torch.no_grad():
        for p in m.parameters():  # AdaLN-zero layers start at zero: make every block do something
            p.add_(0.05 * torch.randn_like(p))
    grown = m.deepened(4)
    assert len(grown.blocks) == 4 and grown.arch_kwargs["depth"] == 4
    x, t = torch.randn(2, 16, 20), torch.rand(2)
    video = torch.randint(0, 255, (2, 10, 16, 16, 3), dtype=torch.uint8)
    assert torch.equal(grown(x, t, {"video": video}), m(x, t, {"video": video}))
    with pytest.raises(ValueError, match=r"deepened\(1\) cannot remove blocks: the network has 2"):
        m.deepened(1)


def test_the_bad_model_selection_rule_is_hg_fd_among_the_best_hg_onset_f1():
    import v2a_bad_models as VB

    rows = [
        {"bad": "a", "method": "hg", "onset_f1": 0.70, "fd": 6.0},
        {"bad": "b", "method": "hg", "onset_f1": 0.69, "fd": 5.5},  # within 0.02 of the best F1 and a lower FD
        {"bad": "c", "method": "hg", "onset_f1": 0.60, "fd": 4.0},  # lowest FD, but its timing is worse
        {"bad": "c", "method": "ag(2)", "onset_f1": 0.90, "fd": 1.0},  # AG rows are reported, not selected on
    ]
    assert VB.select(rows) == "b"
    assert VB.select([{**r, "onset_f1": 0.5} if r["bad"] == "b" else r for r in rows]) == "a"


def test_bad_model_summary_reports_the_diagnostic_and_its_rank_correlation_with_quality():
    import v2a_bad_models as VB

    names = ["a", "b", "c", "d", "e"]
    rows = [{"bad": n, "method": m, "onset_f1": 0.5 + 0.015 * i * (1 if m == "hg" else -1), "fd": 5.0 + i,
             "class_accuracy": 0.6} for i, n in enumerate(names) for m in VB.METHODS]  # fmt: skip
    diag = {n: {"w_star_mean": 1.0 + 0.1 * i, "w_star_mean_lo": 0.9, "w_star_mean_hi": 1.5,
                "rel_reduction_lb_mean": 0.001 * (5 - i), "excess_loss_mean": 0.01 * i}
            for i, n in enumerate(names)}  # fmt: skip
    text = VB.summary(rows, diag, VB.select(rows), "caption")
    # d and e are within 0.02 of the best HG onset F1; d has the lower HG FD
    assert "| `d` **(shipped)** |" in text and "0.0300 |" in text
    lines = {ln.split(" |")[0]: ln for ln in text.splitlines() if ln.startswith("| w*") or ln.startswith("| excess")}
    # w* rises with every candidate's FD and HG onset F1 and falls with AG's onset F1: rho = +1 / -1 exactly
    assert lines["| w*"].count("+1.00") == 3 and lines["| w*"].count("-1.00") == 1
    assert "(p 0.0" in lines["| excess loss"]  # 5 points, perfectly ranked: the permutation p-value is 2/120
