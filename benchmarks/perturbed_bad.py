"""Bad models without a second checkpoint: perturbed good models against the checkpoint bad models, at equal NFE.

For each task, AG and HG run with every bad model at the same NFE budget(s), the same noise and the same clips, so a
row differs from the checkpoint row of its (method, budget, seed) only by where the bad model comes from:

* ``toy2d`` (the 2D lab, exact metrics, the lab's settings: AG w = 3, HG (1.5, 1.5, 2), Heun on the Karras grid):
  the paper's ``bad_small`` and ``bad_early`` checkpoints against the good MLP with one hidden layer skipped
  (``perturb:skip=i``) or 20 % of its hidden units dropped (``perturb:dropout=0.2``).
* ``v2a`` (the embedded model, AudioMoG's V2A weights ``hg`` and ``ag(2)``, Euler, held-out synthetic clips as in
  ``benchmarks/v2a_quality.py``): the shipped ``bad/`` checkpoint against skipped blocks, identity attention (PAG),
  blurred queries (SEG) and attention dropout.

    python benchmarks/perturbed_bad.py --quick --out out/perturbed_bad      # a few minutes on 2 CPU cores
    python benchmarks/perturbed_bad.py --out out/perturbed_bad_full

Writes ``OUT/results.csv`` (one row per task x method x bad model x budget x seed, in the NFE-budget benchmark's
format plus a ``bad`` column), ``OUT/results_mean.csv`` and ``OUT/summary.md``: per task, method and budget, every
bad model's mean metrics and its paired difference to the checkpoint bad model (mean over seeds with a 95 %
t-interval; ``*`` marks intervals that exclude 0).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads: BLAS threads stall on shared cores

import argparse
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import bench
import nfe_budget as NB
import torch

from v2a_sampler.lab.toy2d import pretrained
from v2a_sampler.models.perturb import perturbed
from v2a_sampler.pipelines.embedded import Pipeline

#: Bad models per task: name -> ("checkpoint" kind) or a perturbation spec of the good model.
LAB_BADS = {
    "bad_small": "checkpoint",
    "bad_early": "checkpoint",
    **{f"perturb:skip={i}": "perturb" for i in range(4)},
    "perturb:dropout=0.2": "perturb",
}
V2A_BADS = {
    "checkpoint": "checkpoint",
    "perturb:skip=1": "perturb",
    "perturb:skip=3": "perturb",
    "perturb:identity=1": "perturb",
    "perturb:identity=3": "perturb",
    "perturb:blur=2": "perturb",
    "perturb:attn_dropout=0.2": "perturb",
}
#: The reference bad model each task's differences are taken against.
REFERENCE = {"toy2d": "bad_small", "v2a": "checkpoint"}
LAB_METHODS = ("ag", "hg")  # the lab's paper weights (examples/toy2d)
V2A_METHODS = {"ag2": "ag(2)", "hg": "hg"}
#: Metrics summarised (higher-is-better flag) per task.
SUMMARY_METRICS = {
    "toy2d": (("outlier_rate", False), ("recall", True), ("sliced_w2", False)),
    "v2a": (("onset_f1", True), ("class_accuracy", True), ("fd", False)),
}
#: Two-sided 95 % Student t quantiles by degrees of freedom (the paired CIs over seeds).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


@dataclass(frozen=True)
class Config:
    budgets: tuple[int, ...]
    seeds: int
    lab_samples: int
    clips: int
    duration: float


QUICK = Config(budgets=(64,), seeds=2, lab_samples=1024, clips=4, duration=3.0)
FULL = Config(budgets=(64, 128), seeds=3, lab_samples=4096, clips=6, duration=4.0)


def run_lab(config: Config) -> list[dict[str, Any]]:
    good = pretrained("good")
    rows = []
    for name, kind in LAB_BADS.items():
        bad = pretrained(name) if kind == "checkpoint" else perturbed(good, name)
        for r in NB.run_lab(config.budgets, config.seeds, config.lab_samples, methods=LAB_METHODS,
                            solvers=("heun",), models={"good": good, NB.LAB_BAD: bad}):  # fmt: skip
            rows.append({**r, "bad": name})
    return rows


def run_v2a(config: Config) -> list[dict[str, Any]]:
    base = Pipeline.from_pretrained()
    rows = []
    for name, kind in V2A_BADS.items():
        pipe = base if kind == "checkpoint" else Pipeline(base.model, perturbed(base.model, name))
        for label, spec in V2A_METHODS.items():
            for r in NB.run_v2a(config.budgets, config.seeds, config.clips, config.duration, methods=(spec,),
                                solvers=("euler",), pipe=pipe):  # fmt: skip
                rows.append({**r, "method": label, "bad": name})
    return rows


def paired(rows: Sequence[Mapping[str, Any]], task: str) -> list[dict[str, Any]]:
    """Per (method, budget, bad model): mean metrics and the paired difference to the task's reference bad model."""
    out = []
    ref_name = REFERENCE[task]
    keys = sorted({(r["method"], r["budget"]) for r in rows})
    for method, budget in keys:
        cell = [r for r in rows if r["method"] == method and r["budget"] == budget]
        ref = {r["seed"]: r for r in cell if r["bad"] == ref_name}
        for name in dict.fromkeys(r["bad"] for r in cell):
            mine = {r["seed"]: r for r in cell if r["bad"] == name}
            row: dict[str, Any] = {"task": task, "method": method, "budget": budget, "bad": name,
                                   "nfe": next(iter(mine.values()))["nfe"]}  # fmt: skip
            for metric, _ in SUMMARY_METRICS[task]:
                vals = [float(r[metric]) for r in mine.values()]
                diffs = [float(mine[s][metric]) - float(ref[s][metric]) for s in mine if s in ref]
                row[metric] = statistics.fmean(vals)
                row[f"{metric}_diff"] = statistics.fmean(diffs) if diffs else math.nan
                half = T95.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(len(diffs))
                row[f"{metric}_ci"] = half if len(diffs) > 1 else math.nan
            out.append(row)
    return out


def summary_markdown(table: Sequence[Mapping[str, Any]], seeds: int) -> str:
    parts = []
    for task in ("toy2d", "v2a"):
        rows = [r for r in table if r["task"] == task]
        if not rows:
            continue
        metrics = SUMMARY_METRICS[task]
        parts.append(f"## {task}: difference to `{REFERENCE[task]}` (paired over {seeds} seeds, 95 % CI; "
                     "* = CI excludes 0)\n")  # fmt: skip
        parts.append("| method | budget | bad model | nfe | " + " | ".join(m for m, _ in metrics) + " |")
        parts.append("|---|---:|---|---:|" + "---|" * len(metrics))
        for r in rows:
            cells = []
            for m, higher in metrics:
                diff, ci = r[f"{m}_diff"], r[f"{m}_ci"]
                arrow = "↑" if higher else "↓"
                if r["bad"] == REFERENCE[task] or math.isnan(ci):
                    cells.append(f"{r[m]:.4g} {arrow}")
                else:
                    star = "*" if abs(diff) > ci else ""
                    cells.append(f"{r[m]:.4g} ({diff:+.3g} ± {ci:.2g}{star})")
            parts.append(f"| {r['method']} | {r['budget']} | `{r['bad']}` | {r['nfe']} | " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--quick", action="store_true", help="one budget, 2 seeds, fewer samples and clips")
    ap.add_argument("--tasks", default="toy2d,v2a")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = QUICK if args.quick else FULL
    if args.seeds:
        config = replace(config, seeds=args.seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tasks = [t.strip() for t in args.tasks.split(",")]
    rows = (run_lab(config) if "toy2d" in tasks else []) + (run_v2a(config) if "v2a" in tasks else [])
    cols = ("task", "method", "bad", "solver", "budget", "steps", "nfe", "seed", "seconds",
            *{m for t in tasks for m, _ in SUMMARY_METRICS[t]})  # fmt: skip
    bench.write_csv(rows, args.out / "results.csv", cols)
    table = [r for t in tasks for r in paired([x for x in rows if x["task"] == t], t)]
    mean_cols = ("task", "method", "budget", "bad", "nfe",
                 *(f"{m}{s}" for t in tasks for m, _ in SUMMARY_METRICS[t] for s in ("", "_diff", "_ci")))  # fmt: skip
    bench.write_csv(table, args.out / "results_mean.csv", mean_cols)
    text = summary_markdown(table, config.seeds)
    (args.out / "summary.md").write_text(text)
    print(text)
    print(f"config {config}; wrote {args.out}; total time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
