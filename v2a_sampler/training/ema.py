"""Exponential moving averages of model weights.

Two profiles:

* **power function** (Karras et al., 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models"): after
  ``n`` iterations the decay is ``beta_n = (1 - 1/n)^(gamma + 1)``; the averaging window is a fixed *fraction* of the
  run, set by its relative standard deviation ``std`` (``std**2 = (gamma+1) / ((gamma+2)^2 (gamma+3))``). Early
  checkpoints are therefore not biased toward the initialisation, which matters when an earlier checkpoint is used
  as a bad model.
* **constant decay**: ``beta = decay`` (classic EMA).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

#: Upper end of the gamma search; gamma >= 0, where the profile width decreases monotonically in gamma.
_GAMMA_MAX = 1e7
_BISECT_STEPS = 200


def power_std(gamma: float) -> float:
    """Relative standard deviation of the power-function EMA profile with exponent ``gamma``."""
    return ((gamma + 1.0) / ((gamma + 2.0) ** 2 * (gamma + 3.0))) ** 0.5


def power_gamma(std: float) -> float:
    """The exponent ``gamma >= 0`` whose profile has relative standard deviation ``std`` in (0, sqrt(1/12)]."""
    max_std = power_std(0.0)
    if not 0.0 < std <= max_std:
        raise ValueError(f"power EMA std must be in (0, {max_std:.4f}], got {std}")
    lo, hi = 0.0, math.log1p(_GAMMA_MAX)  # bisect on u = log(1 + gamma)
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        if power_std(math.expm1(mid)) > std:
            lo = mid
        else:
            hi = mid
    return math.expm1(0.5 * (lo + hi))


class EMA:
    """A frozen copy of ``model`` whose parameters track a moving average (buffers are copied).

    Args:
        model: the trained module (its current weights initialise the average).
        std: relative std of a power-function profile (e.g. 0.05), or
        decay: a constant decay (e.g. 0.999). Give exactly one.
    """

    def __init__(self, model: nn.Module, std: float | None = None, decay: float | None = None) -> None:
        if (std is None) == (decay is None):
            raise ValueError("EMA needs exactly one of std (power-function profile) or decay (constant)")
        if decay is not None and not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.std = std
        self.decay = decay
        self.gamma = power_gamma(std) if std is not None else None
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def beta(self, step: int) -> float:
        """Decay applied after ``step`` completed iterations (``step >= 1``)."""
        if self.gamma is None:
            return float(self.decay)
        return (1.0 - 1.0 / max(step, 1)) ** (self.gamma + 1.0)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold ``model``'s current weights into the average after ``step`` completed iterations."""
        beta = self.beta(step)
        for p_ema, p in zip(self.module.parameters(), model.parameters(), strict=True):
            p_ema.lerp_(p.detach().to(p_ema.dtype), 1.0 - beta)
        for b_ema, b in zip(self.module.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)

    def describe(self) -> dict[str, float | str]:
        if self.gamma is not None:
            return {"kind": "power", "std": float(self.std), "gamma": self.gamma}
        return {"kind": "constant", "decay": float(self.decay)}
