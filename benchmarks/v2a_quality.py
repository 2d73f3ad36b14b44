"""Quality of the embedded V2A model per guidance method, on held-out synthetic clips.

For each method, generates ``--samples`` soundtracks (seeds) per clip and reports onset P/R/F1 (±50 ms), timbre
class accuracy, Fréchet distance of classifier embeddings to real audio of other clips, and diversity across seeds;
plus the same metrics for the real audio and its Griffin-Lim resynthesis (the decoder's ceiling).

Two disjoint splits of the procedural world (training uses clip seeds 0..):

* ``test`` (default; the README's headline numbers): clips ``EVAL_SEED_OFFSET + 500 + i``, FD references
  ``EVAL_SEED_OFFSET + 900 + i``;
* ``val`` (for choosing anything: bad models, weights): clips ``VALIDATION_SEED_OFFSET + i``, references
  ``VALIDATION_SEED_OFFSET + 500_000 + i`` (the seeds ``v2a-tune --synthetic`` uses).

    python benchmarks/v2a_quality.py --out out/v2a_quality [--quick] [--model PATH] [--bad SPEC] [--split val]

``--methods`` takes guidance specs separated by ``;`` (or bare names separated by commas). Writes ``quality.csv``
and ``quality.md``.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from v2a_sampler.frontends.tune import VALIDATION_SEED_OFFSET
from v2a_sampler.media.specs import resize_frames
from v2a_sampler.metrics import evaluate_tracks
from v2a_sampler.pipelines.embedded import Pipeline
from v2a_sampler.synth import make_clip
from v2a_sampler.training.synth_v2a import EVAL_SEED_OFFSET, RENDER_SIZE

METHODS = ["none", "cfg", "ag", "pg", "hg"]  # AudioMoG V2A settings (bare names)
METRICS = ["onset_precision", "onset_recall", "onset_f1", "class_accuracy", "fd", "diversity"]
#: First clip seed and first FD-reference seed of each split.
SPLITS = {
    "test": (EVAL_SEED_OFFSET + 500, EVAL_SEED_OFFSET + 900),
    "val": (VALIDATION_SEED_OFFSET, VALIDATION_SEED_OFFSET + 500_000),
}
#: Noise seed of sample ``s`` of every clip (``pipe(frames, seed=SAMPLE_SEED_STRIDE * s)``).
SAMPLE_SEED_STRIDE = 1000


@dataclass
class EvalSet:
    """Frames (read at the pipeline's size), ground-truth events and real audio of held-out clips, and the FD
    reference tracks (real audio of other clips)."""

    frames: list[torch.Tensor]
    events: list[list[Any]]
    real: list[tuple[Any, int]]
    refs: list[Any]

    @classmethod
    def make(cls, pipe: Pipeline, split: str = "test", clips: int = 24, duration: float = 5.0) -> EvalSet:
        first, first_ref = SPLITS[split]
        vs = pipe.video_spec
        made = [make_clip(first + i, duration=duration, fps=vs.fps, size=RENDER_SIZE) for i in range(clips)]
        frames = [resize_frames(torch.from_numpy(c.frames), vs.frame_size * 3) for c in made]
        refs = [make_clip(first_ref + i, duration=duration, fps=vs.fps, size=32).audio for i in range(clips)]
        return cls(frames, [c.events for c in made], [(c.audio, c.sample_rate) for c in made], refs)


def reference_rows(pipe: Pipeline, data: EvalSet) -> list[dict[str, Any]]:
    """The real audio and its log-mel -> Griffin-Lim resynthesis (the decoder's ceiling), scored like a method."""
    spec = pipe.audio_spec
    gl = [(spec.decode(spec.encode(torch.from_numpy(a)), num_samples=len(a)).numpy(), sr) for a, sr in data.real]
    rows = []
    for name, tracks in (("real audio", data.real), ("real -> log-mel -> Griffin-Lim", gl)):
        m = evaluate_tracks(tracks, data.events, data.refs)
        rows.append({"method": name, "nfe": 0, "seconds_per_clip": 0.0, **{k: m.get(k) for k in METRICS}})
    return rows


def method_row(
    pipe: Pipeline, data: EvalSet, method: str, samples: int = 2, steps: int = 25, solver: str = "euler"
) -> dict[str, Any]:
    """Generate ``samples`` tracks per clip with ``method`` and score them (one row)."""
    t0 = time.perf_counter()
    tracks: list[list[Any]] = [[] for _ in data.frames]
    for s in range(samples):
        outs = pipe(data.frames, guidance=method, solver=solver, steps=steps, seed=SAMPLE_SEED_STRIDE * s)
        for i, o in enumerate(outs):
            tracks[i].append((o.waveform.numpy(), o.sample_rate))
    secs = (time.perf_counter() - t0) / (len(data.frames) * samples)
    m = evaluate_tracks(tracks, data.events, data.refs)
    return {"method": method, "nfe": outs[0].info["nfe"], "seconds_per_clip": secs, **{k: m.get(k) for k in METRICS}}


def split_methods(text: str) -> list[str]:
    """``"none,cfg,hg"`` or ``"cfg(3);hg(2.7,2.5,1.2)"``: a list of guidance specs."""
    return [m.strip() for m in (text.split(";") if ";" in text or "(" in text else text.split(",")) if m.strip()]


def write_tables(rows: Sequence[dict[str, Any]], out: Path, caption: str) -> str:
    """``quality.csv`` and ``quality.md`` in ``out``; returns the markdown table."""
    with open(out / "quality.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    header = "| method | NFE | onset P | onset R | onset F1 | class acc | FD | diversity | s/clip |"
    lines = [header, "|" + "---|" * 9]
    for r in rows:
        lines.append("| " + " | ".join(_cells(r)) + " |")
    table = "\n".join(lines)
    (out / "quality.md").write_text(caption + "\n\n" + table + "\n")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description="V2A quality per guidance method")
    ap.add_argument("--out", type=Path, default=Path("out/v2a_quality"))
    ap.add_argument("--model", default=None, help="pipeline folder or shipped name (default: the embedded model)")
    ap.add_argument("--bad", default=None, help="bad model: a folder, perturb:..., or 'none' (default: bad/)")
    ap.add_argument("--split", choices=sorted(SPLITS), default="test")
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--samples", type=int, default=2, help="seeds per clip (diversity needs >= 2)")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--solver", default="euler")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--no-references", action="store_true", help="skip the real-audio and Griffin-Lim rows")
    ap.add_argument("--quick", action="store_true", help="4 clips, 2 seeds, 10 steps")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.quick:
        args.clips, args.samples, args.steps = 4, 2, 10
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    bad = False if args.bad == "none" else args.bad
    pipe = Pipeline.from_pretrained(args.model, bad=bad)
    data = EvalSet.make(pipe, args.split, args.clips, args.duration)
    rows = [] if args.no_references else reference_rows(pipe, data)
    for method in split_methods(args.methods):
        rows.append(method_row(pipe, data, method, args.samples, args.steps, args.solver))
        print(_fmt_row(rows[-1]), flush=True)
    caption = (f"{args.clips} {args.split} clips x {args.samples} seeds, {args.duration:g} s, {args.solver} x "
               f"{args.steps}; model {args.model or 'embedded'}, bad {args.bad or 'bad/'}")  # fmt: skip
    print(write_tables(rows, args.out, caption))


def _num(v, fmt="{:.3f}"):
    return "-" if v is None else fmt.format(v)


def _cells(r):
    return [r["method"], str(r["nfe"]), *(_num(r[k]) for k in METRICS), _num(r["seconds_per_clip"], "{:.2f}")]


def _fmt_row(r):
    return "  ".join(f"{c:>10}" for c in _cells(r))


if __name__ == "__main__":
    main()
