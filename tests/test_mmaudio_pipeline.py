"""MMAudio end to end on CPU with random weights at reduced sizes: lengths, rates, batching, prompts, guidance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from v2a_sampler import Pipeline
from v2a_sampler.mmaudio.checkpoints import CheckpointError
from v2a_sampler.mmaudio.encoders import MMAudioFeatures
from v2a_sampler.mmaudio.frames import read_video
from v2a_sampler.mmaudio.network import MMAudio
from v2a_sampler.mmaudio.synchformer import Synchformer, SynchformerConfig
from v2a_sampler.mmaudio.vae import AudioVAE, VAEConfig
from v2a_sampler.mmaudio.vocoder import BigVGAN, BigVGANConfig, MMAudioDecoder
from v2a_sampler.pipelines.mmaudio import MMAudioPipeline
from v2a_sampler.synth import make_clip, write_mp4

RATE, HOP = 16000, 256
SYNC_DIM, CLIP_DIM, TEXT_DIM, TEXT_LEN, LATENT = 16, 12, 14, 7, 4
STEPS = 3


class StubClip(nn.Module):
    """Stands in for the open_clip model: deterministic image and text features of the network's sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(3, CLIP_DIM)
        self.text = nn.Embedding(128, TEXT_DIM)

    def encode_frames(self, frames: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        return self.image(frames.mean(dim=(-1, -2)))

    def encode_text(self, prompts) -> torch.Tensor:
        ids = torch.tensor([[ord(c) % 128 for c in (p + " " * TEXT_LEN)[:TEXT_LEN]] for p in prompts])
        return self.text(ids.to(self.text.weight.device))


def _network(seed: int, **over) -> MMAudio:
    torch.manual_seed(seed)
    kw = dict(
        latent_dim=LATENT,
        clip_dim=CLIP_DIM,
        sync_dim=SYNC_DIM,
        text_dim=TEXT_DIM,
        hidden_dim=16,
        depth=2,
        fused_depth=1,
        num_heads=2,
        text_seq_len=TEXT_LEN,
        sampling_rate=RATE,
        spectrogram_frame_rate=HOP,
    )
    m = MMAudio(**{**kw, **over})
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.2)
    return m


def tiny_mmaudio_pipeline() -> MMAudioPipeline:
    """A 16 kHz MMAudio pipeline with random weights at reduced sizes (stub CLIP, small Synchformer)."""
    torch.manual_seed(0)
    vae = AudioVAE(VAEConfig(data_dim=80, embed_dim=LATENT, hidden_dim=8), with_encoder=False)
    config = BigVGANConfig(num_mels=80, upsample_rates=(4, 4, 2, 2, 2, 2), upsample_kernel_sizes=(8, 8, 4, 4, 4, 4),
                           upsample_initial_channel=64, resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),),
                           sampling_rate=RATE)  # fmt: skip
    vocoder = BigVGAN(config)
    decoder = MMAudioDecoder("16k", vae=vae, vocoder=vocoder)
    features = MMAudioFeatures(StubClip(), Synchformer(SynchformerConfig(dim=SYNC_DIM, depth=1, heads=2)))
    return MMAudioPipeline(_network(0), decoder, features, bad=_network(1), name="tiny")


@pytest.fixture(scope="module")
def pipe():
    return tiny_mmaudio_pipeline()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmaudio_clips")
    out = {}
    for name, dur, fps in [("a", 2.0, 25.0), ("b", 1.5, 29.97)]:
        out[name] = root / f"{name}.mp4"
        write_mp4(make_clip(3, duration=dur, fps=fps, size=48), out[name])
    return out


def test_video_to_audio_lengths_and_rate(pipe, clips):
    out = pipe(clips["a"], duration=2.0, steps=STEPS)
    dur = read_video(clips["a"], 2.0).duration  # 1.96 s: the official reader drops the frame at exactly 2 s
    n_latent = pipe.model.sequence_lengths(dur)["latent"]
    assert out.sample_rate == RATE and out.waveform.shape == (round(dur * RATE),)
    assert out.mel.shape == (80, 2 * n_latent)
    assert torch.isfinite(out.waveform).all() and out.waveform.abs().max() > 0
    assert out.info["nfe"] == 2 * STEPS and out.info["guidance"] == {"type": "cfg", "w": 4.5}
    assert out.source == str(clips["a"])


def test_duration_is_cut_to_the_video_as_the_official_reader(pipe, clips):
    out = pipe(clips["b"], duration=8.0, steps=2)  # a 1.5 s video: the official reader truncates the duration
    assert abs(out.duration - 1.5) < 0.05


def test_batch_equals_one_by_one_and_prompts_matter(pipe, clips):
    kw = dict(steps=STEPS, duration=2.0, guidance="cfg(3)")
    batch = pipe([clips["a"], clips["a"]], prompt=["rain", "a dog barks"], seed=5, **kw)
    singles = [pipe(clips["a"], prompt=p, seed=5 + i, **kw) for i, p in enumerate(["rain", "a dog barks"])]
    for b, s in zip(batch, singles, strict=True):
        assert torch.allclose(b.waveform, s.waveform, atol=1e-4)
    assert not torch.allclose(batch[0].mel, batch[1].mel, atol=1e-3)
    plain = pipe(clips["a"], prompt="rain", seed=5, **kw)
    negative = pipe(clips["a"], prompt="rain", negative_prompt="music", seed=5, **kw)
    assert not torch.allclose(plain.mel, negative.mel, atol=1e-3)
    assert negative.info["negative_prompt"] == "music"


def test_text_only_and_guidance_with_the_bad_model(pipe):
    out = pipe(None, prompt="thunder", duration=1.0, steps=STEPS, guidance="hg")
    assert out.waveform.shape == (RATE,) and out.source is None
    assert out.info["nfe"] == 4 * STEPS
    assert pipe.nfe("hg", steps=STEPS) == 4 * STEPS and pipe.nfe("cfg(2)", "heun", STEPS) == 2 * (2 * STEPS - 1)


def test_bad_inputs(pipe, clips):
    with pytest.raises(ValueError, match="2 values of prompt for 1 items"):
        pipe(clips["a"], prompt=["a", "b"], steps=1)
    with pytest.raises(ValueError, match="duration must be a positive"):
        pipe(None, duration=0.0)
    with pytest.raises(ValueError, match="does not share the latent space"):
        MMAudioPipeline(_network(0), pipe.decoder, bad=_network(1, spectrogram_frame_rate=512, sampling_rate=44100))


def test_pipeline_from_pretrained_dispatches_and_reports_offline(tmp_path):
    with pytest.raises(CheckpointError, match=r"cannot get hkchengrex/MMAudio/weights/mmaudio_small_16k.pth"):
        Pipeline.from_pretrained("hkchengrex/MMAudio", variant="small_16k", cache_dir=tmp_path, local_files_only=True)
    with pytest.raises(ValueError, match="unknown MMAudio variant 'huge'"):
        Pipeline.from_pretrained("hkchengrex/MMAudio", variant="huge")
