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
