"""v2a-eval: per-clip CSV and summary markdown over a generated folder, equal to the library metrics; references from
sidecars, folders and synthetic manifests; metric plug-ins by name; one-line errors."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import math

import numpy as np
import pytest
import soundfile as sf
from test_pipeline import _tiny_model
from typer.testing import CliRunner

from v2a_sampler import datagen, evaluate, metrics
from v2a_sampler.evaluate import app
from v2a_sampler.pipelines.embedded import Pipeline
from v2a_sampler.synth import load_events, make_dataset

runner = CliRunner()
SR = 16000
SHIFT = 0.1  # s: puts every onset outside the ±50 ms tolerance


def rms(clip, ctx):
    """Root-mean-square level of the track."""
    return float(np.sqrt(np.mean(clip.audio.numpy().astype(np.float64) ** 2)))


def peak_level(clip, ctx):
    return {"peak": float(clip.audio.abs().max())}


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    root = tmp_path_factory.mktemp("refs")
    make_dataset(root, 3, seed=5, duration=2.0, fps=25.0, size=32)
    names = [f"clip_{i:06d}" for i in range(3)]
    audio = {n: sf.read(str(root / f"{n}.wav"), dtype="float32")[0] for n in names}
    events = {n: load_events(root / f"{n}.events.json") for n in names}
    return {"root": root, "names": names, "audio": audio, "events": events}


@pytest.fixture(scope="module")
def generated(refs, tmp_path_factory):
    """Real audio as 'generated' tracks: two exact, one delayed by 100 ms; the second with a manifest-style name."""
    out = tmp_path_factory.mktemp("gen")
    n0, n1, n2 = refs["names"]
    a = refs["audio"]
    sf.write(str(out / f"{n0}.wav"), a[n0], SR)
    sf.write(str(out / f"{n1}-0123abcd.wav"), a[n1], SR)
    shifted = np.concatenate([np.zeros(round(SHIFT * SR), np.float32), a[n2]])[: a[n2].shape[0]]
    sf.write(str(out / f"{n2}.wav"), shifted, SR)
    return out


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_matches_the_library_metrics(refs, generated):
    res = runner.invoke(app, [str(generated), "--reference", str(refs["root"])])
    assert res.exit_code == 0, res.output
    rows = read_csv(generated / "eval.csv")
    assert [r["file"] for r in rows] == ["clip_000000.wav", "clip_000001-0123abcd.wav", "clip_000002.wav"]
    assert [r["events"] for r in rows] == [f"{n}.events.json" for n in refs["names"]]
    tracks = [sf.read(str(generated / r["file"]), dtype="float32")[0] for r in rows]
    events = [refs["events"][n] for n in refs["names"]]
    for row, audio, ev in zip(rows, tracks, events, strict=True):
        p, r, f1 = metrics.onset_f1(audio, SR, ev)
        assert math.isclose(float(row["onset_f1"]), f1, abs_tol=1e-5) and int(row["onset_reference"]) == len(
            metrics.audible_events(ev)[0]
        )
        correct, total = metrics.class_counts(audio, SR, ev)
        assert (int(row["class_correct"]), int(row["class_total"])) == (correct, total)
    # every onset detected in the real audio is an event (measured P = 1.0); delayed, most are not (measured 0.43)
    assert float(rows[0]["onset_precision"]) == 1.0 and float(rows[1]["onset_precision"]) == 1.0
    assert float(rows[2]["onset_precision"]) < 0.6 and float(rows[2]["onset_f1"]) < float(rows[0]["onset_f1"])
    # the summary is evaluate_tracks' pooled numbers
    reference_audio = [refs["audio"][n] for n in refs["names"]]
    want = metrics.evaluate_tracks([(t, SR) for t in tracks], events, reference_audio)
    md = (generated / "eval.md").read_text()
    for key in ("onset_precision", "onset_recall", "onset_f1", "class_accuracy", "fd"):
        assert f"| {key} | {want[key]:.4f} |" in md, (key, want[key], md)
    assert "diversity: no value (needs two or more samples of one clip)" in md
    assert "3 generated tracks of 3 clips, 3 with reference events; 3 reference audio tracks" in md
    assert "| fd |" in res.stdout and "eval.csv" in res.stdout
    # outputs are not replaced without --overwrite; --out writes elsewhere
    res = runner.invoke(app, [str(generated), "-r", str(refs["root"])])
    assert res.exit_code == 2 and res.stderr.strip().startswith("error: output exists")
    res = runner.invoke(app, [str(generated), "-r", str(refs["root"]), "--out", str(generated / "rep"), "-q"])
    assert res.exit_code == 0 and (generated / "rep" / "eval.md").read_text() == md


def test_manifest_run_folder_uses_sidecars_and_groups_seeds(refs, tmp_path):
    root = refs["root"]
    manifest = tmp_path / "m.csv"
    lines = [f"{root / n}.mp4,{s}" for n in refs["names"][:2] for s in (1, 2)]
    manifest.write_text("video,seed\n" + "\n".join(lines) + f"\n{tmp_path / 'missing.mp4'},1\n")
    out = tmp_path / "out"
    pipe = Pipeline(_tiny_model(0), _tiny_model(1))
    summary = datagen.run_manifest(manifest, out, pipe, guidance="cfg(2)", steps=2, griffin_lim_iters=4, batch_size=4)
    assert summary["totals"]["done"] == 4 and summary["totals"]["failed"] == 1
    ev = evaluate.evaluate_folder(out)  # no --reference: events from the sidecars beside the source videos
    assert ev.counts == {"clips": 4, "clips_with_events": 4, "sources": 2, "reference_tracks": 0}
    assert any(n.startswith("fd: skipped, no reference audio") for n in ev.notes)
    assert [r["seed"] for r in ev.rows] == [1, 2, 1, 2]
    tracks = [[(sf.read(str(out / r["file"]), dtype="float32")[0], SR) for r in ev.rows[k : k + 2]] for k in (0, 2)]
    events = [refs["events"][n] for n in refs["names"][:2]]
    want = metrics.evaluate_tracks(tracks, events, [])
    assert math.isclose(ev.summary["diversity"], want["diversity"], rel_tol=1e-6) and ev.summary["diversity"] > 0
    assert math.isclose(ev.summary["onset_f1"], want["onset_f1"], rel_tol=1e-9)
    assert ev.summary["diversity_clips"] == 2
    # a synthetic manifest as reference: its audio column feeds FD
    ev = evaluate.evaluate_folder(out, [root / "manifest.jsonl"], ["fd"])
    assert ev.counts["reference_tracks"] == 3 and ev.summary["fd"] > 0 and ev.notes == []


def test_metric_plugins(refs, generated, tmp_path, monkeypatch):
    out = tmp_path / "rep"
    res = runner.invoke(app, [str(generated), "--metrics", "onsets,test_eval_cli:rms", "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    rows = read_csv(out / "eval.csv")
    for row in rows:
        audio = sf.read(str(generated / row["file"]), dtype="float64")[0]
        assert math.isclose(float(row["rms"]), np.sqrt(np.mean(audio**2)), rel_tol=1e-5)
    md = (out / "eval.md").read_text()
    assert f"| rms | {np.mean([float(r['rms']) for r in rows]):.4f} |" in md
    assert "onsets: skipped, no clip has reference events" in md  # no --reference here

    # by name from an installed package's entry point, and registered in Python
    ep = importlib.metadata.EntryPoint("peak_ep", "test_eval_cli:peak_level", evaluate.ENTRY_POINT_GROUP)
    monkeypatch.setattr(evaluate.importlib.metadata, "entry_points", lambda group=None: [ep] if group else [])
    assert evaluate.get_metric("peak_ep").compute is peak_level
    monkeypatch.setitem(evaluate.METRICS, "loudest", evaluate.Metric("loudest", lambda ctx: max(
        float(c.audio.abs().max()) for c in ctx.clips), scope="set"))  # fmt: skip
    ev = evaluate.evaluate_folder(generated, metrics=["peak_ep", "loudest"])
    assert math.isclose(ev.summary["loudest"], max(r["peak"] for r in ev.rows), rel_tol=1e-9)
    res = runner.invoke(app, ["--list-metrics"])
    assert res.exit_code == 0 and "peak_ep" in res.stdout and "class_accuracy" in res.stdout


def test_errors_are_one_line(refs, generated, tmp_path):
    (tmp_path / "empty").mkdir()
    for args, code, message in [
        ([str(tmp_path / "empty")], 2, "no generated audio"),
        ([str(tmp_path / "nowhere")], 2, "not a folder"),
        ([str(generated), "--metrics", "onsets,nope"], 2, "unknown metric 'nope'"),
        ([str(generated), "--metrics", "no_such_module:f"], 2, "cannot load metric"),
        ([str(generated), "-r", str(tmp_path / "missing_refs")], 2, "reference not found"),
        ([str(generated), "--tolerance", "0"], 2, "tolerance must be positive"),
    ]:
        res = runner.invoke(app, [*args, "--out", str(tmp_path / "o")])
        assert res.exit_code == code, (args, res.output)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    bad = tmp_path / "badrefs"
    bad.mkdir()
    (bad / "clip_000000.events.json").write_text(json.dumps({"events": [{"time": 1.0}]}))
    res = runner.invoke(app, [str(generated), "-r", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "cannot read events" in res.stderr
