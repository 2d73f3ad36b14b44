"""Guidance on a 2D problem with exact models: the SDK end to end in a few seconds on CPU.

The "good" model is the exact denoiser of a two-class Gaussian mixture; the "bad" model is the exact denoiser of a
blurred copy (every component's covariance inflated), standing in for an under-trained network. Every guidance
method samples class 0 with the same solver; the table reports NFE and the mean exact log-density of the samples
under the true class distribution (higher = fewer outliers), plus their spread.

    python examples/quickstart_2d.py --out out/quickstart
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

from v2a_sampler import FlowSchedule, solvers
from v2a_sampler.core.analytic import ConditionalGaussianMixture, GaussianMixture

#: How much the bad model's component covariances are inflated (its "blur").
BAD_BLUR = 4.0
#: Guidance settings compared (AudioMoG Fig. 2 style).
METHODS = ["none", "cfg(3)", "ag(3)", "pg(2,2)", "hg(1.5,1.5,2)"]


def two_class_mixture(blur: float = 1.0) -> ConditionalGaussianMixture:
    """Two classes of three narrow, anisotropic components each; ``blur`` scales every covariance."""
    thin = torch.tensor([[0.30, 0.0], [0.0, 0.004]])
    rot = [torch.tensor([[c, -s], [s, c]]) for c, s in ((1.0, 0.0), (0.5, 0.866), (0.5, -0.866))]
    covs = torch.stack([r @ thin @ r.T for r in rot]) * blur
    class0 = GaussianMixture([1, 1, 1], torch.tensor([[0.0, 1.0], [-0.8, -0.4], [0.8, -0.4]]), covs)
    class1 = GaussianMixture([1, 1, 1], torch.tensor([[0.0, -1.0], [0.8, 0.4], [-0.8, 0.4]]), covs)
    return ConditionalGaussianMixture([class0, class1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/quickstart"), help="output folder (CSV and PNG)")
    ap.add_argument("--n", type=int, default=2000, help="samples per method")
    ap.add_argument("--steps", type=int, default=32, help="solver steps")
    ap.add_argument("--solver", default="heun", choices=list(solvers.SOLVERS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    truth = two_class_mixture()
    good = truth.denoiser("velocity", FlowSchedule(1.0), name="exact")
    bad = two_class_mixture(BAD_BLUR).denoiser("velocity", FlowSchedule(1.0), name="blurred")
    cond = {"label": torch.zeros(args.n, dtype=torch.long)}
    noise = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64)

    rows, samples = [], {}
    print(f"{'method':<16}{'NFE':>6}{'mean log p':>12}{'p05 log p':>12}{'time s':>9}")
    for spec in METHODS:
        t0 = time.perf_counter()
        x, info = solvers.sample(good, noise, cond, guidance=spec, bad=bad, solver=args.solver, steps=args.steps)
        dt = time.perf_counter() - t0
        logp = truth.classes[0].log_prob(x)
        row = {
            "method": spec,
            "nfe": info.nfe,
            "mean_logp": logp.mean().item(),
            "p05_logp": logp.quantile(0.05).item(),
            "seconds": dt,
        }
        rows.append(row)
        samples[spec] = x
        print(f"{spec:<16}{info.nfe:>6}{row['mean_logp']:>12.3f}{row['p05_logp']:>12.3f}{dt:>9.2f}")

    with open(args.out / "quickstart.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"wrote {args.out / 'quickstart.csv'} (install matplotlib for the plot)")
        return
    fig, axes = plt.subplots(1, len(METHODS) + 1, figsize=(3 * (len(METHODS) + 1), 3), sharex=True, sharey=True)
    ref = truth.classes[0].sample(args.n, torch.Generator().manual_seed(1))
    for ax, (title, pts) in zip(axes, [("ground truth", ref), *samples.items()], strict=True):
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(-2, 2)
        ax.set_ylim(-2, 2)
    fig.tight_layout()
    fig.savefig(args.out / "quickstart.png", dpi=110)
    print(f"wrote {args.out / 'quickstart.csv'} and {args.out / 'quickstart.png'}")


if __name__ == "__main__":
    main()
