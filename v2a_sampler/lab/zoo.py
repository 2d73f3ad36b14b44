"""Tools of the 2D lab's bad-model zoo (``examples/toy2d/bad_models.py``): bad models made by perturbing the good
one, the per-bad-model measurement (diagnostic + autoguidance outcome), and honest correlation statistics.

Perturbations (no training): :func:`perturbed_copy` copies a lab network with
* **dropout at sampling**: every hidden layer's input is dropped with probability ``p`` (inverted dropout, a fresh
  mask at every network call, drawn from a seeded generator);
* **a skipped layer**: one hidden-to-hidden layer replaced by the identity.

(Unlike :func:`v2a_sampler.models.perturb.perturbed`, which hooks a shared network with *fixed* seeded patterns so
that a batch equals its rows, this copy draws fresh dropout masks at every call: the stochastic "dropout at
sampling" bad model of the zoo.)

Statistics: :func:`correlation` gives Pearson's r and Spearman's rho with two-sided permutation p-values and
percentile bootstrap intervals (NumPy only).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..diagnostics import diagnose, diagnose_trajectories
from . import experiment as E
from .families import Family, draw
from .metrics import METRIC_NAMES, evaluate, outlier_threshold

#: Permutations and bootstrap resamples of :func:`correlation`.
PERMUTATIONS = 10_000
BOOTSTRAPS = 5_000
#: Levels at or below this sigma / alpha count as "low noise" in :func:`measure`'s ``*_alignment_low``.
LOW_NOISE = 0.1
#: Upper clip of the w* at which :func:`measure` runs AG (and lower clip 1: below it AG would guide toward the bad
#: model).
W_STAR_MAX = 4.0


class SeededDropout(nn.Module):
    """Inverted dropout that is active in eval mode too, with masks from its own seeded generator."""

    def __init__(self, p: float, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.seed = seed
        self.gen = torch.Generator().manual_seed(seed)

    def reset(self) -> None:
        """Restart the mask sequence (so repeated runs are identical)."""
        self.gen.manual_seed(self.seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0:
            return x
        keep = torch.rand(x.shape, generator=self.gen, dtype=torch.float32).to(x.device) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)


def hidden_layers(model: nn.Module) -> tuple[nn.Module, list[int]]:
    """The container of a lab network's hidden-to-hidden layers and their indices in it.

    ``ToyMLP``: ``model.hidden`` (all); ``EDM2ToyNet``: ``model.layers`` (the linear layers after the input one).
    """
    from ..models.edm2_toy import EDM2ToyNet, MPLinear
    from ..models.mlp import ToyMLP

    if isinstance(model, ToyMLP):
        return model.hidden, list(range(len(model.hidden)))
    if isinstance(model, EDM2ToyNet):
        return model.layers, [i for i, m in enumerate(model.layers) if isinstance(m, MPLinear) and i > 0]
    raise TypeError(f"perturbed_copy() knows ToyMLP and EDM2ToyNet, got {type(model).__name__}")


def perturbed_copy(model: nn.Module, dropout: float = 0.0, skip: Sequence[int] = (), seed: int = 0) -> nn.Module:
    """A copy of a lab network with dropout before every hidden layer and/or hidden layers ``skip`` (0-based among
    the hidden-to-hidden layers) replaced by the identity."""
    out = copy.deepcopy(model).eval().requires_grad_(False)
    container, idx = hidden_layers(out)
    for k, i in enumerate(idx):
        if k in skip:
            container[i] = nn.Identity()
        elif dropout > 0.0:
            container[i] = nn.Sequential(SeededDropout(dropout, seed + k), container[i])
    return out


def reset_dropout(modules: Sequence[nn.Module]) -> None:
    """Restart every :class:`SeededDropout` mask sequence inside ``modules`` (so repeated runs are identical)."""
    for m in modules:
        for sub in m.modules():
            if isinstance(sub, SeededDropout):
                sub.reset()


# ---------------------------------------------------------------------------------------------------------------
# One bad model: diagnostic and AG outcome
# ---------------------------------------------------------------------------------------------------------------


def measure(
    family: Family,
    good: Any,
    bad: Any,
    exact: Any,
    weights: Sequence[float],
    n_diag: int,
    n_traj: int,
    n_samples: int,
    seed: int = 0,
    stochastic: Sequence[nn.Module] = (),
) -> dict[str, Any]:
    """The diagnostic (on data and on unguided trajectories) and AG's sample metrics at ``weights``, at the
    data-measured mean ``w*`` (clipped to [1, :data:`W_STAR_MAX`]) and with the per-level ``w*(t)`` schedule for one
    bad model; metric keys are ``ag<w>_<metric>`` (e.g. ``ag2_outlier_rate``, ``agwstar_recall``,
    ``agsched_coverage``). ``stochastic``: modules with :class:`SeededDropout` inside, restarted before every use."""
    x0, labels = family.held_out(n_diag, seed)
    grid = family.grid(good.schedule)
    levels = grid[:-1].tolist()
    reset_dropout(stochastic)
    data_rep = diagnose(good, bad, x0, {"label": labels}, levels=levels, exact=exact, seed=seed)
    tgt_rep = data_rep.reestimate("targets")
    noise = torch.cat([family.noise(n_traj, c, torch.Generator().manual_seed(seed + 1 + c)) for c in family.classes])
    tlabels = torch.tensor(family.classes).repeat_interleave(n_traj)
    reset_dropout(stochastic)
    traj_rep = diagnose_trajectories(good, bad, exact, noise, {"label": tlabels}, solver=E.SOLVER, timesteps=grid)
    out: dict[str, Any] = {}
    for prefix, rep in (("data", data_rep), ("traj", traj_rep)):
        s = rep.summary_stats()
        out[f"{prefix}_alignment"] = s["alignment_mean"]
        out[f"{prefix}_alignment_lo"] = s["alignment_mean_lo"]
        out[f"{prefix}_alignment_hi"] = s["alignment_mean_hi"]
        out[f"{prefix}_w_star"] = s["w_star_mean"]
        out[f"{prefix}_error_ratio"] = s["error_ratio_mean"]
        out[f"{prefix}_rel_reduction"] = s["rel_reduction_mean"]
        out[f"{prefix}_guided_error_2"] = s["guided_error_ratio_2_mean"]
        low = [r.cosine for r in rep.rows if r.ratio <= LOW_NOISE]
        out[f"{prefix}_alignment_low"] = sum(low) / len(low)
    st = tgt_rep.summary_stats()
    out["targets_w_star"] = st["w_star_mean"]
    out["targets_w_star_lo"], out["targets_w_star_hi"] = st["w_star_mean_lo"], st["w_star_mean_hi"]
    out["w_star_used"] = min(max(out["data_w_star"], 1.0), W_STAR_MAX)
    runs: list[tuple[str, Any]] = [(f"ag{w:g}", float(w)) for w in weights] + [("agwstar", out["w_star_used"])]
    runs.append(("agsched", data_rep.w_star_guidance(clip=(0.0, W_STAR_MAX))))
    for key, w in runs:
        reset_dropout(stochastic)
        out.update({f"{key}_{k}": v for k, v in ag_metrics(family, good, bad, w, n_samples, seed).items()})
    return out


def ag_metrics(family: Family, good: Any, bad: Any, w: float | Any, n: int, seed: int = 0) -> dict[str, float]:
    """The lab metrics of AG at weight ``w`` (``w = 1`` is unguided; a guidance object, e.g. a ``w*(t)`` schedule,
    is used as given), averaged over the family's classes."""
    if isinstance(w, (int, float)):
        method = E.Method("ag", "none" if w == 1.0 else f"ag({w})", bad=None if w == 1.0 else "bad")
    else:
        method = E.Method("ag", w, bad="bad")
    return sample_metrics(family, {"good": good, "bad": bad}, method, n, seed)


def sample_metrics(
    family: Family, models: Mapping[str, Any], method: E.Method, n: int, seed: int = 0
) -> dict[str, float]:
    """One method's lab metrics with the experiment's seeding (noise seed ``1000 seed + class``)."""
    acc: dict[str, list[float]] = {k: [] for k in METRIC_NAMES}
    for c in family.classes:
        ref = family.toy.sample(n, c, torch.Generator().manual_seed(E.REFERENCE_SEED + 1000 * seed + c))[0]
        x, _ = draw(family, method, models, c, n, 1000 * seed + c)
        for k, v in evaluate(family.toy, x, c, ref, _threshold(family, c)).items():
            acc[k].append(v)
    return {k: sum(v) / len(v) for k, v in acc.items()}


_THRESHOLDS: dict[tuple[str, int], float] = {}


def _threshold(family: Family, label: int) -> float:
    key = (family.name, label)
    if key not in _THRESHOLDS:
        _THRESHOLDS[key] = outlier_threshold(family.toy, label)
    return _THRESHOLDS[key]


# ---------------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------------


def _ranks(v: np.ndarray) -> np.ndarray:
    order = v.argsort(kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=float)
    for val in np.unique(v):  # average ranks of ties
        sel = v == val
        if sel.sum() > 1:
            ranks[sel] = ranks[sel].mean()
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else math.nan


def correlation(x: Sequence[float], y: Sequence[float], seed: int = 0) -> dict[str, float]:
    """Pearson's r and Spearman's rho of paired values, each with a two-sided permutation p-value
    (:data:`PERMUTATIONS` shuffles of ``y``) and a 95 % percentile bootstrap interval (:data:`BOOTSTRAPS`
    resamples of the pairs). Non-finite pairs are dropped; ``n`` is the number used."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    n = len(xa)
    out: dict[str, float] = {"n": float(n)}
    if n < 4:
        return out
    rng = np.random.default_rng(seed)
    for name, fx, fy in (("pearson", xa, ya), ("spearman", _ranks(xa), _ranks(ya))):
        r = _pearson(fx, fy)
        out[name] = r
        if not math.isfinite(r):  # a constant variable: no correlation to speak of
            out[f"{name}_p"] = out[f"{name}_lo"] = out[f"{name}_hi"] = math.nan
            continue
        perm = np.array([_pearson(fx, rng.permutation(fy)) for _ in range(PERMUTATIONS)])
        out[f"{name}_p"] = float((np.sum(np.abs(perm) >= abs(r) - 1e-12) + 1) / (PERMUTATIONS + 1))
        boots = []
        for _ in range(BOOTSTRAPS):
            idx = rng.integers(0, n, n)
            bx, by = xa[idx], ya[idx]
            if name == "spearman":
                bx, by = _ranks(bx), _ranks(by)
            boots.append(_pearson(bx, by))
        b = np.array([v for v in boots if math.isfinite(v)])
        lo, hi = (float(np.quantile(b, 0.025)), float(np.quantile(b, 0.975))) if len(b) else (math.nan, math.nan)
        out[f"{name}_lo"], out[f"{name}_hi"] = lo, hi
    return out
