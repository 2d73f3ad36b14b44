"""Flow-matching objectives: noise-level sampling, condition dropout, targets and MGAudio's AMG target.

For data ``x0``, noise ``eps`` and a model time ``t``, the noisy state is ``x_t = alpha(t) x0 + sigma(t) eps`` and the
regression target is the model's prediction type evaluated at the true ``(x0, eps)`` (for flow velocity models
``d x_t / d t``, i.e. ``eps - x0`` with noise at t=1). The loss is the mean squared error to that target.

AMG (MGAudio, arXiv 2510.24103): the target of a sample whose conditions are kept becomes

    u' = u + w * sg(u_theta(x_t, c, t) - u_theta(x_t, null, t))

where ``sg`` stops gradients and ``null`` drops every condition. Because every prediction type is affine in the others
at a fixed ``(x_t, t)``, the same formula applies to eps, v and x0 models. Samples whose conditions were all dropped
get the plain target (their guidance term is zero).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..core.denoisers import Cond, Prediction, ScheduleTerms, from_x0_eps
from ..models.base import schedule_terms, time_from_noise_level

#: Noise levels are drawn in [LEVEL_EPS, 1 - LEVEL_EPS]: velocity targets of some schedules blow up at the ends.
LEVEL_EPS = 1e-5
T_SAMPLINGS = ("logit_normal", "uniform")


def sample_noise_level(
    n: int,
    kind: str = "logit_normal",
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``n`` noise levels ``sigma / (alpha + sigma)`` in (0, 1) (float32).

    ``logit_normal``: ``sigmoid(N(mean, std))`` (SD3, AV-Link). Since ``logit(level) = log(sigma / alpha)``, this is
    EDM's log-normal noise distribution with ``P_mean = mean`` and ``P_std = std``. ``uniform``: ``U(0, 1)``.
    """
    if kind == "logit_normal":
        z = torch.randn(n, generator=generator, dtype=torch.float32).to(device)
        level = torch.sigmoid(mean + std * z)
    elif kind == "uniform":
        level = torch.rand(n, generator=generator, dtype=torch.float32).to(device)
    else:
        raise ValueError(f"unknown t sampling {kind!r}; expected one of {T_SAMPLINGS}")
    return level.clamp(LEVEL_EPS, 1.0 - LEVEL_EPS)


def noisy_state(
    schedule: Any, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, ScheduleTerms]:
    """``x_t = alpha(t) x0 + sigma(t) eps`` and the per-sample schedule terms (tensors shaped to broadcast)."""
    shape = (-1,) + (1,) * (x0.ndim - 1)
    a, s, da, ds = (v.to(x0.dtype).reshape(shape) for v in schedule_terms(schedule, t))
    terms = ScheduleTerms(alpha=a, sigma=s, d_alpha=da, d_sigma=ds)  # type: ignore[arg-type]
    return a * x0 + s * eps, terms


def flow_target(
    prediction: Prediction | str, x0: torch.Tensor, eps: torch.Tensor, terms: ScheduleTerms
) -> torch.Tensor:
    """The prediction of type ``prediction`` that corresponds to the true ``(x0, eps)``."""
    return from_x0_eps(prediction, x0, eps, terms)


def amg_target(target: torch.Tensor, pred_cond: torch.Tensor, pred_null: torch.Tensor, weight: float) -> torch.Tensor:
    """MGAudio's AMG target ``u + w * sg(u_theta(x_t, c, t) - u_theta(x_t, null, t))``."""
    return target + float(weight) * (pred_cond.detach() - pred_null.detach())


def amg_weight_at(iteration: int, weight: float | None, warmup: int = 0, ramp: int = 0) -> float:
    """The AMG weight used at (0-based) ``iteration``: 0 for ``warmup`` iterations, then a linear ramp to ``weight``.

    MGAudio (as summarised in our paper notes) does not state a warm-up schedule; this one is our choice. The
    guidance term ``u(c) - u(null)`` of a freshly initialised network is noise, so distilling it from the start
    would bootstrap from garbage; we first train plainly, then blend the term in over ``ramp`` iterations.
    """
    if not weight:
        return 0.0
    if iteration < warmup:
        return 0.0
    if ramp <= 0:
        return float(weight)
    return float(weight) * min(1.0, (iteration - warmup + 1) / ramp)


# ---------------------------------------------------------------------------------------------------------------
# Condition dropout
# ---------------------------------------------------------------------------------------------------------------


def drop_masks(
    batch: int,
    names: Sequence[str],
    p_drop: float | Mapping[str, float],
    p_drop_all: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Per-row boolean masks ``{name: BoolTensor[batch]}`` of the conditions to drop.

    Each condition is dropped independently with its own probability (``p_drop`` as one float for all or a
    ``{name: p}`` mapping, missing names never dropped); in addition, a fraction ``p_drop_all`` of the rows drops every
    condition together (the unconditional branch of joint multi-condition CFG).
    """
    probs = {n: float(p_drop) for n in names} if not isinstance(p_drop, Mapping) else dict(p_drop)
    unknown = set(probs) - set(names)
    if unknown:
        raise ValueError(f"p_drop names unknown condition(s) {sorted(unknown)}; model conditions: {tuple(names)}")
    for n, p in [*probs.items(), ("<all>", p_drop_all)]:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"drop probability for {n} must be in [0, 1], got {p}")
    drop_all = torch.rand(batch, generator=generator) < p_drop_all
    return {n: (torch.rand(batch, generator=generator) < probs.get(n, 0.0)) | drop_all for n in names}


def drop_groups(masks: Mapping[str, torch.Tensor], batch: int) -> list[tuple[torch.Tensor, frozenset[str]]]:
    """Split rows by drop pattern: ``[(row indices, names dropped for those rows), ...]`` (deterministic order)."""
    names = list(masks)
    if not names:
        return [(torch.arange(batch), frozenset())]
    code = torch.zeros(batch, dtype=torch.long)
    for i, n in enumerate(names):
        code |= masks[n].long() << i
    groups = []
    for value in torch.unique(code).tolist():
        idx = torch.nonzero(code == value).flatten()
        groups.append((idx, frozenset(n for i, n in enumerate(names) if value >> i & 1)))
    return groups


def index_cond(cond: Cond | None, idx: torch.Tensor, batch: int) -> Cond | None:
    """The rows ``idx`` of every batched condition value (tensors and lists with ``batch`` rows); others unchanged."""
    if cond is None:
        return None
    out: dict[str, Any] = {}
    for k, v in cond.items():
        if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == batch:
            out[k] = v[idx.to(v.device)]
        elif isinstance(v, (list, tuple)) and len(v) == batch:
            out[k] = type(v)(v[i] for i in idx.tolist())
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class LossOutput:
    """One training loss evaluation."""

    loss: torch.Tensor  # scalar with gradient
    x_t: torch.Tensor
    t: torch.Tensor
    target: torch.Tensor  # the (AMG-modified) regression target, row-aligned with the batch
    dropped: list[frozenset[str]]  # per group, the dropped conditions


def flow_matching_loss(
    model: Any,
    x0: torch.Tensor,
    cond: Cond | None,
    eps: torch.Tensor,
    t: torch.Tensor,
    masks: Mapping[str, torch.Tensor] | None = None,
    amg_weight: float = 0.0,
) -> LossOutput:
    """MSE between ``model(x_t, t, cond)`` and the (AMG) flow-matching target, with per-row condition dropout.

    Rows are grouped by drop pattern and each group is evaluated with ``model.drop(cond, names)``, so any module
    that speaks the denoiser protocol works. With ``amg_weight > 0`` the AMG term reuses the conditional forward
    pass (detached) and adds one gradient-free forward pass with every condition dropped.
    """
    batch = x0.shape[0]
    x_t, terms = noisy_state(model.schedule, x0, eps, t)
    target = flow_target(model.prediction, x0, eps, terms)
    full_target = target.detach().clone()
    all_names = frozenset(model.condition_names)
    total = x0.new_zeros(())
    dropped_list = []
    for idx, dropped in drop_groups(masks or {}, batch):
        c = index_cond(cond, idx, batch)
        c_used = model.drop(c, dropped) if dropped else c
        pred = model(x_t[idx], t[idx], c_used)
        tgt = target[idx]
        if amg_weight and all_names and dropped != all_names:
            with torch.no_grad():
                pred_null = model(x_t[idx], t[idx], model.drop(c, all_names))
            tgt = amg_target(tgt, pred, pred_null, amg_weight)
            full_target[idx] = tgt
        total = total + (pred.float() - tgt.float()).square().sum()
        dropped_list.append(dropped)
    loss = total / x0.numel()
    return LossOutput(loss=loss, x_t=x_t, t=t, target=full_target, dropped=dropped_list)


def draw_batch_noise(
    x0: torch.Tensor,
    model: Any,
    kind: str,
    mean: float,
    std: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise ``eps`` like ``x0`` and model times ``t`` (one per row) for a training batch."""
    level = sample_noise_level(x0.shape[0], kind, mean, std, generator, device=x0.device)
    t = time_from_noise_level(model.schedule, level)
    eps = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(device=x0.device, dtype=x0.dtype)
    return eps, t


__all__ = [
    "LEVEL_EPS",
    "LossOutput",
    "T_SAMPLINGS",
    "amg_target",
    "amg_weight_at",
    "draw_batch_noise",
    "drop_groups",
    "drop_masks",
    "flow_matching_loss",
    "flow_target",
    "index_cond",
    "noisy_state",
    "sample_noise_level",
]
