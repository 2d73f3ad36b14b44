"""The AMG-trained variant of the embedded model against the good model's guidance, at equal NFE.

MGAudio trains with the AMG objective (the target ``u + w sg(u(c) - u(null))``) and samples with a small extra CFG
(1.45). Here the shipped AMG variant (``embedded-amg``: the good model's fine-tune forked at half-way and continued
with AMG: the same number of iterations, though from the fork's EMA weights with a fresh optimizer and a learning
rate held at the fork's value, so objective and schedule differ together) runs with its default ``cfg(1.45)`` and
unguided; the good model runs unguided and with CFG, AG, PG and HG at AudioMoG's V2A weights (AG also at 2). Every
row spends the same NFE budget per clip (Euler, the most steps that fit: 50 unguided, 25 with two branches, 16 with
three, 12 with four), on the same clips and noise as ``benchmarks/v2a_quality.py``.

    python benchmarks/v2a_amg.py --out out/v2a_amg [--split test] [--budget 50] [--clips 24]

Writes ``OUT/amg.csv`` and ``OUT/amg.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import bench
import torch
from v2a_quality import METRICS, SPLITS, EvalSet, method_row

from v2a_sampler.pipelines.embedded import Pipeline

#: (label, pipeline name, guidance spec) of every row.
ROWS = (
    ("good: none", "embedded", "none"),
    ("good: cfg", "embedded", "cfg"),
    ("good: ag", "embedded", "ag"),
    ("good: ag(2)", "embedded", "ag(2)"),
    ("good: pg", "embedded", "pg"),
    ("good: hg", "embedded", "hg"),
    ("AMG: none", "embedded-amg", "none"),
    ("AMG: cfg(1.45) (its default)", "embedded-amg", "cfg(1.45)"),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("out/v2a_amg"))
    ap.add_argument("--split", choices=sorted(SPLITS), default="test")
    ap.add_argument("--budget", type=int, default=50, help="NFE per clip")
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--good", default="embedded", help="pipeline of the good model (folder or shipped name)")
    ap.add_argument("--amg", default="embedded-amg", help="pipeline of the AMG variant (folder or shipped name)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    pipes = {"embedded": Pipeline.from_pretrained(args.good), "embedded-amg": Pipeline.from_pretrained(args.amg)}
    data = EvalSet.make(pipes["embedded"], args.split, args.clips, args.duration)
    rows = []
    for label, name, spec in ROWS:
        steps = bench.steps_for_budget(args.budget, bench.nfe_per_step(spec), "euler")
        row = method_row(pipes[name], data, spec, args.samples, steps)
        rows.append({"row": label, "steps": steps, **row})
        print(f"{label:>30}: NFE {row['nfe']} " + "  ".join(f"{k} {row[k]:.3f}" for k in METRICS), flush=True)
    bench.write_csv(rows, args.out / "amg.csv", ("row", "method", "steps", "nfe", "seconds_per_clip", *METRICS))
    lines = [f"{args.clips} {args.split} clips x {args.samples} seeds, {args.duration:g} s, Euler, "
             f"{args.budget} NFE per clip", "",
             "| model: guidance | steps | NFE | onset F1 | class acc | FD ↓ | diversity |",
             "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['row']} | {r['steps']} | {r['nfe']} | {r['onset_f1']:.3f} | {r['class_accuracy']:.3f} | "
                     f"{r['fd']:.2f} | {r['diversity']:.2f} |")  # fmt: skip
    (args.out / "amg.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
