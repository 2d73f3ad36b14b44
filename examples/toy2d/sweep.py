"""Supplement to reproduce.py: CFG and AG (with either bad model) at several guidance weights.

    python examples/toy2d/sweep.py --out out/toy2d_sweep        # about a minute on CPU
    python examples/toy2d/sweep.py --family edm2 --samples 8192 --seeds 3 --out out/edm2_sweep   # EDM2's figures

Writes ``OUT/sweep.csv`` with the same columns as ``metrics.csv``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from v2a_sampler.lab import experiment as E
from v2a_sampler.lab.families import FAMILIES, get_family, run

#: Guidance weights of the sweep (the paper's toy uses 3).
WEIGHTS = (1.5, 2.0, 3.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--samples", type=int, default=2048, help="samples per class")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--family", choices=FAMILIES, default="ours", help="our models or the EDM2-faithful ones")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    family = get_family(args.family)
    models = family.models()
    rows = [E.Method("none", "none")]
    for w in WEIGHTS:
        rows.append(E.Method(f"cfg({w:g})", f"cfg({w})"))
        rows += [E.Method(f"ag({w:g})_{b.removeprefix('bad_')}", f"ag({w})", bad=b) for b in family.bads]
    per_seed, _ = run(family, models, rows, args.samples, list(range(args.seeds)), keep=None)
    summary = E.summarize(per_seed)
    E.write_csv(summary, args.out / "sweep.csv", spread=args.seeds > 1)
    for r in summary:
        print(f"{r['method']:<14} " + " ".join(f"{k}={r[k]:.4g}" for k in E.METRIC_NAMES))


if __name__ == "__main__":
    main()
