"""Data-set scale generation: manifests, duplicates and names, batching, failures, resume after an interruption or
SIGKILL, torchrun with two gloo processes, and the v2a-sample --manifest command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_pipeline import _tiny_model
from typer.testing import CliRunner

from v2a_sampler import datagen
from v2a_sampler.cli import app
from v2a_sampler.media import io
from v2a_sampler.pipelines.embedded import Pipeline
from v2a_sampler.synth import make_clip, write_mp4

GL = 4  # Griffin-Lim iterations in the Python-API runs (the CLI uses the default)
FAST = ["--steps", "2", "--quiet"]
runner = CliRunner()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("datagen")
    pipe = Pipeline(_tiny_model(0), _tiny_model(1))
    pipe.save_pretrained(root / "model")
    videos = root / "videos"
    (videos / "sub").mkdir(parents=True)
    for seed, (name, dur) in enumerate([("a", 1.0), ("b", 1.0), ("c", 0.6), ("sub/a", 1.0), ("d", 0.6), ("e", 0.6)]):
        write_mp4(make_clip(seed, duration=dur, fps=25.0, size=48), videos / f"{name}.mp4")
    (videos / "bad.mp4").write_text("this is not a video\n" * 10)
    return {"root": root, "videos": videos, "pipe": pipe, "model": str(root / "model")}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".part")]


def read_wav(path: Path) -> np.ndarray:
    audio, sr = sf.read(str(path), dtype="float32")
    assert sr == 16000
    return audio


# ---------------------------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------------------------


def test_csv_and_jsonl_give_the_same_rows(env, tmp_path):
    v = env["videos"]
    csv_text = (
        f'video,id,duration,seed,prompt,label\n\na.mp4,,,,,x\nsub/a.mp4,,0.5,7,"a dog, barking",y\n{v}/b.mp4,bee,,,,\n'
    )
    jsonl_text = (
        '{"video": "a.mp4", "label": "x"}\n\n'
        '{"video": "sub/a.mp4", "duration": 0.5, "seed": 7, "prompt": "a dog, barking", "label": "y"}\n'
        f'{{"video": "{v}/b.mp4", "id": "bee"}}\n'
    )
    man_csv = datagen.read_manifest(write(v / "m.csv", csv_text))
    man_jsonl = datagen.read_manifest(write(v / "m.jsonl", jsonl_text))
    for man, lines in ((man_csv, [3, 4, 5]), (man_jsonl, [1, 3, 4])):
        rows = man.rows
        assert [r.video for r in rows] == [v / "a.mp4", v / "sub" / "a.mp4", v / "b.mp4"]
        assert [r.line for r in rows] == lines and [r.index for r in rows] == [0, 1, 2]
        assert [r.duration for r in rows] == [None, 0.5, None]
        assert [r.seed for r in rows] == [None, 7, None]
        assert [r.prompt for r in rows] == [None, "a dog, barking", None]
        assert [r.id for r in rows] == [None, None, "bee"]
        assert rows[0].extra == {"label": "x"}
    assert [r.default_name for r in man_csv.rows] == [r.default_name for r in man_jsonl.rows]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("m.csv", "path,seed\na.mp4,1\n", "m.csv: missing column 'video' (columns: path, seed)"),
        ("m.csv", "video,duration\na.mp4,2\nb.mp4,abc\n", "m.csv line 3: bad duration 'abc'"),
        ("m.csv", "video,duration\na.mp4,-1\n", "m.csv line 2: bad duration '-1'"),
        ("m.csv", "video,seed\na.mp4,1.5\n", "m.csv line 2: bad seed '1.5'"),
        ("m.csv", "video,seed\na.mp4,1,2\n", "m.csv line 2: more values than the 2 columns"),
        ("m.csv", "video\n", "m.csv: the manifest has no rows"),
        ("m.csv", "video,seed\n,3\n", "m.csv line 2: missing or empty 'video'"),
        ("m.jsonl", '{"video": "a.mp4"}\n{"video": "b.mp4",}\n', "m.jsonl line 2: invalid JSON"),
        ("m.jsonl", '{"video": "a.mp4"}\n\n[1, 2]\n', "m.jsonl line 3: expected a JSON object, got list"),
        ("m.jsonl", '{"seed": 3}\n', "m.jsonl line 1: missing or empty 'video'"),
        ("m.jsonl", '{"video": "a.mp4", "seed": true}\n', "m.jsonl line 1: bad seed True"),
        ("m.jsonl", '{"video": "a.mp4", "id": "../x"}\n', "m.jsonl line 1: id '../x' is not a plain file name"),
        ("m.jsonl", '{"video": "a.mp4", "id": "x"}\n{"video": "b.mp4", "id": "x"}\n', "line 2: id 'x' already used"),
        ("m.jsonl", '{"video": "a.mp4", "id": "A"}\n{"video": "b.mp4", "id": "a"}\n', "output name 'a' is already"),
        ("m.txt", "video\na.mp4\n", "unknown manifest format .txt"),
    ],
)
def test_bad_manifests_are_one_line_errors(tmp_path, name, text, message):
    with pytest.raises(datagen.ManifestError) as exc:
        datagen.read_manifest(write(tmp_path / name, text))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_duplicates_names_and_seeds(env):
    v = env["videos"]
    text = "video,seed,id\na.mp4,,\n./a.mp4,,\nsub/../a.mp4,5,\nsub/a.mp4,,\nb.mp4,,bee\nb.mp4,,bee\n"
    rows = datagen.read_manifest(write(v / "dups.csv", text)).rows
    unique, duplicates = datagen.plan_rows(rows)
    assert [r.index for r in unique] == [0, 2, 3, 4]
    assert duplicates == {1: 0, 5: 4}  # same video and options, however the path is written
    names = [r.default_name for r in unique]
    assert len(set(names)) == 4 and names[3] == "bee"
    assert names[0].startswith("a-") and names[1].startswith("a-") and names[2].startswith("a-")  # same stem
    # names depend on the row only: stable when rows are inserted before it
    again = datagen.read_manifest(write(v / "dups2.csv", "video,seed,id\nc.mp4,,\n" + text.split("\n", 1)[1])).rows
    assert again[1].default_name == names[0] and again[4].default_name == names[2]
    assert datagen.output_names(unique[0], mux=True) == [f"{names[0]}.wav", f"{names[0]}_v2a.mp4"]
    assert [r.index for r in datagen.shard(unique, 1, 2)] == [2, 4]


# ---------------------------------------------------------------------------------------------------------------
# Runs in one process
# ---------------------------------------------------------------------------------------------------------------


def test_run_batches_records_failures_duplicates_and_skips_on_restart(env, tmp_path):
    v, pipe = env["videos"], env["pipe"]
    text = "video,seed,duration,prompt\na.mp4,11,,\nb.mp4,,,a dog\nc.mp4,,0.5,\nsub/a.mp4,,,a cat\nbad.mp4,,,\n"
    text += "./a.mp4,11,,\n"
    warnings: list[str] = []
    kw = dict(guidance="cfg(2)", steps=2, seed=100, batch_size=2, griffin_lim_iters=GL, warn=warnings.append)
    out = tmp_path / "out"
    summary = datagen.run_manifest(write(v / "run.csv", text), out, pipe, **kw)
    t = summary["totals"]
    assert (t["rows"], t["done"], t["failed"], t["duplicate"], t["skipped"], t["unique"]) == (6, 4, 1, 1, 0, 5)
    assert summary["complete"] is False and summary["world_size"] == 1
    assert json.loads((out / "summary.json").read_text()) == summary
    rows = summary["rows"]
    assert [r["status"] for r in rows] == ["done", "done", "done", "done", "failed", "duplicate"]
    assert "not a media file" in rows[4]["error"] and rows[4]["video"] == "bad.mp4"
    assert rows[5]["duplicate_of"] == 0 and rows[5]["outputs"] == rows[0]["outputs"]
    # a and b (1.0 s) share a forward; c (0.5 s) and sub/a wait for partners that never come
    assert [r.get("batch") for r in rows[:4]] == [2, 2, 1, 1]
    assert [r["seed"] for r in rows[:4]] == [11, 101, 102, 103]  # given, else seed + row index
    assert len(warnings) == 2 and "no text condition" in warnings[0] and "row 4 (bad.mp4) failed" in warnings[1]
    # outputs: durations, and the same audio as generating the row alone with its seed
    wavs = {r["video"]: out / r["outputs"][0] for r in rows[:4]}
    assert read_wav(wavs["c.mp4"]).shape == (8000,)
    assert read_wav(wavs["b.mp4"]).shape[0] == round(16000 * io.probe_video(v / "b.mp4").duration)
    alone = pipe(v / "a.mp4", seed=11, guidance="cfg(2)", steps=2, griffin_lim_iters=GL).waveform.clamp(-1, 1)
    assert np.abs(read_wav(wavs["a.mp4"]) - alone.numpy()).mean() < 2e-3
    other = pipe(v / "a.mp4", seed=12, guidance="cfg(2)", steps=2, griffin_lim_iters=GL)
    assert np.abs(read_wav(wavs["a.mp4"]) - other.waveform.numpy()).mean() > 1e-2  # the seed matters
    assert sorted(p.name for p in out.glob("*.wav")) == sorted(p.name for p in wavs.values())
    assert no_temp_files(out)
    log = datagen.read_log(out)
    assert sorted(r["row"] for r in log) == [0, 1, 2, 3, 4] and [r["status"] for r in log].count("failed") == 1
    # restart: finished rows are skipped and untouched, the failed row is tried again
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.wav")}
    again = datagen.run_manifest(v / "run.csv", out, pipe, **kw)
    t = again["totals"]
    assert (t["done"], t["skipped"], t["failed"], t["duplicate"]) == (0, 4, 1, 1)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.wav")} == stamps
    # other settings into the same folder are refused; overwrite regenerates everything
    with pytest.raises(io.V2AInputError, match="made with steps=2, this run has steps=3"):
        datagen.run_manifest(v / "run.csv", out, pipe, **{**kw, "steps": 3})
    redo = datagen.run_manifest(v / "run.csv", out, pipe, **{**kw, "steps": 3, "overwrite": True})
    assert redo["totals"]["done"] == 4 and redo["config"]["steps"] == 3


class Interrupted(Exception):
    pass


def test_interrupted_run_resumes_only_the_remaining_rows(env, tmp_path):
    v, pipe = env["videos"], env["pipe"]
    manifest = write(v / "five.jsonl", "".join(json.dumps({"video": f"{n}.mp4"}) + "\n" for n in "abcde"))
    out = tmp_path / "out"
    seen: list[int] = []

    def stop_after_two(record):
        seen.append(record["row"])
        if len(seen) == 2:
            raise Interrupted

    kw = dict(guidance="none", steps=2, griffin_lim_iters=GL, batch_size=1)
    with pytest.raises(Interrupted):
        datagen.run_manifest(manifest, out, pipe, on_row=stop_after_two, **kw)
    finished = {p.name: p.read_bytes() for p in out.glob("*.wav")}
    assert len(finished) == 2 and not (out / "summary.json").exists()
    # what a SIGKILL at the wrong moment leaves: a temporary file of an unfinished row, a torn log line
    rows = datagen.read_manifest(manifest).rows
    unfinished = next(r for r in rows if f"{r.default_name}.wav" not in finished)
    stale = out / f".{unfinished.default_name}.wav.k1ll3d.part"
    stale.write_bytes(b"RIFF partial")
    with open(out / ".v2a" / "log.rank-0.jsonl", "a") as f:
        f.write('{"row": 3, "sta')
    summary = datagen.run_manifest(manifest, out, pipe, **kw)
    t = summary["totals"]
    assert (t["skipped"], t["done"], t["failed"]) == (2, 3, 0) and summary["complete"]
    assert sorted(r["row"] for r in summary["rows"] if r["status"] == "skipped") == sorted(seen)
    assert {p.name: p.read_bytes() for p in out.glob("*.wav") if p.name in finished} == finished
    assert len(list(out.glob("*.wav"))) == 5 and not stale.exists() and no_temp_files(out)
    assert sorted(r["row"] for r in datagen.read_log(out)) == [0, 1, 2, 3, 4]  # the torn line is ignored


def test_sigkill_mid_run_loses_no_finished_output(env, tmp_path):
    v = env["videos"]
    names = ["a", "b", "sub/a"] * 3
    manifest = write(v / "kill.csv", "video,seed\n" + "".join(f"{n}.mp4,{i}\n" for i, n in enumerate(names)))
    out = tmp_path / "out"
    args = ["--manifest", str(manifest), "--out-dir", str(out), "--model", env["model"], "--steps", "12", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "v2a_sampler.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(out.glob("*.wav")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.name: p.read_bytes() for p in out.glob("*.wav")}
    assert 1 <= len(before) < len(names)  # killed mid-run
    for p in before:  # every WAV present is complete
        assert read_wav(out / p).shape[0] == 16000
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    t = summary["totals"]
    assert (t["skipped"], t["done"], t["failed"]) == (len(before), len(names) - len(before), 0)
    assert {p.name: p.read_bytes() for p in out.glob("*.wav") if p.name in before} == before
    assert len(list(out.glob("*.wav"))) == len(names) and no_temp_files(out)


# ---------------------------------------------------------------------------------------------------------------
# torchrun and the command line
# ---------------------------------------------------------------------------------------------------------------


def test_torchrun_two_processes_match_one_process(env, tmp_path):
    v = env["videos"]
    manifest = write(v / "dist.csv", "video\na.mp4\nb.mp4\nc.mp4\nsub/a.mp4\nbad.mp4\nb.mp4\nd.mp4\n")
    common = ["--manifest", str(manifest), "--model", env["model"], "-g", "cfg(2)", "--batch-size", "2", *FAST]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
         "v2a_sampler.cli", *common, "--out-dir", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("rows:") == 1 and "2 processes" in proc.stdout  # rank 0 reports
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["world_size"] == 2
    t = two["totals"]
    assert (t["rows"], t["done"], t["failed"], t["duplicate"]) == (7, 5, 1, 1)
    # distinct rows 0, 1, 2, 3, 4, 6 dealt round-robin: rank 0 gets a, c, bad; rank 1 gets b, sub/a, d
    ranks = {r["row"]: r["rank"] for r in two["rows"] if r["status"] != "duplicate"}
    assert ranks == {0: 0, 1: 1, 2: 0, 3: 1, 4: 0, 6: 1}
    assert [(p["rank"], p["done"], p["failed"]) for p in two["per_rank"]] == [(0, 2, 1), (1, 3, 0)]
    assert two["rows"][4]["status"] == "failed" and "not a media file" in two["rows"][4]["error"]
    assert (tmp_path / "two" / ".v2a" / "summary.rank-1.json").is_file()

    # the same manifest in one process: same files, same audio
    res = runner.invoke(app, [*common, "--out-dir", str(tmp_path / "one")])
    assert res.exit_code == 0, res.output
    assert "note: 1 row failed" in res.stderr and "--fail-on-error" in res.stderr
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert one["world_size"] == 1 and one["totals"]["done"] == 5
    names = sorted(p.name for p in (tmp_path / "one").glob("*.wav"))
    assert names == sorted(p.name for p in (tmp_path / "two").glob("*.wav")) and len(names) == 5
    for name in names:
        a, b = read_wav(tmp_path / "one" / name), read_wav(tmp_path / "two" / name)
        assert a.shape == b.shape and np.abs(a - b).mean() < 2e-3


def test_cli_manifest_errors_and_fail_on_error(env, tmp_path):
    v = env["videos"]
    manifest = write(v / "cli.csv", "video\nc.mp4\nbad.mp4\n")
    base = ["--manifest", str(manifest), "--model", env["model"], *FAST]
    res = runner.invoke(app, [*base, "--out-dir", str(tmp_path / "o"), "--fail-on-error"])
    assert res.exit_code == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[-1] == f"error: 1 of 2 rows failed (listed in {tmp_path / 'o' / 'summary.json'})"
    assert (tmp_path / "o" / f"{datagen.read_manifest(manifest).rows[0].default_name}.wav").is_file()
    for args, message in [
        ([*base, "--out-dir", str(tmp_path / "o"), "--steps", "3"], "holds outputs made with steps=2"),
        ([*base], "--manifest needs --out-dir"),
        ([*base, "--out-dir", str(tmp_path), str(v / "a.mp4")], "give input videos or --manifest, not both"),
        ([str(v / "a.mp4"), "--out-dir", str(tmp_path)], "--out-dir goes with --manifest"),
        (["--manifest", str(write(tmp_path / "x.jsonl", "{}\n{")), "--out-dir", str(tmp_path)], "x.jsonl line 1"),
    ]:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert torch.get_num_threads() == 1


def test_manifest_rows_with_prompts_on_an_mmaudio_pipeline(env, tmp_path):
    """Prompts reach a text-conditioned pipeline; rows of equal duration and prompt share a forward."""
    from test_mmaudio_pipeline import tiny_mmaudio_pipeline

    from v2a_sampler.mmaudio.frames import read_video

    v, pipe = env["videos"], tiny_mmaudio_pipeline()
    text = "video,seed,prompt\na.mp4,1,rain\nb.mp4,2,rain\nsub/a.mp4,3,a dog barks\n"
    warnings: list[str] = []
    summary = datagen.run_manifest(write(v / "mm.csv", text), tmp_path / "out", pipe, guidance="cfg(3)",
                                   steps=2, batch_size=2, warn=warnings.append)  # fmt: skip
    rows = summary["rows"]
    assert [r["status"] for r in rows] == ["done"] * 3 and warnings == [], warnings
    assert [r.get("batch") for r in rows] == [2, 2, 1]
    for r, name, prompt in zip(rows, ["a", "b", "sub/a"], ["rain", "rain", "a dog barks"], strict=True):
        audio = read_wav(tmp_path / "out" / r["outputs"][0])
        alone = pipe(v / f"{name}.mp4", prompt=prompt, seed=r["seed"], guidance="cfg(3)", steps=2)
        assert audio.shape[0] == round(16000 * read_video(v / f"{name}.mp4").duration) == alone.waveform.shape[0]
        assert np.abs(audio - alone.waveform.clamp(-1, 1).numpy()).max() < 1e-3
    default = datagen.run_manifest(write(v / "mm1.csv", "video\na.mp4\n"), tmp_path / "out1", pipe, steps=1)
    assert default["config"]["guidance"] == "cfg(4.5)" and default["rows"][0]["nfe"] == 2  # MMAudio's own default
