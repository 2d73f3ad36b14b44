"""Solver accuracy vs steps on Gaussian data with the exact probability-flow solution as reference.

Prints a table of errors and fitted convergence orders per (schedule, solver) and writes CSV and PNG.

    python benchmarks/solver_orders.py --out out/bench [--quick]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch

from v2a_sampler import EDMSchedule, FlowSchedule, VPSchedule, solvers
from v2a_sampler.core.analytic import GaussianMixture, gaussian_denoiser

MEAN = torch.tensor([1.0, -0.5])
COV = torch.tensor([[0.3, 0.2], [0.2, 2.0]])
#: (label, schedule, prediction, interior start/end times: away from the singular ends, where orders are clean)
CASES = [
    ("flow t=1 noise, velocity", FlowSchedule(1.0), "velocity", 0.95, 0.05),
    ("flow t=0 noise, velocity", FlowSchedule(0.0), "velocity", 0.05, 0.95),
    ("EDM, eps", EDMSchedule(), "eps", 20.0, 0.05),
    ("VP, v", VPSchedule(), "v", 0.7, 0.05),
]
SOLVERS = ["euler", "heun", "dpmpp_2m"]


def main() -> None:
    ap = argparse.ArgumentParser(description="solver convergence orders on Gaussian data")
    ap.add_argument("--out", type=Path, default=Path("out/bench"))
    ap.add_argument("--quick", action="store_true", help="fewer step counts")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    steps = [8, 16, 32, 64] if args.quick else [8, 16, 32, 64, 128, 256]
    data = GaussianMixture.gaussian(MEAN, COV)
    noise = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rows = []
    print(f"{'case':<28}{'solver':<10}" + "".join(f"{n:>10}" for n in steps) + f"{'order':>8}")
    for label, sched, pred, t0, t1 in CASES:
        den = gaussian_denoiser(MEAN, COV, pred, sched)
        a, b = sched.terms(t0), sched.terms(t1)
        exact = data.flow_map(noise * a.sigma, (a.alpha, a.sigma), (b.alpha, b.sigma))
        for name in SOLVERS:
            errs = []
            for n in steps:
                levels = np.linspace(a.noise_level, b.noise_level, n + 1)
                grid = [sched.t_from_noise_level(float(v)) for v in levels]
                x, info = solvers.sample(den, noise, guidance="none", solver=name, timesteps=grid)
                err = (x - exact).norm(dim=1).mean().item()
                errs.append(err)
                rows.append({"case": label, "solver": name, "steps": n, "nfe": info.nfe, "error": err})
            order = -np.polyfit(np.log(steps[1:]), np.log(errs[1:]), 1)[0]
            for r in rows[-len(steps) :]:
                r["order"] = order
            print(f"{label:<28}{name:<10}" + "".join(f"{e:>10.2e}" for e in errs) + f"{order:>8.2f}")
    with open(args.out / "solver_orders.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: skipped the plot")
        return
    fig, axes = plt.subplots(1, len(CASES), figsize=(4 * len(CASES), 3.4), sharey=True)
    for ax, (label, *_rest) in zip(axes, CASES, strict=True):
        for name in SOLVERS:
            pts = [(r["nfe"], r["error"]) for r in rows if r["case"] == label and r["solver"] == name]
            ax.loglog(*zip(*pts, strict=True), marker="o", label=name)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("NFE per sample")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("mean error vs exact ODE solution")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(args.out / "solver_orders.png", dpi=110)
    print(f"wrote {args.out / 'solver_orders.csv'} and {args.out / 'solver_orders.png'}")


if __name__ == "__main__":
    main()
