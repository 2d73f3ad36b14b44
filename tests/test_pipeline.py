"""Pipeline end to end with a tiny random V2A model: durations, batching, seeds, saving, muxing, loading."""

from __future__ import annotations

import json

import pytest
import torch

from v2a_sampler.media import io
from v2a_sampler.media.specs import AudioSpec, VideoSpec
from v2a_sampler.models.v2a_flow import V2AFlow
from v2a_sampler.pipelines.embedded import Pipeline
from v2a_sampler.synth import make_clip, write_mp4

TINY = dict(n_mels=16, patch=2, dim=32, depth=1, heads=2, video_dim=16, frame_size=16, encoder_width=8)


def _tiny_model(seed: int) -> V2AFlow:
    audio = AudioSpec(n_mels=16, n_fft=512, hop=320)
    audio.mel_mean, audio.mel_std = [-4.0] * 16, [2.0] * 16
    torch.manual_seed(seed)
    m = V2AFlow(**TINY, audio=audio.to_dict(), video=VideoSpec(fps=25.0, frame_size=16).to_dict())
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def pipe():
    return Pipeline(_tiny_model(0), _tiny_model(1))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    paths = {}
    for name, dur, fps in [("a", 2.0, 25.0), ("b", 2.0, 29.97), ("c", 1.3, 10.0)]:
        clip = make_clip(7, duration=dur, fps=fps, size=48)
        paths[name] = root / f"{name}.mp4"
        write_mp4(clip, paths[name])
    return paths


@pytest.mark.parametrize("name", ["a", "b", "c"])
def test_output_duration_matches_the_video(pipe, clips, name):
    out = pipe(clips[name], guidance="cfg(2)", steps=2, griffin_lim_iters=2)
    dur = io.probe_video(clips[name]).duration
    assert abs(out.duration - dur) < 0.1
    assert out.sample_rate == 16000 and out.waveform.ndim == 1
    assert torch.isfinite(out.waveform).all() and out.waveform.abs().max() > 0
    assert out.info["nfe"] == 4 and out.info["seed"] == 0


def test_seed_determinism_and_batch_equals_one_by_one(pipe, clips):
    kw = dict(guidance="hg", steps=3, griffin_lim_iters=2, solver="dpmpp_2m_sde")
    batch = pipe([clips["a"], clips["b"], clips["a"]], seed=10, **kw)
    singles = [pipe(clips[n], seed=10 + i, **kw) for i, n in enumerate(["a", "b", "a"])]
    for b, s in zip(batch, singles, strict=True):
        assert torch.allclose(b.mel, s.mel, atol=1e-4)
        assert (b.waveform - s.waveform).abs().mean() < 1e-3
    again = pipe(clips["a"], seed=10, **kw)
    assert torch.equal(again.waveform, singles[0].waveform)
    assert not torch.allclose(batch[0].waveform, batch[2].waveform)  # same video, different seed


def test_frames_tensor_input(pipe):
    frames = torch.randint(0, 255, (40, 32, 32, 3), dtype=torch.uint8)
    out = pipe(frames, guidance="cfg(3)", steps=2, griffin_lim_iters=1)
    assert abs(out.duration - 40 / 25.0) < 0.05


def test_brownian_noise_batch_equals_one_by_one_and_progress_counts_stages(pipe):
    """A Brownian tree seeded from the items' generators keeps a batch equal to its items one by one; progress
    reports every denoiser stage."""
    frames = [torch.randint(0, 255, (20, 32, 32, 3), generator=torch.Generator().manual_seed(i), dtype=torch.uint8)
              for i in range(2)]  # fmt: skip
    kw = dict(guidance="cfg(2)", solver="dpmpp_sde", steps=3, griffin_lim_iters=1, brownian=1)
    seen: list[tuple[int, int]] = []
    batch = pipe(frames, seed=4, progress=lambda done, total: seen.append((done, total)), **kw)
    assert seen == [(k, 5) for k in range(1, 6)]  # 2 + 2 + 1 stages (Euler on the last step)
    singles = [pipe(f, seed=4 + i, **kw) for i, f in enumerate(frames)]
    for b, one in zip(batch, singles, strict=True):
        assert torch.allclose(b.mel, one.mel, atol=1e-4) and b.info["nfe"] == 10
    plain = pipe(frames[0], seed=4, **{**kw, "brownian": 0})
    assert not torch.allclose(plain.mel, singles[0].mel, atol=1e-3)


def test_save_mux_and_overwrite(pipe, clips, tmp_path):
    out = pipe(clips["a"], guidance="none", steps=2, griffin_lim_iters=1)
    wav = out.save(tmp_path / "a.wav")
    audio, sr = io.read_audio(wav)
    assert sr == 16000 and abs(audio.shape[-1] / sr - 2.0) < 0.05
    with pytest.raises(io.V2AInputError, match="exists"):
        out.save(wav)
    out.save(wav, overwrite=True)
    muxed = out.mux(clips["a"], tmp_path / "a_sound.mp4")
    info = io.probe_video(muxed)
    assert info.has_audio and abs(info.duration - 2.0) < 0.1


def test_save_and_load_pipeline(pipe, clips, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    assert (tmp_path / "pipe" / "bad" / "config.json").exists()
    loaded = Pipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.bad is not None
    a = pipe(clips["c"], guidance="hg", steps=2, griffin_lim_iters=1)
    b = loaded(clips["c"], guidance="hg", steps=2, griffin_lim_iters=1)
    assert torch.allclose(a.waveform, b.waveform, atol=1e-5)
    no_bad = Pipeline.from_pretrained(tmp_path / "pipe", bad=False)
    with pytest.raises(ValueError, match="needs a bad model"):
        no_bad(clips["c"], guidance="hg", steps=2)


def test_default_guidance_follows_the_models(clips, tmp_path):
    good, bad = _tiny_model(0), _tiny_model(1)
    assert Pipeline(good, bad).default_guidance == "hg" and Pipeline(good, bad).nfe() == 25 * 4
    assert Pipeline(good).default_guidance == "cfg" and Pipeline(good).nfe() == 25 * 2  # no bad model: no error
    # MGAudio: an AMG-trained model is sampled with a small extra CFG, with or without a bad model
    amg = Pipeline(_tiny_model(2).set_protocol(amg_weight=0.5), bad)
    assert amg.default_guidance == "cfg(1.45)" and amg.plan(steps=2).sampler.guidance.spec() == "cfg(1.45)"
    out = amg(clips["c"], steps=2, griffin_lim_iters=1)
    assert out.info["nfe"] == 4 and out.info["effective_strength"] == pytest.approx(1.45 / 0.5)
    Pipeline(amg.model).save_pretrained(tmp_path / "amg")
    assert Pipeline.from_pretrained(tmp_path / "amg").default_guidance == "cfg(1.45)"
    # read from the config alone (--explain, the app) it is what the loaded pipeline says, for every case
    from v2a_sampler.pipelines.config import RunConfig
    from v2a_sampler.pipelines.loader import default_guidance

    Pipeline(good, bad).save_pretrained(tmp_path / "with_bad")
    Pipeline(good).save_pretrained(tmp_path / "alone")
    folders = {name: str(tmp_path / name) for name in ("amg", "with_bad", "alone")}
    cases = [(None, None), ("embedded-amg", None), (None, "none"), (folders["amg"], None),
             (folders["with_bad"], None), (folders["with_bad"], "none"), (folders["alone"], None)]  # fmt: skip
    for model, bad_model in cases:
        loaded = Pipeline.from_pretrained(model, bad=False if bad_model == "none" else None)
        assert default_guidance(RunConfig(model=model, bad_model=bad_model)) == loaded.default_guidance, model
    assert [default_guidance(RunConfig(model=m)) for m in (None, "embedded-amg")] == ["hg", "cfg(1.45)"]


def test_a_pipeline_folder_can_name_a_perturbation_as_its_bad_model(pipe, clips, tmp_path):
    from v2a_sampler.models.perturb import PerturbedDenoiser, perturbed

    with_perturbation = Pipeline(pipe.model, perturbed(pipe.model, "perturb:identity=0"))
    with_perturbation.save_pretrained(tmp_path / "p")
    assert not (tmp_path / "p" / "bad").exists()
    assert json.loads((tmp_path / "p" / "pipeline.json").read_text()) == {"bad": "perturb:identity=0"}
    loaded = Pipeline.from_pretrained(tmp_path / "p")
    assert isinstance(loaded.bad, PerturbedDenoiser) and loaded.bad.perturbation_of is loaded.model
    assert loaded.default_guidance == "hg" and Pipeline.from_pretrained(tmp_path / "p", bad=False).bad is None
    a = with_perturbation(clips["c"], guidance="ag(2)", steps=2, griffin_lim_iters=1)
    b = loaded(clips["c"], guidance="ag(2)", steps=2, griffin_lim_iters=1)
    assert torch.allclose(a.waveform, b.waveform, atol=1e-5)
    (tmp_path / "p" / "pipeline.json").write_text('{"bad": "runs/bad"}')
    with pytest.raises(ValueError, match=r"pipeline.json: 'bad' must be a perturbation spec \(perturb:...\), got"):
        Pipeline.from_pretrained(tmp_path / "p")


def test_a_hub_pipeline_brings_its_declared_perturbation(pipe, tmp_path, monkeypatch):
    from v2a_sampler.models.perturb import PerturbedDenoiser, perturbed

    commit = "0" * 40  # a folder laid out like the Hugging Face hub cache, repo acme/pipe
    repo = tmp_path / "hub" / "models--acme--pipe"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    Pipeline(pipe.model, perturbed(pipe.model, "perturb:identity=0")).save_pretrained(repo / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = Pipeline.from_pretrained("acme/pipe")
    assert isinstance(loaded.bad, PerturbedDenoiser) and loaded.bad.perturbation.spec() == "perturb:identity=0"
    assert loaded.default_guidance == "hg"
    # read from the config files alone: the declared perturbation counts; a hub pipeline without a bad model is CFG
    from v2a_sampler.pipelines.config import RunConfig
    from v2a_sampler.pipelines.loader import default_guidance

    assert default_guidance(RunConfig(model="acme/pipe")) == "hg"
    (repo / "snapshots" / commit / "pipeline.json").unlink()
    plain = Pipeline.from_pretrained("acme/pipe")
    assert default_guidance(RunConfig(model="acme/pipe")) == "cfg" == plain.default_guidance
    with pytest.raises(RuntimeError, match="cannot get model 'acme/elsewhere'"):
        default_guidance(RunConfig(model="acme/elsewhere"))
    with pytest.raises(ValueError, match="neither a local folder nor a Hugging Face repo id"):
        default_guidance(RunConfig(model=str(tmp_path / "nope")))


def test_bad_inputs(pipe, tmp_path):
    with pytest.raises(io.V2AInputError, match="not found|does not exist|no such"):
        pipe(tmp_path / "missing.mp4")
    txt = tmp_path / "notes.mp4"
    txt.write_text("not a video")
    with pytest.raises(io.V2AInputError):
        pipe(txt)
    with pytest.raises(ValueError, match="bad model does not match the good model: audio differs"):
        Pipeline(_tiny_model(0), _tiny_model_mismatch())
    with pytest.raises(ValueError, match="no audio/video spec"):
        Pipeline(V2AFlow(**TINY))


def _tiny_model_mismatch() -> V2AFlow:
    audio = AudioSpec(n_mels=16, n_fft=512, hop=320)
    audio.mel_mean, audio.mel_std = [-3.0] * 16, [2.0] * 16
    return V2AFlow(**TINY, audio=audio.to_dict(), video=VideoSpec(fps=25.0, frame_size=16).to_dict())


def test_pipeline_from_a_hub_repo_in_the_offline_cache(pipe, clips, tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--v2a"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    pipe.save_pretrained(repo / "snapshots" / commit)  # model at the root, bad model in bad/
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = Pipeline.from_pretrained("acme/v2a")
    assert loaded.bad is not None
    a = pipe(clips["c"], guidance="hg", steps=2, griffin_lim_iters=1)
    b = loaded(clips["c"], guidance="hg", steps=2, griffin_lim_iters=1)
    assert torch.allclose(a.waveform, b.waveform, atol=1e-5)
    with pytest.raises(RuntimeError, match="cannot get model 'acme/missing'"):
        Pipeline.from_pretrained("acme/missing")


def test_a_broken_bad_subfolder_is_an_error_not_a_silent_fallback(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    (tmp_path / "p" / "bad" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Pipeline.from_pretrained(tmp_path / "p")
    assert Pipeline.from_pretrained(tmp_path / "p", bad=False).bad is None
    Pipeline(pipe.model).save_pretrained(tmp_path / "solo")
    assert Pipeline.from_pretrained(tmp_path / "solo").bad is None
    with pytest.raises(ValueError, match="no config.json"):
        Pipeline.from_pretrained(tmp_path / "solo", bad=True)


def test_compiled_networks_trace_whole_and_give_the_same_audio(clips):
    """torch.compile compatibility: both networks trace without graph breaks (fullgraph) and sample identically."""
    torch._dynamo.reset()
    eager = Pipeline(_tiny_model(0), _tiny_model(1))
    compiled = Pipeline(_tiny_model(0), _tiny_model(1)).compile(backend="aot_eager")
    kw = dict(guidance="hg", steps=2, griffin_lim_iters=2, solver="dpmpp_2m")
    a, b = eager(clips["c"], **kw), compiled(clips["c"], **kw)
    assert torch.allclose(a.mel, b.mel, atol=1e-5)
    assert b.info["nfe"] == a.info["nfe"] == 8
