"""``DenoiserModule``: the base class of trainable networks that speak the denoiser protocol.

A :class:`DenoiserModule` is an ``nn.Module`` whose ``forward(x, t, cond)`` returns the raw prediction, and which
carries the protocol facts a sampler needs (:attr:`prediction`, :attr:`schedule`, :attr:`condition_names`,
:attr:`amg_weight`) plus its own constructor arguments (:attr:`arch_kwargs`) so that it can be saved and rebuilt by
:func:`v2a_sampler.models.save_pretrained` / :func:`v2a_sampler.models.from_pretrained`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.denoisers import Cond, FlowSchedule, Prediction, Schedule, check_drop

_UNSET: Any = object()


class DenoiserModule(nn.Module):
    """An ``nn.Module`` that is a :class:`~v2a_sampler.denoisers.Denoiser`.

    Subclasses implement ``forward(x, t, cond)`` and set ``self.arch_kwargs`` (the JSON-serialisable keyword
    arguments that rebuild the same architecture) and ``self.condition_names``. Dropping a condition replaces it by
    ``None`` by default; a subclass maps ``None`` to its learned null (see :class:`~v2a_sampler.models.mlp.ToyMLP`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.prediction: Prediction = Prediction.VELOCITY
        self.schedule: Schedule = FlowSchedule(1.0)
        self.condition_names: tuple[str, ...] = ()
        self.amg_weight: float | None = None
        self.arch_kwargs: dict[str, Any] = {}
        self.config: dict[str, Any] = {}  # the full config.json when loaded by from_pretrained

    def set_protocol(
        self,
        prediction: Prediction | str | None = None,
        schedule: Schedule | Mapping[str, Any] | None = None,
        amg_weight: float | None = _UNSET,
    ) -> DenoiserModule:
        """Set the prediction type, schedule and/or AMG weight in place; returns ``self``."""
        if prediction is not None:
            self.prediction = Prediction.parse(prediction)
        if schedule is not None:
            self.schedule = schedule if isinstance(schedule, Schedule) else Schedule.from_dict(schedule)
        if amg_weight is not _UNSET:
            if amg_weight is not None and not float(amg_weight) < 1.0:
                raise ValueError(f"amg_weight must be < 1 (or None), got {amg_weight}")
            self.amg_weight = None if amg_weight is None else float(amg_weight)
        return self

    def drop(self, cond: Cond | None, names: Collection[str]) -> Cond | None:
        """``cond`` with the named conditions replaced by ``None`` (the module's null for them)."""
        names = check_drop(names, self.condition_names)
        if not names:
            return cond
        if cond is None:
            return None
        out = dict(cond)
        for n in names:
            out[n] = None
        return out

    def protocol_dict(self) -> dict[str, Any]:
        """The protocol facts as JSON-ready values."""
        return {
            "prediction": self.prediction.value,
            "schedule": self.schedule.to_dict(),
            "condition_names": list(self.condition_names),
            "amg_weight": self.amg_weight,
        }

    def extra_repr(self) -> str:
        return (
            f"prediction={self.prediction.value}, schedule={self.schedule}, conditions={self.condition_names}, "
            f"amg_weight={self.amg_weight}"
        )


# ---------------------------------------------------------------------------------------------------------------
# Vectorised schedule terms (training draws a different time per sample)
# ---------------------------------------------------------------------------------------------------------------


def schedule_terms(
    schedule: Schedule, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(alpha, sigma, d_alpha, d_sigma)`` at each entry of ``t`` (same shape and dtype as ``t``).

    Closed form for :class:`FlowSchedule`; other schedules are evaluated entry by entry.
    """
    if isinstance(schedule, FlowSchedule):
        tau = t if schedule.noise_at == 1.0 else 1.0 - t
        sign = 1.0 if schedule.noise_at == 1.0 else -1.0
        return 1.0 - tau, tau, torch.full_like(t, -sign), torch.full_like(t, sign)
    rows = [schedule.terms(float(v)) for v in t.detach().flatten().cpu().tolist()]
    cols = [[getattr(r, k) for r in rows] for k in ("alpha", "sigma", "d_alpha", "d_sigma")]
    out = [torch.tensor(c, dtype=t.dtype, device=t.device).reshape(t.shape) for c in cols]
    return out[0], out[1], out[2], out[3]


def time_from_noise_level(schedule: Schedule, level: torch.Tensor) -> torch.Tensor:
    """Model time at each noise level ``sigma / (alpha + sigma)`` in ``level`` (vectorised for flow schedules)."""
    if isinstance(schedule, FlowSchedule):
        return level if schedule.noise_at == 1.0 else 1.0 - level
    vals = [schedule.t_from_noise_level(float(v)) for v in level.detach().flatten().cpu().tolist()]
    return torch.tensor(vals, dtype=level.dtype, device=level.device).reshape(level.shape)


class AttentionCore(nn.Module):
    """Scaled dot-product attention ``softmax(q k^T / sqrt(d)) v`` on ``[B, heads, tokens, d]`` tensors, as a
    parameterless module: the place where :mod:`v2a_sampler.models.perturb` hooks attention perturbations
    (identity attention, attention dropout, blurred queries). Adding it changes no checkpoint key."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)
