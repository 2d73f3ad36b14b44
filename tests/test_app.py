"""The web app's engine without a browser: the live explanation, the models on offer, runs and their errors.

``v2a_sampler.frontends.app.Studio`` is Gradio-free; the page itself is tested in a real browser by
tests/test_app_browser.py.
"""

from __future__ import annotations

import pytest
import torch
from media import make_bad_inputs

from v2a_sampler.core import guidance as G
from v2a_sampler.core import solvers
from v2a_sampler.frontends import app as A
from v2a_sampler.media import io
from v2a_sampler.mmaudio import hub
from v2a_sampler.mmaudio.network import VARIANTS
from v2a_sampler.pipelines import RunConfig, load_pipeline
from v2a_sampler.synth import make_clip, write_mp4

STEPS = 3
NOT_CACHED = tuple(A.ModelChoice(f"mmaudio:{v}", ("hkchengrex/MMAudio/weights/x.pth",)) for v in VARIANTS)
MODELS = [A.ModelChoice(A.EMBEDDED), *NOT_CACHED]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    write_mp4(make_clip(4, duration=1.6, fps=24.0, size=48), root / "clip.mp4")
    return {"clip": root / "clip.mp4", **make_bad_inputs(root)}


@pytest.fixture
def studio(tmp_path):
    return A.Studio(tmp_path / "out", max_seconds=5.0, threads=torch.get_num_threads(), models=MODELS)


# -- guidance ---------------------------------------------------------------------------------------------------


def test_explain_shows_coefficients_and_the_nfe_a_run_will_have():
    pipe = load_pipeline(RunConfig())
    for spec, solver, steps in [("hg", "euler", 25), ("cfg(4.5)", "heun", 8), ("pg(2.7,0.15)", "dpmpp_2m", 10)]:
        text = A.explain(spec, solver, steps)
        g = G.parse(spec)
        stages = solvers.get_solver(solver).stages(steps)
        nfe = pipe.plan(RunConfig(guidance=spec, solver=solver, steps=steps)).nfe
        assert text.startswith(f"**{A._md(g.spec())}**: {g.nfe_per_step} NFE/step × {stages} stages = **{nfe} NFE**")
        for key, c in g.coefficients().items():
            assert f"| {A._md(key)} | {c:+.6g} |" in text
    hg = A.explain("hg")
    assert "| bad:cond | -0.5 |" in hg and "| good:cond | +3.24 |" in hg and "| good:null | -2.04 |" in hg
    interval = A.explain("cfg(3)@[0.2,0.8]", "euler", 10)
    assert "at most **20 NFE**" in interval and "Outside noise levels [0.2, 0.8]: none" in interval


def test_explain_of_a_bad_spec_is_one_error_line():
    assert A.explain("hg(2.7,") == "error: cannot parse guidance 'hg\\(2.7,': expected num, got 'end of input'"
    assert A.explain("  ") == "error: enter a guidance spec, e.g. `hg` or `cfg(4.5)`"


def test_presets_come_from_the_registry_and_all_parse():
    presets = A.guidance_presets()
    assert presets[:5] == ["none", "cfg", "ag", "pg", "hg"] and "cfg(4.5)" in presets and "multi_cfg" not in presets
    for spec in presets:
        G.parse(spec)


# -- models on offer --------------------------------------------------------------------------------------------


def test_mmaudio_variants_not_in_the_cache_say_so(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
    choices = A.model_choices()
    assert [c.value for c in choices] == ["embedded", "embedded-amg", *(f"mmaudio:{v}" for v in VARIANTS)]
    assert choices[0].available and choices[1].available and not any(c.available for c in choices[2:])
    small = choices[2]
    assert small.label == "mmaudio:small_16k  (not in the local cache)"
    assert small.message().startswith(
        "mmaudio:small_16k is not in the local Hugging Face cache (missing hkchengrex/MMAudio/weights/"
        "mmaudio_small_16k.pth, hkchengrex/MMAudio/ext_weights/v1-16.pth, hkchengrex/MMAudio/ext_weights/best_netG.pt,"
        " hkchengrex/MMAudio/ext_weights/synchformer_state_dict.pth, apple/DFN5B-CLIP-ViT-H-14-384/open_clip_config"
        ".json, apple/DFN5B-CLIP-ViT-H-14-384/open_clip_model.safetensors)."
    )


def test_mmaudio_files_in_the_cache_are_found(tmp_path):
    """A hub cache laid out as huggingface_hub lays it out: a snapshot per commit, refs/main naming it."""

    def put(repo: str, filename: str) -> None:
        root = tmp_path / f"models--{repo.replace('/', '--')}"
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / "main").write_text("0" * 40)
        path = root / "snapshots" / ("0" * 40) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")

    missing = hub.missing_from_cache("small_44k", cache_dir=tmp_path)
    assert len(missing) == 6
    for entry in missing[:4]:  # network, VAE, vocoder, Synchformer
        owner, name, filename = entry.split("/", 2)
        put(f"{owner}/{name}", filename)
    assert hub.missing_from_cache("small_44k", cache_dir=tmp_path) == missing[4:]
    put("apple/DFN5B-CLIP-ViT-H-14-384", "open_clip_config.json")
    put("apple/DFN5B-CLIP-ViT-H-14-384", "open_clip_pytorch_model.bin")  # either weight format does
    assert hub.missing_from_cache("small_44k", cache_dir=tmp_path) == []
    assert (
        hub.missing_from_cache("small_16k", cache_dir=tmp_path)[0] == "hkchengrex/MMAudio/weights/mmaudio_small_16k.pth"
    )


def test_bad_models_offered_fit_the_model():
    embedded, small16, large = MODELS[0], MODELS[1], A.ModelChoice("mmaudio:large_44k_v2")
    assert [v for _, v in A.bad_model_choices(embedded, MODELS)] == ["default", "none"]
    amg = A.ModelChoice(A.EMBEDDED_AMG)  # the AMG-trained variant: no bad model, its small extra CFG by default
    assert [v for _, v in A.bad_model_choices(amg, MODELS)] == ["default"] and amg.default_guidance == "cfg(1.45)"
    assert embedded.default_guidance == "hg" and "cfg(1.45)" in A.guidance_presets()
    # the default spec follows the bad-model choice: without one the embedded model's default is CFG
    assert [embedded.default_guidance_with(v) for _, v in A.bad_model_choices(embedded, MODELS)] == ["hg", "cfg"]
    assert small16.default_guidance_with("default") == "cfg(4.5)" == large.default_guidance_with("mmaudio:small_44k")
    assert [c.value for c in A.model_choices()][:2] == [A.EMBEDDED, A.EMBEDDED_AMG]
    assert [v for _, v in A.bad_model_choices(small16, MODELS)] == ["default"]  # no other 16 kHz variant
    assert [v for _, v in A.bad_model_choices(large, MODELS)] == [
        "default", "mmaudio:small_44k", "mmaudio:medium_44k", "mmaudio:large_44k"
    ]  # fmt: skip


# -- runs -------------------------------------------------------------------------------------------------------


def test_a_run_equals_the_pipeline_run_of_the_cli(studio, clips, tmp_path):
    (r,) = studio.run(clips["clip"], ["hg"], A.Request(steps=STEPS, seed=7))
    pipe = load_pipeline(RunConfig())
    plan = pipe.plan(RunConfig(guidance="hg", steps=STEPS))
    ref = pipe.generate(clips["clip"], plan, seed=7)  # what v2a-sample does with the same settings
    wave, sr = io.read_audio(r.wav)
    ref.save(tmp_path / "ref.wav")
    assert r.wav.read_bytes() == (tmp_path / "ref.wav").read_bytes()
    assert sr == 16000 and wave.shape[-1] == round(io.probe_video(clips["clip"]).duration * sr)
    assert io.probe_video(r.video).has_audio and r.spectrogram.stat().st_size > 1000
    assert r.nfe == 4 * STEPS and r.line.startswith(f"hg(2.7,2.5,1.2) euler x{STEPS} · NFE {4 * STEPS} · ")
    assert r.video.name == "clip_1_hg_2.7_2.5_1.2_v2a.mp4"


def test_compare_reads_the_video_once_loads_the_model_once_and_counts_progress(studio, clips, monkeypatch):
    from v2a_sampler.pipelines import loader

    loads, reads, ticks = [], [], []
    real_load = loader.load_pipeline

    def counting_load(config):
        loads.append(config)
        pipe = real_load(config)
        real_read = pipe.load_video
        pipe.load_video = lambda *a, **k: reads.append(a) or real_read(*a, **k)
        return pipe

    monkeypatch.setattr(loader, "load_pipeline", counting_load)
    request = A.Request(steps=STEPS, seed=3)
    results = studio.run(clips["clip"], ["cfg(3)", "", "hg", "none"], request, lambda *a: ticks.append(a))
    assert [r.spec for r in results] == ["cfg(3)", "hg(2.7,2.5,1.2)", "none"]
    assert [r.nfe for r in results] == [2 * STEPS, 4 * STEPS, STEPS]
    assert len(reads) == 1 and len(loads) == 1
    total = 3 * STEPS
    assert [t[:2] for t in ticks] == [(k, total) for k in range(1, total + 1)]
    assert [t[2] for t in ticks] == ["cfg(3)"] * STEPS + ["hg"] * STEPS + ["none"] * STEPS
    # the same seed in every column: cfg(3) alone gives the same sound as in the comparison
    (alone,) = studio.run(clips["clip"], ["cfg(3)"], request)
    assert alone.wav.read_bytes() == results[0].wav.read_bytes() and len(loads) == 1


@pytest.mark.parametrize(
    "video, specs, request_, message",
    [
        (None, ["hg"], A.Request(), "upload a video first (or pick the demo clip)"),
        ("notes", ["hg"], A.Request(), "cannot read notes.mp4: not a media file FFmpeg understands"),
        ("empty", ["hg"], A.Request(), "empty.mp4"),
        ("clip", ["hg"], A.Request(duration=2.5), "duration 2.5 s is past the end of the video (1.58 s)"),
        ("clip", ["hg(2.7,"], A.Request(), "cannot parse guidance 'hg(2.7,': expected num, got 'end of input'"),
        ("clip", ["hg", "cfg(x)"], A.Request(), "spec 2: cannot parse guidance 'cfg(x)'"),
        ("clip", ["", " "], A.Request(), "enter a guidance spec, e.g. hg or cfg(4.5)"),
        ("clip", ["hg"], A.Request(prompt="rain"), "embedded has no text condition: prompts need one"),
        ("clip", ["hg"], A.Request(model="mmaudio:small_16k"), "mmaudio:small_16k is not in the local Hugging Face"),
        ("clip", ["hg"], A.Request(bad_model="none"), "needs a bad model"),
        ("clip", ["hg"], A.Request(model="nope"), "unknown model 'nope'; choose one of embedded, mmaudio:small_16k"),
    ],
)
def test_bad_requests_are_one_line(studio, clips, video, specs, request_, message):
    with pytest.raises(ValueError) as info:
        studio.run(clips[video] if video else None, specs, request_)
    text = A.error_text(info.value)
    assert text.startswith("error: ") and "\n" not in text and message in text, text
    assert not list(studio.workdir.glob("request-*/*")), "nothing is written for a request that cannot run"


def test_too_long_a_video_is_refused_unless_its_start_is_asked_for(tmp_path, clips):
    studio = A.Studio(tmp_path, max_seconds=1.0, threads=1, models=MODELS)
    with pytest.raises(A.AppError) as info:
        studio.run(clips["clip"], ["none"], A.Request(steps=1))
    assert str(info.value) == (
        "the video is 1.6 s long; this app generates at most 1 s: set Duration to 1 or less to use its start"
    )
    (r,) = studio.run(clips["clip"], ["none"], A.Request(steps=1, duration=1.0))
    audio, sr = io.read_audio(r.wav)
    assert audio.shape[-1] == sr


def test_concurrent_requests_take_turns_on_one_loaded_model(studio, clips, monkeypatch):
    import threading

    from v2a_sampler.pipelines import loader

    loads = []
    real_load = loader.load_pipeline
    monkeypatch.setattr(loader, "load_pipeline", lambda config: loads.append(config) or real_load(config))
    results: dict[int, list] = {}

    def user(k: int) -> None:
        results[k] = studio.run(clips["clip"], ["cfg(2)"], A.Request(steps=2, seed=k))

    users = [threading.Thread(target=user, args=(k,)) for k in range(3)]
    for t in users:
        t.start()
    for t in users:
        t.join()
    assert len(loads) == 1 and sorted(results) == [0, 1, 2]
    assert len({results[k][0].wav.read_bytes() for k in results}) == 3  # each its own seed, none mixed up


def test_only_the_newest_request_folders_are_kept(studio, monkeypatch):
    monkeypatch.setattr(A, "KEEP_REQUESTS", 2)
    folders = [studio._request_folder() for _ in range(4)]
    assert sorted(p.name for p in studio.workdir.iterdir()) == [p.name for p in folders[2:]]


def test_the_command_documents_its_options():
    """(``python -m v2a_sampler.frontends.app`` itself is what tests/test_app_browser.py starts.)"""
    from typer.testing import CliRunner

    result = CliRunner().invoke(A.cli, ["--help"])
    assert result.exit_code == 0, result.output
    for option in ("--port", "--host", "--share", "--steps", "--max-seconds", "--threads", "--workdir"):
        assert option in result.output
