"""Bad input is found early and reported clearly, and nothing is half-written (issue #15).

A corpus of bad and unusual inputs generated here (truncated and faststart-truncated MP4s, audio-only containers, a
zero-frame video, odd frame rates, non-ASCII paths, unwritable folders) goes through the CLI; every case ends in at
most one ``error:`` or ``warning:`` line with the documented exit code (2 bad input, 1 runtime), no traceback and no
file left behind. Plus: guidance and seed limits at the CLI, half precision on the embedded model, several inputs
with one bad, output checks before sampling, manifest settings checked before the first row, partial videos in
manifest runs, and property-based fuzzing (hypothesis) of the guidance parser and the manifest reader.
"""

from __future__ import annotations

import json
import os
import string
import sys
from fractions import Fraction
from importlib import resources
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from media import SR, WRITTEN, make_bad_inputs, make_video
from test_pipeline import TINY, _tiny_model
from typer.testing import CliRunner

from v2a_sampler import datagen
from v2a_sampler.core import guidance as G
from v2a_sampler.errors import printable
from v2a_sampler.frontends import cli as cli_module
from v2a_sampler.frontends import common
from v2a_sampler.media import io
from v2a_sampler.models.v2a_flow import V2AFlow
from v2a_sampler.pipelines.base import GeneratedAudio
from v2a_sampler.pipelines.config import RunConfig
from v2a_sampler.pipelines.embedded import Pipeline
from v2a_sampler.pipelines.loader import load_pipeline
from v2a_sampler.synth import make_clip, write_mp4

runner = CliRunner()
FAST = ["--steps", "2", "--quiet"]
#: Relative L2 distance of a half-precision run's mel from the float32 run's (measured: bfloat16 0.0027, float16
#: 0.00034 on the tiny model): within a few times the format's rounding, and not zero (it really ran in that dtype).
HALF_TOLERANCE = {"bfloat16": 0.02, "float16": 0.004}
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    Pipeline(_tiny_model(0), _tiny_model(1)).save_pretrained(root / "model")
    corpus = root / "corpus"
    corpus.mkdir()
    bad = make_bad_inputs(corpus)
    write_mp4(make_clip(1, duration=1.2, fps=25.0, size=48), corpus / "good.mp4")
    write_mp4(make_clip(2, duration=0.8, fps=12.0, size=48), corpus / "other.mp4")
    # the first half of a faststart MP4 (index in front): opens, but only its first frames decode
    write_mp4(make_clip(3, duration=2.4, fps=25.0, size=48), root / "long.mp4")
    data = (root / "long.mp4").read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")
    (corpus / "faststart_half.mp4").write_bytes(data[: len(data) // 2])
    # the first half of an MP4 with its index at the end: the index is lost
    make_video(root / "plain.mp4", 24, 48)
    data = (root / "plain.mp4").read_bytes()
    assert data.find(b"moov") > data.find(b"mdat")
    (corpus / "truncated.mp4").write_bytes(data[: len(data) // 2])
    # an audio-only MP4 container
    with av.open(str(corpus / "tone.m4a"), "w", format="mp4") as out:
        for p in io.encode_audio_packets(out, np.zeros((1, SR), np.float32), SR, "aac", 0.0):
            out.mux(p)
    # odd frame rates: NTSC 29.97, 7.3 fps in Matroska, 2 fps
    make_video(corpus / "ntsc.mp4", Fraction(30000, 1001), 20)
    make_video(corpus / "odd_rate.mkv", Fraction(73, 10), 9, fmt="matroska")
    make_video(corpus / "two_fps.mp4", 2, 3)
    # non-ASCII names
    write_mp4(make_clip(4, duration=0.6, fps=25.0, size=48), corpus / "vidéo 音.mp4")
    (corpus / "ñoño.mp4").write_text("no video here\n" * 5)
    (corpus / "tab\tand :smile:.mp4").write_text("no video here either\n")  # legal on Linux, hostile to terminals
    files = {p.stem: p for p in corpus.iterdir()}
    return {"root": root, "model": str(root / "model"), **bad, **files}


def invoke(*args: str) -> tuple[int, list[str], str]:
    """Run the CLI in-process: exit code, stderr lines (blank ones included) and stdout; never an exception."""
    res = runner.invoke(cli_module.app, list(args))
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.stderr
    return res.exit_code, res.stderr.splitlines(), res.stdout


def one_line(lines: list[str], kind: str, text: str) -> None:
    assert len(lines) == 1 and lines[0].startswith(f"{kind}: ") and text in lines[0], lines


def no_load(monkeypatch) -> None:
    """Fail the test if the CLI loads a model (the error must come before)."""

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the error was found")

    monkeypatch.setattr(cli_module, "_load", loaded)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


# ---------------------------------------------------------------------------------------------------------------
# The corpus through the CLI
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, flags, code, kind, text",
    [
        ("empty", [], 2, "error", "empty (0 bytes)"),
        ("notes", [], 2, "error", "not a media file"),
        ("truncated", [], 2, "error", "or a truncated one"),
        ("sound", [], 2, "error", "no video stream"),
        ("tone", [], 2, "error", "no video stream"),
        ("noframes", [], 2, "error", "video has no frames"),
        ("unknown_codec", [], 2, "error", "codec not supported"),
        ("ñoño", [], 2, "error", "ñoño.mp4"),
        ("tab\tand :smile:", [], 2, "error", "tab\\tand :smile:.mp4: not a media file"),  # escaped, no emoji
        ("faststart_half", ["--strict"], 2, "error", "is partial: its packets end at"),
        ("faststart_half", [], 0, "warning", "is partial: its packets end at"),
        ("ntsc", [], 0, None, None),
        ("odd_rate", [], 0, None, None),
        ("two_fps", [], 0, None, None),
        ("vidéo 音", [], 0, None, None),
    ],
)
def test_corpus_through_the_cli(env, tmp_path, monkeypatch, name, flags, code, kind, text):
    out = tmp_path / "out"
    if code:
        no_load(monkeypatch)  # bad inputs are found by probing, before any model is loaded
    status, lines, stdout = invoke(str(env[name]), "--model", env["model"], "--out", str(out), *flags, *FAST)
    assert status == code
    if kind is None:
        assert lines == []
    else:
        one_line(lines, kind, text)
    if code:
        assert not out.exists()  # nothing written, not even the folder
        return
    wav = out / f"{env[name].stem}.wav"
    assert listing(out) == [wav.name] and str(wav) in stdout
    audio, rate = io.read_audio(wav)
    assert audio.shape[-1] == round(io.probe_video(env[name]).duration * rate)  # exactly the video's duration


def test_partial_video_numbers(env):
    """The warning's numbers: where the readable part ends, the container's duration, frames readable of all."""
    with pytest.warns(io.PartialVideoWarning) as caught:
        io.probe_video(env["faststart_half"], scan=True)
    info = io.probe_video(env["faststart_half"])
    assert info.duration == pytest.approx(2.4) and info.num_frames == 60
    message = str(caught[0].message)
    end = float(message.split("end at ")[1].split(" s of")[0])
    assert 0.5 < end < 2.0 and f"of {info.duration:.3f} s" in message
    readable = int(message.split("(")[1].split(" of ")[0])
    assert abs(readable - end * 25) <= 1 and "of 60 frames readable" in message


def test_unwritable_output_folders(env, tmp_path, monkeypatch):
    video = str(env["good"])
    no_load(monkeypatch)
    (tmp_path / "file").write_text("x")
    status, lines, _ = invoke(video, "--model", env["model"], "--out", str(tmp_path / "file" / "sub"), *FAST)
    assert status == 2
    one_line(lines, "error", f"cannot write to {tmp_path / 'file' / 'sub'}: {tmp_path / 'file'} is a file")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as m:  # what a non-root user meets in a read-only folder, whoever runs the tests
        m.setattr(cli_module.tempfile, "TemporaryFile", denied)
        status, lines, _ = invoke(video, "--model", env["model"], "--out", str(tmp_path / "ro" / "x.wav"), *FAST)
    assert status == 2
    one_line(lines, "error", f"cannot write to {tmp_path / 'ro'}: Permission denied")
    if not IS_ROOT:  # root writes anywhere: the real folder only refuses other users
        ro = tmp_path / "readonly"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            status, lines, _ = invoke(video, "--model", env["model"], "--out", str(ro), *FAST)
        finally:
            ro.chmod(0o700)
        assert status == 2
        one_line(lines, "error", f"cannot write to {ro}: Permission denied")
        assert listing(ro) == []


def test_write_errors_name_the_users_path_not_the_temporary_file(tmp_path, monkeypatch):
    def full_disk(file, *args, **kwargs):
        Path(file).write_bytes(b"RIFF")  # a partial write, then the device is full
        raise OSError(28, "No space left on device", str(file))

    monkeypatch.setattr(io.sf, "write", full_disk)
    with pytest.raises(OSError) as caught:
        io.write_wav(tmp_path / "a.wav", np.zeros(16, np.float32), SR)
    assert str(caught.value) == f"cannot write {tmp_path / 'a.wav'}: No space left on device"
    assert listing(tmp_path) == []  # no partial file, no .part file


# ---------------------------------------------------------------------------------------------------------------
# Several inputs
# ---------------------------------------------------------------------------------------------------------------


def test_one_bad_input_among_several_is_found_before_anything_is_written(env, tmp_path, monkeypatch):
    out = tmp_path / "d"
    videos = [str(env["good"]), str(env["truncated"]), str(env["other"]), str(env["tone"])]
    with monkeypatch.context() as m:
        no_load(m)
        status, lines, _ = invoke(*videos, "--model", env["model"], "--out", str(out), *FAST)
    assert status == 2 and len(lines) == 2  # every bad input, one line each
    assert lines[0].startswith("error: ") and str(env["truncated"]) in lines[0]
    assert lines[1].startswith("error: ") and str(env["tone"]) in lines[1]
    assert not out.exists()
    # without the bad ones the same command works, and a plain rerun reports every existing output
    status, lines, _ = invoke(videos[0], videos[2], "--model", env["model"], "--out", str(out), *FAST)
    assert status == 0 and lines == [] and listing(out) == ["good.wav", "other.wav"]
    status, lines, _ = invoke(videos[0], videos[2], "--model", env["model"], "--out", str(out), *FAST)
    assert status == 2 and [ln.split(" (")[0] for ln in lines] == [
        f"error: output exists: {out / 'good.wav'}",
        f"error: output exists: {out / 'other.wav'}",
    ]


@pytest.mark.parametrize("error, code", [(io.V2AInputError, 2), (FloatingPointError, 1)])
def test_a_failing_input_does_not_stop_the_others(env, tmp_path, monkeypatch, error, code):
    original = Pipeline._sample

    def flaky(self, items, plan, *args):
        if items[0].source and "other" in items[0].source:
            raise error("sampling failed for this one")
        return original(self, items, plan, *args)

    monkeypatch.setattr(Pipeline, "_sample", flaky)
    out = tmp_path / "d"
    videos = [str(env["good"]), str(env["other"]), str(env["vidéo 音"])]
    status, lines, stdout = invoke(*videos, "--model", env["model"], "--out", str(out), "--mux", *FAST)
    assert status == code
    assert lines == [f"error: {env['other']}: sampling failed for this one"]
    assert listing(out) == ["good.wav", "good_v2a.mp4", "vidéo 音.wav", "vidéo 音_v2a.mp4"]
    assert len(stdout.strip().splitlines()) == 2


def test_a_failed_write_removes_that_inputs_other_files(env, tmp_path, monkeypatch):
    def broken_mux(self, video, out, overwrite=False):
        raise OSError(f"cannot write {out}: No space left on device")

    monkeypatch.setattr(GeneratedAudio, "mux", broken_mux)
    out = tmp_path / "d"
    status, lines, _ = invoke(str(env["good"]), "--model", env["model"], "--out", str(out), "--mux", *FAST)
    assert status == 1
    one_line(lines, "error", f"cannot write {out / 'good_v2a.mp4'}: No space left on device")
    assert listing(out) == []  # the WAV written before the failure is gone too


# ---------------------------------------------------------------------------------------------------------------
# Output checks before sampling
# ---------------------------------------------------------------------------------------------------------------


def test_outputs_and_optional_dependencies_are_checked_before_loading(env, tmp_path, monkeypatch):
    no_load(monkeypatch)
    video = str(env["good"])
    png = tmp_path / "mel.png"
    png.write_bytes(b"old")
    status, lines, _ = invoke(video, "--model", env["model"], "--out", str(tmp_path), "--spectrogram", str(png), *FAST)
    assert status == 2
    one_line(lines, "error", f"output exists: {png} (pass --overwrite to replace it)")
    (tmp_path / "good.wav").mkdir()
    status, lines, _ = invoke(video, "--model", env["model"], "--out", str(tmp_path), *FAST)
    assert status == 2
    one_line(lines, "error", f"output path is a folder: {tmp_path / 'good.wav'}")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    status, lines, _ = invoke(video, "--model", env["model"], "--out", str(tmp_path / "o"), "--spectrogram",
                              str(tmp_path / "m.png"), *FAST)  # fmt: skip
    assert status == 2
    one_line(lines, "error", "--spectrogram needs matplotlib (pip install matplotlib)")
    assert png.read_bytes() == b"old" and listing(tmp_path) == ["good.wav", "mel.png"]


def test_vp8_into_mp4_says_it_is_re_encoded(env, tmp_path):
    codec = "libvpx" if "libvpx" in av.codecs_available else "prores_ks"  # VP8 as reported; else another codec
    fmt, pix = ("webm", "yuv420p") if codec == "libvpx" else ("matroska", "yuv422p10le")
    src = make_video(tmp_path / "clip.webm", 25, 15, codec=codec, pix_fmt=pix, fmt=fmt)
    status, lines, _ = invoke(str(src), "--model", env["model"], "--mux", *FAST)
    assert status == 0
    one_line(lines, "warning", f"clip_v2a.mp4: .mp4 cannot hold {io.probe_video(src).codec} video, so the video was "
                               "re-encoded to")  # fmt: skip
    assert io.probe_video(tmp_path / "clip_v2a.mp4").codec == WRITTEN


# ---------------------------------------------------------------------------------------------------------------
# Settings: guidance, seeds, steps, models, dtypes
# ---------------------------------------------------------------------------------------------------------------

NESTED = "(" * 330 + "cfg(3)" + ")" * 330


@pytest.mark.parametrize(
    "spec, text",
    [
        ("0*cfg(3)", "guidance '0*cfg(3)' evaluates no branch: every coefficient is zero"),
        ("cfg(3)-cfg(3)", "guidance 'cfg(3)-cfg(3)' evaluates no branch: every coefficient is zero"),
        ("cfg(1e400)", "cannot parse guidance 'cfg(1e400)': number 1e400 is not finite"),
        ("1e308*cfg(1e308)", "gives branch good:cond the coefficient inf: the weights overflow"),
        ("hg(1,2)", "hg takes all 3 weights (w1, w2, w3) or none for the paper defaults; got w1, w2"),
        (NESTED, "nested deeper than 64 levels"),
        ('{"type": "linear", "terms": 5}', "not a guidance dict (TypeError"),
    ],
)
def test_guidance_that_can_never_work_is_one_usage_error(env, tmp_path, monkeypatch, spec, text):
    no_load(monkeypatch)
    status, lines, _ = invoke(str(env["good"]), "--model", env["model"], "-g", spec, "--out", str(tmp_path), *FAST)
    assert status == 2
    one_line(lines, "error", text)
    assert listing(tmp_path) == []


def test_seed_bounds_at_the_cli(env, tmp_path, monkeypatch):
    no_load(monkeypatch)
    for seed in ("-1", str(2**63), "99999999999999999999"):
        status, lines, _ = invoke(str(env["good"]), "--model", env["model"], "--seed", seed, *FAST)
        assert status == 2
        one_line(lines, "error", f"seed must be an integer from 0 to 2**63 - 1, got {seed}")


def test_a_bad_model_error_names_the_bad_model(env, tmp_path):
    folder = Path(str(resources.files("v2a_sampler") / "assets" / "toy2d" / "bad_small"))  # another architecture
    status, lines, _ = invoke(str(env["good"]), "--model", env["model"], "--bad-model", str(folder),
                              "--out", str(tmp_path / "o"), *FAST)  # fmt: skip
    assert status == 1
    one_line(lines, "error", f"bad model at {folder} is a ")
    assert env["model"] not in lines[0]
    # a V2A model of other shapes: named as the bad model, the good one only as what it does not fit
    audio8 = {**_tiny_model(0).arch_kwargs["audio"], "n_mels": 8, "mel_mean": [0.0] * 8, "mel_std": [1.0] * 8}
    small = V2AFlow(**{**TINY, "n_mels": 8}, audio=audio8, video=_tiny_model(0).arch_kwargs["video"])
    Pipeline(small).save_pretrained(tmp_path / "small")
    status, lines, _ = invoke(str(env["good"]), "--model", env["model"], "--bad-model", str(tmp_path / "small"),
                              "--out", str(tmp_path / "o"), *FAST)  # fmt: skip
    assert status == 1
    one_line(lines, "error", f"bad model {tmp_path / 'small'} does not fit model {env['model']}: ")
    assert lines[0].endswith("n_mels differs")
    assert not (tmp_path / "o").exists()


def test_many_steps_warn_and_progress_shows_off_a_terminal(env, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "PROGRESS_LINE_S", 0.0)  # every stage, for the test
    short = tmp_path / "short.mp4"
    write_mp4(make_clip(5, duration=0.4, fps=25.0, size=48), short)
    status, lines, _ = invoke(str(short), "--model", env["model"], "-g", "none", "--steps", "1001")
    assert status == 0
    assert lines[0] == ("warning: --steps 1001 is far beyond where quality saturates (a few dozen); this run will be "
                        "slow")  # fmt: skip
    stages = [ln for ln in lines[1:] if ln.startswith("short.mp4: ")]
    assert len(stages) == len(lines) - 1 == 1001 and stages[-1].startswith("short.mp4: 1001/1001 solver stages, ")
    assert "" not in lines  # no stray blank line (rich's live display is used on terminals only)


def test_no_stray_blank_line_without_quiet(env, tmp_path):
    status, lines, stdout = invoke(str(env["good"]), "--model", env["model"], "--out", str(tmp_path), "--steps", "2")
    assert status == 0 and lines == [] and stdout.endswith(".wav\n")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_on_the_embedded_model(env, tmp_path, dtype):
    """Python (load_pipeline and from_pretrained) and the CLI; the frames reach the encoder in the model's dtype."""
    video = env["good"]
    ref = load_pipeline(RunConfig(model=env["model"]))(video, steps=3, seed=1, griffin_lim_iters=4)
    pipe = load_pipeline(RunConfig(model=env["model"], dtype=dtype))
    assert pipe.model.tok_in.weight.dtype == pipe.bad.tok_in.weight.dtype == getattr(torch, dtype)
    half = pipe(video, steps=3, seed=1, griffin_lim_iters=4)
    distance = float((half.mel - ref.mel).norm() / ref.mel.norm())
    assert 0.0 < distance < HALF_TOLERANCE[dtype]
    same = Pipeline.from_pretrained(env["model"], dtype=getattr(torch, dtype))(video, steps=3, seed=1,
                                                                                griffin_lim_iters=4)  # fmt: skip
    assert torch.equal(same.mel, half.mel)
    assert half.waveform.dtype == torch.float32 and half.duration == pytest.approx(1.2)
    status, lines, stdout = invoke(str(video), "--model", env["model"], "--dtype", dtype, "--out",
                                   str(tmp_path / "a.wav"), *FAST)  # fmt: skip
    assert status == 0 and lines == [] and "NFE 8" in stdout
    assert io.read_audio(tmp_path / "a.wav")[0].shape[-1] == round(1.2 * 16000)


def test_partial_video_from_python(env):
    pipe = Pipeline(_tiny_model(0))
    with pytest.warns(io.PartialVideoWarning, match="faststart_half.mp4 is partial: its frames end at"):
        audio = pipe(env["faststart_half"], guidance="cfg(2)", steps=1, griffin_lim_iters=1)
    assert audio.duration == pytest.approx(2.4)  # the container's duration, the missing part marked by the warning
    with pytest.raises(io.V2AInputError, match="faststart_half.mp4 is partial: its frames end at"):
        pipe(env["faststart_half"], guidance="cfg(2)", steps=1, strict=True)


# ---------------------------------------------------------------------------------------------------------------
# Manifest runs
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, text",
    [
        (["-g", "ag(2)", "--bad-model", "none"], "needs a bad model"),
        (["--dtype", "float64"], "unknown dtype 'float64'"),
        (["--device", "cuda:99"], "device cuda:99"),
        (["-g", "cfg(1e400)"], "number 1e400 is not finite"),
    ],
)
def test_manifest_settings_that_can_never_work_fail_before_the_first_row(env, tmp_path, flags, text):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"video\n{env['good']}\n{env['other']}\n")
    status, lines, stdout = invoke("--manifest", str(manifest), "--out-dir", str(tmp_path / "gen"), "--model",
                                   env["model"], *flags, *FAST)  # fmt: skip
    assert status == 2 and stdout == ""
    one_line(lines, "error", text)
    assert not (tmp_path / "gen").exists()  # no row generated, no summary


def test_manifest_output_folder_is_checked_before_loading(env, tmp_path, monkeypatch):
    no_load(monkeypatch)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"video\n{env['good']}\n")
    (tmp_path / "taken").write_text("x")
    status, lines, _ = invoke("--manifest", str(manifest), "--out-dir", str(tmp_path / "taken" / "gen"), *FAST)
    assert status == 2
    one_line(lines, "error", f"cannot write to {tmp_path / 'taken' / 'gen'}: {tmp_path / 'taken'} is a file")


def test_manifest_rows_record_partial_videos_and_half_precision_works(env, tmp_path):
    manifest = tmp_path / "m.jsonl"
    rows = [{"video": str(env[n]), "id": n} for n in ("good", "faststart_half")]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["--manifest", str(manifest), "--model", env["model"], "--dtype", "bfloat16", *FAST]
    status, lines, _ = invoke(*args, "--out-dir", str(tmp_path / "a"))
    assert status == 0
    one_line(lines, "warning", f"row 1 ({env['faststart_half']}): {env['faststart_half']} is partial: its frames "
                               "end at")  # fmt: skip
    summary = json.loads((tmp_path / "a" / datagen.SUMMARY_NAME).read_text())
    assert summary["totals"]["done"] == 2 and summary["config"]["dtype"] == "bfloat16"
    assert "warnings" not in summary["rows"][0] and "is partial" in summary["rows"][1]["warnings"][0]
    status, lines, _ = invoke(*args, "--out-dir", str(tmp_path / "b"), "--strict", "--fail-on-error")
    assert status == 1 and lines[-1].startswith("error: 1 of 2 rows failed")
    summary = json.loads((tmp_path / "b" / datagen.SUMMARY_NAME).read_text())
    assert [r["status"] for r in summary["rows"]] == ["done", "failed"] and "is partial" in summary["rows"][1]["error"]
    assert listing(tmp_path / "b").count("faststart_half.wav") == 0


# ---------------------------------------------------------------------------------------------------------------
# Property-based fuzzing
# ---------------------------------------------------------------------------------------------------------------

SPEC_ALPHABET = "cfgahpnoe()[],.=+-*@:0123456789 {}\"'_"
NAMES = ["cfg", "ag", "pg", "hg", "none", "multi_cfg", "order", "drop", "good:cond", "bad:null", "video", "text"]
NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64).map(lambda x: repr(abs(x))),
    st.sampled_from(["1e400", "1e308", "1e-400", "0", "00", "1.", ".5", "inf", "nan", "9" * 400]),
)
TOKENS = st.one_of(st.sampled_from(NAMES), NUMBERS, st.sampled_from(list("()[],=+-*@")))
GUIDANCE_KEYS = ["type", "w", "w1", "w2", "w3", "terms", "inner", "lo", "hi", "fallback", "key", "order", "drop"]
GUIDANCE_DICTS = st.recursive(
    st.one_of(st.none(), st.floats(), st.integers(), st.sampled_from([*NAMES, "linear", "interval", "branch"])),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(GUIDANCE_KEYS), inner, min_size=1, max_size=4)
    ),
    max_leaves=10,
)  # what Guidance.to_dict writes, and broken variants of it
SPECS = st.one_of(
    st.text(SPEC_ALPHABET, max_size=40),
    st.lists(TOKENS, max_size=14).map("".join),
    st.dictionaries(st.sampled_from(GUIDANCE_KEYS), GUIDANCE_DICTS, min_size=1, max_size=4).map(json.dumps),
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(SPECS)
def test_guidance_parser_fuzz(spec):
    """Any text: a guidance with finite coefficients and at least one branch whose spec round-trips, or one
    ValueError line."""
    try:
        g = G.parse(spec)
    except ValueError as e:
        assert str(e) and "\n" not in str(e)
        return
    coefficients = [c for regime in g.regimes() for c in regime.values()]
    assert g.all_branches and all(np.isfinite(coefficients))
    again = G.parse(g.spec())
    assert again.regimes() == g.regimes() and again.spec() == g.spec()


@settings(max_examples=60, deadline=None, derandomize=True)
@given(SPECS)
def test_guidance_fuzz_through_the_cli(spec):
    """The same texts as ``-g``: a table and exit 0, or one ``error:`` line and exit 2; never a traceback."""
    status, lines, stdout = invoke("-g", spec, "--explain")
    if status == 0:
        assert lines == [] and "NFE/step" in stdout
    else:
        assert status == 2
        assert len(lines) == 1 and lines[0].startswith("error: ")


CELL = st.one_of(
    st.text(string.printable, max_size=8),
    st.sampled_from(["good.mp4", "", "-1", "1e400", "nan", "0", str(2**64), "1.5", "x y", '"', "\x00", "é"]),
)
CSV_TEXT = st.lists(st.lists(CELL, min_size=1, max_size=5).map(",".join), max_size=5).map(
    lambda lines: "\n".join(["video,seed,duration,id,prompt", *lines])
)
JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8,
)
JSONL_TEXT = st.lists(
    st.one_of(
        st.dictionaries(
            st.sampled_from(["video", "seed", "duration", "id", "prompt", "x"]), JSON_VALUE, max_size=5
        ).map(lambda d: json.dumps(d)),
        st.text(max_size=20),
    ),
    max_size=4,
).map("\n".join)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(text=st.one_of(CSV_TEXT, JSONL_TEXT), suffix=st.sampled_from([".csv", ".jsonl"]))
def test_manifest_reader_fuzz(tmp_path_factory, text, suffix):
    """Any manifest text: rows that plan into distinct names and valid options, or one ManifestError line naming
    the file; read through the CLI it is one ``error:`` line, exit 2, and nothing written."""
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / f"m{suffix}"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        manifest = datagen.read_manifest(path)
    except datagen.ManifestError as e:
        assert str(e).startswith(path.name) and "\n" not in str(e)
        status, lines, stdout = invoke("--manifest", str(path), "--out-dir", str(folder / "gen"), "--quiet")
        assert status == 2 and stdout == ""
        assert lines == [f"error: {printable(str(e))}"]  # tabs, escapes: written as escapes, one line
        assert not (folder / "gen").exists()
        return
    unique, duplicates = datagen.plan_rows(manifest.rows, path)
    names = [r.default_name.lower() for r in unique]
    assert len(set(names)) == len(names) and len(unique) + len(duplicates) == len(manifest.rows)
    for r in manifest.rows:
        assert r.video.is_absolute() and (r.seed is None or 0 <= r.seed < 2**63)
        assert r.duration is None or (np.isfinite(r.duration) and r.duration > 0)
        json.dumps(r.extra, allow_nan=False)
