"""The v2a-sample command line: end to end on generated clips, every bad input, guidance listing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from media import make_bad_inputs
from safetensors.torch import load_file, save_file
from test_pipeline import TINY, _tiny_model
from typer.testing import CliRunner

from v2a_sampler.cli import app
from v2a_sampler.media import io
from v2a_sampler.models.v2a_flow import V2AFlow
from v2a_sampler.pipelines.embedded import Pipeline
from v2a_sampler.synth import make_clip, write_mp4

runner = CliRunner()
FAST = ["--steps", "2", "--quiet"]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "v2a_sampler.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def one_error_line(proc: subprocess.CompletedProcess, code: int, msg: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], lines


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    Pipeline(_tiny_model(0), _tiny_model(1)).save_pretrained(root / "model")
    for name, dur, fps in [("one", 1.6, 29.97), ("two", 1.2, 12.0)]:
        write_mp4(make_clip(3, duration=dur, fps=fps, size=48), root / f"{name}.mp4")
    bad = make_bad_inputs(root)
    return {"root": root, "model": str(root / "model"), **bad}


def test_generates_wav_and_mux_next_to_the_video(env):
    video = env["root"] / "one.mp4"
    proc = cli(str(video), "--model", env["model"], "--mux", "--spectrogram", str(env["root"] / "one.png"), *FAST)
    assert proc.returncode == 0, proc.stderr
    wav, mp4 = env["root"] / "one.wav", env["root"] / "one_v2a.mp4"
    audio, sr = io.read_audio(wav)
    assert abs(audio.shape[-1] / sr - io.probe_video(video).duration) < 0.1
    assert audio.abs().max() > 1e-3  # not silent
    info = io.probe_video(mp4)
    assert info.has_audio and abs(info.duration - io.probe_video(video).duration) < 0.1
    assert (env["root"] / "one.png").stat().st_size > 1000
    assert "NFE 8" in proc.stdout and str(wav) in proc.stdout  # hg: 4 branches x 2 steps
    # refuses to overwrite, and leaves the files as they were
    before = wav.read_bytes()
    one_error_line(cli(str(video), "--model", env["model"], *FAST), 2, "output exists")
    assert wav.read_bytes() == before
    assert cli(str(video), "--model", env["model"], "--overwrite", "--seed", "5", *FAST).returncode == 0
    assert wav.read_bytes() != before


def test_glob_out_folder_and_seed_determinism(env, tmp_path):
    pattern = str(env["root"] / "[ot][nw][eo].mp4")  # one.mp4 and two.mp4
    outs = []
    for sub in ("a", "b"):
        proc = cli(pattern, "--model", env["model"], "--out", str(tmp_path / sub), "-g", "cfg(3)", *FAST)
        assert proc.returncode == 0, proc.stderr
        outs.append(sorted(p.name for p in (tmp_path / sub).iterdir()))
    assert outs[0] == outs[1] == ["one.wav", "two.wav"]
    for name in outs[0]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize(
    "key, msg",
    [
        ("missing", "input not found"),
        ("empty", "empty"),
        ("notes", "not a media file"),
        ("sound", "no video stream"),
        ("noframes", "no frames"),
        ("unknown_codec", "codec not supported"),
    ],
)
def test_bad_videos(env, key, msg, tmp_path):
    path = env["root"] / "missing.mp4" if key == "missing" else env[key]
    proc = cli(str(path), "--model", env["model"], "--out", str(tmp_path), *FAST)
    one_error_line(proc, 2, msg)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_bad_models(env, tmp_path):
    video = str(env["root"] / "two.mp4")
    # bad model whose shapes do not match the good one
    other = tmp_path / "other"
    Pipeline(_tiny_model(0)).save_pretrained(other)
    audio8 = {**_tiny_model(0).arch_kwargs["audio"], "n_mels": 8, "mel_mean": [0.0] * 8, "mel_std": [1.0] * 8}
    mismatched = V2AFlow(**{**TINY, "n_mels": 8}, audio=audio8, video=_tiny_model(0).arch_kwargs["video"])
    Pipeline(mismatched).save_pretrained(tmp_path / "small")
    one_error_line(cli(video, "--model", str(other), "--bad-model", str(tmp_path / "small"), "--out",
                       str(tmp_path / "o1"), *FAST), 1, "bad model does not match the good model")  # fmt: skip
    # corrupt weights
    corrupt = tmp_path / "corrupt"
    Pipeline(_tiny_model(0)).save_pretrained(corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 100)
    one_error_line(cli(video, "--model", str(corrupt), "--out", str(tmp_path / "o2"), *FAST), 1, "cannot load model")
    # NaNs appearing during sampling
    nan = tmp_path / "nan"
    Pipeline(_tiny_model(0)).save_pretrained(nan)
    state = load_file(str(nan / "model.safetensors"))
    state["tok_out.bias"] = torch.full_like(state["tok_out.bias"], float("nan"))
    save_file(state, str(nan / "model.safetensors"))
    one_error_line(cli(video, "--model", str(nan), "-g", "cfg(2)", "--out", str(tmp_path / "o3"), *FAST), 1, "NaN")
    for d in ("o1", "o2", "o3"):
        assert not (tmp_path / d).exists() or list((tmp_path / d).iterdir()) == []
    one_error_line(cli(video, "--model", str(tmp_path / "nowhere"), *FAST), 1, "cannot load model")
    one_error_line(cli(video, "--model", env["model"], "--solver", "rk4", *FAST), 2, "unknown solver")
    no_bad = ("--model", env["model"], "--bad-model", "none")
    one_error_line(cli(video, *no_bad, "-g", "hg", *FAST), 2, "needs a bad model")
    # without a bad model and without --guidance the default is CFG, not an error
    res = cli(video, *no_bad, "--out", str(tmp_path / "o4.wav"), *FAST)
    assert res.returncode == 0 and ": cfg(3) " in res.stdout, res.stderr


def test_list_guidance_and_explain():
    res = runner.invoke(app, ["--list-guidance"])
    assert res.exit_code == 0
    for name in ("none", "cfg(w)", "ag(w)", "pg(w1,w2)", "hg(w1,w2,w3)", "order=ag", "G@[lo,hi]"):
        assert name in res.stdout
    res = runner.invoke(app, ["--guidance", "pg(2.7,0.15)", "--explain"])
    assert res.exit_code == 0
    assert "+2.85" in res.stdout and "-1.7" in res.stdout and "-0.15" in res.stdout and "3 NFE/step" in res.stdout
    res = runner.invoke(app, ["--explain"])  # the embedded model's default: AudioMoG's HG
    assert res.exit_code == 0 and "+3.24" in res.stdout and "-2.04" in res.stdout and "bad:null" in res.stdout


def test_explain_the_default_of_an_amg_model(tmp_path):
    Pipeline(_tiny_model(0).set_protocol(amg_weight=0.5)).save_pretrained(tmp_path / "amg")
    res = runner.invoke(app, ["--model", str(tmp_path / "amg"), "--explain"])
    assert res.exit_code == 0 and "+1.45" in res.stdout and "-0.45" in res.stdout and "bad:" not in res.stdout
    res = runner.invoke(app, ["--bad-model", "none", "--explain"])  # no bad model: CFG at its paper weight
    assert res.exit_code == 0 and "+3 " in res.stdout and "-2 " in res.stdout and "bad:" not in res.stdout


def test_usage_errors(tmp_path):
    one_error_line(cli("--guidance", "hg(1,2", "--explain"), 2, "cannot parse guidance")
    one_error_line(cli(str(tmp_path / "*.mp4")), 2, "no file matches")
    one_error_line(cli(str(tmp_path)), 2, "is a directory")


def test_mmaudio_model_spec_prompts_and_errors(env, tmp_path, monkeypatch):
    """--model mmaudio:VARIANT / --bad-model mmaudio:VARIANT / --prompt / --negative-prompt, and their errors."""
    from test_mmaudio_pipeline import tiny_mmaudio_pipeline

    video = str(env["root"] / "one.mp4")
    o = ["--out", str(tmp_path / "o.wav")]
    one_error_line(cli(video, "--model", env["model"], "--prompt", "rain", *o, *FAST), 2, "has no text condition")
    one_error_line(cli(video, "--bad-model", "mmaudio:small_44k", *o, *FAST), 2, "needs an MMAudio --model")
    offline = subprocess.run(
        [sys.executable, "-m", "v2a_sampler.cli", video, "--model", "mmaudio:small_16k", *o, *FAST],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty_cache")},
    )  # fmt: skip
    one_error_line(offline, 1, "cannot get hkchengrex/MMAudio/weights/mmaudio_small_16k.pth (offline: cache only)")

    calls = {}

    def fake(name, variant=None, bad_variant=None, **kw):
        calls.update(name=name, variant=variant, bad_variant=bad_variant)
        return tiny_mmaudio_pipeline()

    monkeypatch.setattr(Pipeline, "from_pretrained", staticmethod(fake))
    wav = tmp_path / "mm.wav"
    args = [video, "--model", "mmaudio:small_16k", "--bad-model", "mmaudio:small_16k", "-g", "hg", "--prompt",
            "rain", "--negative-prompt", "music", "--out", str(wav), *FAST]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert calls == {"name": "hkchengrex/MMAudio", "variant": "small_16k", "bad_variant": "small_16k"}
    audio, sr = io.read_audio(wav)
    assert sr == 16000 and abs(audio.shape[-1] / sr - io.probe_video(video).duration) < 0.1
    assert "hg" in res.stdout and "NFE 8" in res.stdout
    res = runner.invoke(app, [video, "--model", "mmaudio:small_16k", "--out", str(tmp_path / "cfg.wav"), *FAST])
    assert res.exit_code == 0 and "cfg(4.5)" in res.stdout and "NFE 4" in res.stdout  # the official default


def test_grid_and_solver_settings_reach_the_sampler(env, tmp_path):
    """--grid and -O reach every setting of a solver and its grid (rho, sigma_max, churn, Brownian noise)."""
    video = str(env["root"] / "two.mp4")
    base = [video, "--model", env["model"], "-g", "cfg(2)", *FAST]
    res = runner.invoke(app, [*base, "--solver", "dpmpp_sde", "--grid", "karras", "-O", "sigma_max=20", "-O", "rho=5",
                              "-O", "brownian=1", "-O", "eta=0.5", "--out", str(tmp_path / "a.wav")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "cfg(2) dpmpp_sde x2" in res.stdout and "NFE 6" in res.stdout  # 2 + 1 stages (Euler last) x 2 branches
    res = runner.invoke(app, [*base, "--solver", "heun_edm", "-O", "s_churn=1", "-O", "s_tmax=inf",
                              "--out", str(tmp_path / "b.wav")])  # fmt: skip
    assert res.exit_code == 0 and "NFE 6" in res.stdout, res.output
    for args, msg in [
        (["-O", "rho=5"], "rho shape the 'karras' grid; this run uses the 'uniform' grid"),
        (["--grid", "karras"], "the 'karras' grid needs a finite sigma/alpha at the noise end"),
        (["--grid", "cosine"], "unknown time grid 'cosine'"),
        (["--solver", "unipc", "-O", "order=2.5"], "option order must be a whole number"),
    ]:
        res = runner.invoke(app, [*base, *args, "--out", str(tmp_path / "c.wav")])
        assert res.exit_code == 2 and "error: " in res.output and msg in res.output, (args, res.output)
    assert not (tmp_path / "c.wav").exists()
