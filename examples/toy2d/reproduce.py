"""Reproduce AudioMoG's 2D toy comparison (Fig. 2) with exact metrics.

    python examples/toy2d/reproduce.py --quick --out out/toy2d        # < 1 minute on CPU
    python examples/toy2d/reproduce.py --out out/toy2d_full           # more samples and seeds, with spread
    python examples/toy2d/reproduce.py --quick --retrain --out out/t  # retrain the models from scratch first
    python examples/toy2d/reproduce.py --family edm2 --quick --out out/toy2d_edm2   # EDM2's toy, same metrics

Writes ``OUT/metrics.csv`` (one row per method: ``method,nfe,outlier_rate,precision,recall,coverage,sliced_w2,
mean_logp``; the full run adds ``seeds`` and ``<metric>_std`` columns and ``metrics_per_seed.csv``) and
``OUT/samples.png`` (class-0 samples of every method over the exact class density).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from v2a_sampler.lab import experiment as E
from v2a_sampler.lab.families import FAMILIES, get_family, run
from v2a_sampler.training.edm2_recipe import train_family
from v2a_sampler.training.lab_recipes import train_lab_models

#: Samples per class and seeds of the two modes.
QUICK_SAMPLES, QUICK_SEEDS = 2048, 1
FULL_SAMPLES, FULL_SEEDS = 8192, 5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--quick", action="store_true", help="one seed and fewer samples")
    ap.add_argument("--retrain", action="store_true", help="train the good and bad models from scratch first")
    ap.add_argument("--models", type=Path, default=None, help="folder with the family's model folders")
    ap.add_argument("--family", choices=FAMILIES, default="ours", help="our models or the EDM2-faithful ones")
    ap.add_argument("--samples", type=int, default=None, help="samples per class (overrides the mode)")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (overrides the mode)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny MLPs run fastest on one)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    models_dir = args.models
    if args.retrain:
        models_dir = args.out / "models"
        (train_family if args.family == "edm2" else train_lab_models)(models_dir)
    family = get_family(args.family)
    models = family.models(models_dir)
    toy = family.toy

    n = args.samples or (QUICK_SAMPLES if args.quick else FULL_SAMPLES)
    seeds = list(range(args.seeds or (QUICK_SEEDS if args.quick else FULL_SEEDS)))
    rows = E.methods(family.bads)

    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("sampling + metrics", total=len(rows) * len(seeds))
        per_seed, kept = run(family, models, rows, n, seeds, on_step=lambda _: bar.advance(task))
    summary = E.summarize(per_seed)
    spread = len(seeds) > 1
    E.write_csv(summary, args.out / "metrics.csv", spread=spread)
    if spread:
        E.write_csv(per_seed, args.out / "metrics_per_seed.csv", columns=E.PER_SEED_COLUMNS)
    E.plot_panels(toy, kept, args.out / "samples.png")

    print(f"{'method':<10} {'nfe':>4} " + " ".join(f"{k:>12}" for k in E.METRIC_NAMES))
    for r in summary:
        vals = []
        for k in E.METRIC_NAMES:
            v = f"{r[k]:.4g}"
            if spread:
                v += f"±{r[k + '_std']:.2g}"
            vals.append(f"{v:>12}")
        print(f"{r['method']:<10} {r['nfe']:>4} " + " ".join(vals))
    print(f"{args.family}: {n} samples/class x {len(seeds)} seed(s); wrote {args.out / 'metrics.csv'} and samples.png")
    print(f"total time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
