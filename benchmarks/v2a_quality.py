"""Quality of the embedded V2A model per guidance method, on held-out synthetic clips.

For each method, generates ``--samples`` soundtracks (seeds) per clip and reports onset P/R/F1 (±50 ms), timbre
class accuracy, Fréchet distance of classifier embeddings to the clips' real audio, and diversity across seeds;
plus the same metrics for the real audio and its Griffin-Lim resynthesis (the decoder's ceiling).

    python benchmarks/v2a_quality.py --out out/v2a_quality [--quick] [--model PATH]

Writes ``quality.csv`` and ``quality.md``.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

from v2a_sampler.media.specs import resize_frames
from v2a_sampler.metrics import evaluate_tracks
from v2a_sampler.pipelines.embedded import Pipeline
from v2a_sampler.synth import make_clip
from v2a_sampler.training.synth_v2a import EVAL_SEED_OFFSET, RENDER_SIZE

METHODS = ["none", "cfg", "ag", "pg", "hg"]  # AudioMoG V2A settings (bare names)
METRICS = ["onset_precision", "onset_recall", "onset_f1", "class_accuracy", "fd", "diversity"]


def main() -> None:
    ap = argparse.ArgumentParser(description="V2A quality per guidance method")
    ap.add_argument("--out", type=Path, default=Path("out/v2a_quality"))
    ap.add_argument("--model", default=None, help="pipeline folder (default: the embedded model)")
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--samples", type=int, default=2, help="seeds per clip (diversity needs >= 2)")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--solver", default="euler")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--quick", action="store_true", help="4 clips, 2 seeds, 10 steps")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.quick:
        args.clips, args.samples, args.steps = 4, 2, 10
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    pipe = Pipeline.from_pretrained(args.model)
    vs = pipe.video_spec
    clips = [make_clip(EVAL_SEED_OFFSET + 500 + i, duration=args.duration, fps=vs.fps, size=RENDER_SIZE)
             for i in range(args.clips)]  # fmt: skip
    frames = [resize_frames(torch.from_numpy(c.frames), vs.frame_size * 3) for c in clips]
    events = [c.events for c in clips]
    real = [(c.audio, c.sample_rate) for c in clips]
    # the reference set for FD: other held-out clips' real audio
    refs = [make_clip(EVAL_SEED_OFFSET + 900 + i, duration=args.duration, fps=vs.fps, size=32).audio
            for i in range(args.clips)]  # fmt: skip

    rows = []
    spec = pipe.audio_spec
    gl = [(spec.decode(spec.encode(torch.from_numpy(a)), num_samples=len(a)).numpy(), sr) for a, sr in real]
    for name, tracks in (("real audio", real), ("real -> log-mel -> Griffin-Lim", gl)):
        m = evaluate_tracks(tracks, events, refs)
        rows.append({"method": name, "nfe": 0, "seconds_per_clip": 0.0, **{k: m.get(k) for k in METRICS}})
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        tracks = [[] for _ in clips]
        for s in range(args.samples):
            outs = pipe(frames, guidance=method, solver=args.solver, steps=args.steps, seed=1000 * s)
            for i, o in enumerate(outs):
                tracks[i].append((o.waveform.numpy(), o.sample_rate))
        secs = (time.perf_counter() - t0) / (args.clips * args.samples)
        m = evaluate_tracks(tracks, events, refs)
        rows.append({"method": method, "nfe": outs[0].info["nfe"], "seconds_per_clip": secs,
                     **{k: m.get(k) for k in METRICS}})  # fmt: skip
        print(_fmt_row(rows[-1]), flush=True)

    with open(args.out / "quality.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    header = "| method | NFE | onset P | onset R | onset F1 | class acc | FD | diversity | s/clip |"
    lines = [header, "|" + "---|" * 9]
    for r in rows:
        lines.append("| " + " | ".join(_cells(r)) + " |")
    (args.out / "quality.md").write_text(
        f"{args.clips} held-out clips x {args.samples} seeds, {args.duration:g} s, {args.solver} x {args.steps}\n\n"
        + "\n".join(lines)
        + "\n"
    )
    print("\n".join(lines))


def _num(v, fmt="{:.3f}"):
    return "-" if v is None else fmt.format(v)


def _cells(r):
    return [r["method"], str(r["nfe"]), *(_num(r[k]) for k in METRICS), _num(r["seconds_per_clip"], "{:.2f}")]


def _fmt_row(r):
    return "  ".join(f"{c:>10}" for c in _cells(r))


if __name__ == "__main__":
    main()
