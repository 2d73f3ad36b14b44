"""Sample-quality metrics of the 2D lab, all measured against the exact class distribution of :class:`Toy2D`.

* ``outlier_rate``: fraction of samples whose exact class log density is below the :data:`OUTLIER_QUANTILE`
  quantile of the log density of true samples of that class ("very low density": rarer than 1 in 1000 true samples).
* ``precision`` / ``recall``: improved precision and recall (Kynkäänniemi et al., 2019). The manifold of a point set is
  the union of balls around its points with radius the distance to their :data:`KNN_K`-th nearest neighbour;
  precision = fraction of samples inside the true manifold, recall = fraction of true points inside the sample
  manifold.
* ``coverage``: fraction of the fractal's leaves (finest branches) that receive at least one sample. A sample lands on
  the branch of its most responsible mixture component, if it is within :data:`COVER_MAHALANOBIS` standard deviations
  of that component (so far-off outliers cover nothing).
* ``sliced_w2``: sliced Wasserstein-2 distance to an equally large set of true samples over :data:`SLICES` fixed
  random directions.
* ``mean_logp``: mean exact class log density of the samples (dominated by outliers, whose density is tiny).

:func:`velocity_error` measures a model itself rather than its samples: its squared error against the exact
velocity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .toy2d import Toy2D

#: Outlier threshold: the log density below which only this fraction of true samples fall.
OUTLIER_QUANTILE = 1e-3
#: True samples used to estimate the outlier threshold.
THRESHOLD_SAMPLES = 1 << 16
#: Neighbourhood size of the k-NN manifolds (the value of Kynkäänniemi et al.).
KNN_K = 3
#: A sample covers a component's branch if it lies within this many standard deviations (Mahalanobis) of it.
COVER_MAHALANOBIS = 3.0
#: Random projection directions of the sliced Wasserstein distance.
SLICES = 256
#: Rows per block in pairwise-distance computations (bounds memory).
_BLOCK = 2048

METRIC_NAMES = ("outlier_rate", "precision", "recall", "coverage", "sliced_w2", "mean_logp")
#: Noise levels (flow time, noise at t = 1) at which :func:`velocity_error` compares a model to the exact denoiser.
ERROR_LEVELS = (0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.95)


def outlier_threshold(toy: Toy2D, label: int, seed: int = 0, n: int = THRESHOLD_SAMPLES) -> float:
    """The :data:`OUTLIER_QUANTILE` quantile of the exact class log density under true samples of ``label``."""
    x, _ = toy.sample(n, label, torch.Generator().manual_seed(seed))
    logp = toy.log_prob(x, label)
    return float(torch.quantile(logp, OUTLIER_QUANTILE))


def _kth_nn_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of every point of ``x`` to its k-th nearest other point of ``x``."""
    out = []
    for block in x.split(_BLOCK):
        d = torch.cdist(block, x)
        out.append(d.kthvalue(k + 1, dim=1).values)  # +1: the point itself is at distance 0
    return torch.cat(out)


def _inside(points: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """Whether each point lies in the union of balls ``(centers, radii)``."""
    out = []
    for block in points.split(_BLOCK):
        out.append((torch.cdist(block, centers) <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(out)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = KNN_K) -> tuple[float, float]:
    """Improved precision and recall of ``fake`` against ``real`` (k-NN manifolds)."""
    real, fake = real.to(torch.float64), fake.to(torch.float64)
    precision = _inside(fake, real, _kth_nn_radius(real, k)).double().mean()
    recall = _inside(real, fake, _kth_nn_radius(fake, k)).double().mean()
    return float(precision), float(recall)


def sliced_w2(a: torch.Tensor, b: torch.Tensor, slices: int = SLICES, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance between two equally large point sets."""
    if a.shape != b.shape:
        raise ValueError(f"sliced_w2 needs equally shaped sets, got {tuple(a.shape)} and {tuple(b.shape)}")
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], slices, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa = (a.to(torch.float64) @ dirs).sort(dim=0).values
    pb = (b.to(torch.float64) @ dirs).sort(dim=0).values
    return math.sqrt(float((pa - pb).square().mean()))


def leaf_coverage(toy: Toy2D, x: torch.Tensor, label: int) -> float:
    """Fraction of the leaf branches of class ``label`` that receive at least one (non-outlying) sample."""
    comp, dist = toy.assign(x, label)
    branch = toy.component_branch[label][comp[dist <= COVER_MAHALANOBIS]]
    leaves = toy.leaf_branches(label)
    hit = torch.isin(leaves, branch.unique())
    return float(hit.double().mean())


def evaluate(
    toy: Toy2D, samples: torch.Tensor, label: int, reference: torch.Tensor, threshold: float
) -> dict[str, float]:
    """All metrics of ``samples`` of class ``label`` against true ``reference`` samples (same count)."""
    x = samples.to(torch.float64)
    finite = torch.isfinite(x).all(dim=1)
    x_ok = x[finite]
    logp = toy.log_prob(x_ok, label)
    logp_all = torch.cat([logp, torch.full((int((~finite).sum()),), -math.inf, dtype=torch.float64)])
    precision, recall = precision_recall(reference, x_ok)
    return {
        "outlier_rate": float((logp_all < threshold).double().mean()),
        "precision": precision,
        "recall": recall,
        "coverage": leaf_coverage(toy, x_ok, label),
        "sliced_w2": sliced_w2(x_ok, reference[: x_ok.shape[0]]) if x_ok.shape[0] else math.inf,
        "mean_logp": float(logp_all.mean()),
    }


@torch.no_grad()
def velocity_error(
    model: Any, toy: Toy2D, n: int = 2048, levels: Sequence[float] = ERROR_LEVELS, seed: int = 0, drop: bool = False
) -> float:
    """Mean squared error between a flow-velocity model and the exact velocity, averaged over noise ``levels``.

    This is the reducible part of the flow-matching loss (``loss = error + irreducible variance``), free of the
    target noise, so it separates models whose losses differ only slightly. ``drop=True`` compares the
    unconditional branches.
    """
    exact = toy.denoiser(model.prediction, model.schedule)
    gen = torch.Generator().manual_seed(seed)
    x0, labels = toy.sample(n, generator=gen)
    eps = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    cond = None if drop else {"label": labels}
    dtype = next(model.parameters()).dtype if isinstance(model, torch.nn.Module) else torch.float32
    total = 0.0
    for level in levels:
        t = model.schedule.t_from_noise_level(float(level))
        terms = model.schedule.terms(t)
        x_t = terms.alpha * x0 + terms.sigma * eps
        t_vec = torch.full((n,), t, dtype=torch.float64)
        pred = model(x_t.to(dtype), t_vec.to(dtype), cond).to(torch.float64)
        total += float((pred - exact(x_t, t_vec, cond)).square().sum(1).mean())
    return total / len(levels)
