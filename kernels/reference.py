"""Plain torch reference implementations (the ground truth for any fused kernel)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def combine(
    preds: Sequence[torch.Tensor], coeffs: Sequence[float], out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``sum_i coeffs[i] * preds[i]`` accumulated in at least float32.

    Args:
        preds: k tensors of one shape (any floating dtype, may differ).
        coeffs: k Python floats.
        out_dtype: dtype of the result; defaults to the accumulation dtype.
    """
    if len(preds) != len(coeffs):
        raise ValueError(f"combine: {len(preds)} predictions but {len(coeffs)} coefficients")
    if not preds:
        raise ValueError("combine: need at least one prediction")
    shape = preds[0].shape
    for p in preds[1:]:
        if p.shape != shape:
            raise ValueError(f"combine: shape mismatch {tuple(p.shape)} vs {tuple(shape)}")
    acc_dtype = accumulation_dtype(reduce(torch.promote_types, [p.dtype for p in preds]))
    out = preds[0].to(acc_dtype) * float(coeffs[0])
    for p, c in zip(preds[1:], coeffs[1:], strict=True):
        out.add_(p.to(acc_dtype), alpha=float(c))
    return out if out_dtype is None else out.to(out_dtype)


def check_operands(op: str, named: Sequence[tuple[str, torch.Tensor]]) -> None:
    """Raise ``TypeError``/``ValueError`` unless every named operand is a floating tensor with the first one's shape
    (no broadcasting) and device."""
    ref_name, ref = named[0]
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating tensor, got {t.dtype}")
        if t.shape != ref.shape:
            raise ValueError(f"{op}: shape mismatch, {name} has {tuple(t.shape)} but {ref_name} has {tuple(ref.shape)}")
        if t.device != ref.device:
            raise ValueError(f"{op}: device mismatch, {name} is on {t.device} but {ref_name} is on {ref.device}")


def check_step_inputs(
    op: str,
    x: torch.Tensor,
    preds: Sequence[torch.Tensor],
    coeffs: Sequence[float],
    u_old: float,
    x0_old: torch.Tensor | None,
    u_noise: float,
    noise: torch.Tensor | None,
) -> None:
    """Raise ``ValueError``/``TypeError`` unless the operands of a fused guided step agree with ``x``."""
    if len(preds) != len(coeffs):
        raise ValueError(f"{op}: {len(preds)} predictions but {len(coeffs)} coefficients")
    if not preds:
        raise ValueError(f"{op}: need at least one prediction")
    if x0_old is None and u_old != 0.0:
        raise ValueError(f"{op}: u_old={u_old} but x0_old is None")
    if noise is None and u_noise != 0.0:
        raise ValueError(f"{op}: u_noise={u_noise} but noise is None")
    named = [("x", x)] + [(f"preds[{i}]", p) for i, p in enumerate(preds)]
    named += [(n, t) for n, t in (("x0_old", x0_old), ("noise", noise)) if t is not None]
    check_operands(op, named)


def step_accumulation_dtype(x: torch.Tensor, preds: Sequence[torch.Tensor], *extra: torch.Tensor | None) -> torch.dtype:
    """float64 if any operand of the step is float64, else float32."""
    dtypes = [x.dtype] + [p.dtype for p in preds] + [t.dtype for t in extra if t is not None]
    return accumulation_dtype(reduce(torch.promote_types, dtypes))


def guided_step_reference(
    x: torch.Tensor,
    preds: Sequence[torch.Tensor],
    coeffs: Sequence[float],
    a: float,
    b: float,
    u_x: float,
    u_0: float,
    u_old: float = 0.0,
    x0_old: torch.Tensor | None = None,
    u_noise: float = 0.0,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One guided solver step; returns ``(x0, x_next)`` in ``x.dtype``.

    ``g = sum_i coeffs[i] * preds[i]``, ``x0 = a * x + b * g`` and
    ``x_next = u_x * x + u_0 * x0 + u_old * x0_old + u_noise * noise`` (the last two terms only where the tensor
    is given). Everything is computed in float32 (float64 if any operand is float64); ``x_next`` uses the unrounded
    ``x0``. ``noise`` is any extra state-shaped operand: the SDE noise, or the step's start state in a Heun
    corrector.
    """
    check_step_inputs("guided_step", x, preds, coeffs, u_old, x0_old, u_noise, noise)
    acc = step_accumulation_dtype(x, preds, x0_old, noise)
    g = preds[0].to(acc) * float(coeffs[0])
    for p, c in zip(preds[1:], coeffs[1:], strict=True):
        g.add_(p.to(acc), alpha=float(c))
    x_acc = x.to(acc)
    x0 = g.mul_(float(b)).add_(x_acc, alpha=float(a))
    x_next = x_acc * float(u_x)
    x_next.add_(x0, alpha=float(u_0))
    if x0_old is not None:
        x_next.add_(x0_old.to(acc), alpha=float(u_old))
    if noise is not None:
        x_next.add_(noise.to(acc), alpha=float(u_noise))
    return x0.to(x.dtype), x_next.to(x.dtype)
