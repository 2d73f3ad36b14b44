"""Triton kernels for guided sampling: ``combine`` and the fused guided solver step.

Both are flat, elementwise kernels over a 1-D grid of ``BLOCK``-element programs. Each branch prediction is read
once, accumulation is float32 (float64 if any operand is float64) and outputs are written once. Up to
``MAX_BRANCHES`` predictions are passed as separate pointers selected by the constexpr ``K`` (no stacking copy);
more are pre-reduced in groups into an accumulation-dtype buffer.

Inputs may be non-contiguous: they are made contiguous first (a copy, so pass contiguous tensors on the hot path).
Outputs are fresh contiguous tensors. Scalars are runtime float64 kernel arguments, so new guidance weights or step
sizes never recompile; a new ``K``, dtype combination or optional-operand pattern compiles once.

Importing this module imports triton. Under ``TRITON_INTERPRET=1`` (set before this module is imported) the
kernels run on CPU tensors through the Triton interpreter, which is how the tests check them.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
import triton
import triton.language as tl

from .reference import check_operands, check_step_inputs, step_accumulation_dtype

#: Most predictions one launch reads; larger k is pre-reduced in groups of this size.
MAX_BRANCHES = 8
#: Elements per program; a power of two.
DEFAULT_BLOCK = 1024
#: Warps per program on GPUs (ignored by the interpreter).
NUM_WARPS = 4
#: Let the compiler fuse ``a * x + b`` into FMAs (one rounding instead of two); explicit because Triton's
#: default changes between versions.
FP_FUSION = True

_TL_ACC = {torch.float32: tl.float32, torch.float64: tl.float64}


def is_interpreted() -> bool:
    """Whether the kernels of this module were built for the Triton interpreter (``TRITON_INTERPRET=1``)."""
    return not isinstance(_combine_kernel, triton.runtime.JITFunction)


# ---------------------------------------------------------------------------------------------------------------
# Device code
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _scalar(value, ACC: tl.constexpr):
    """A float64 runtime scalar in the accumulation dtype."""
    return tl.full([], value, tl.float64).to(ACC)


@triton.jit
def _load(ptr, offs, mask, ACC: tl.constexpr):
    """Masked load of one block, converted to the accumulation dtype."""
    return tl.load(ptr + offs, mask=mask, other=0.0).to(ACC)


@triton.jit
def _weighted_sum(
    p0, p1, p2, p3, p4, p5, p6, p7, c0, c1, c2, c3, c4, c5, c6, c7, offs, mask, K: tl.constexpr, ACC: tl.constexpr
):
    """``sum_{i<K} c_i * p_i`` over one block; pointers and coefficients past ``K`` are never touched."""
    acc = _scalar(c0, ACC) * _load(p0, offs, mask, ACC)
    if K > 1:
        acc += _scalar(c1, ACC) * _load(p1, offs, mask, ACC)
    if K > 2:
        acc += _scalar(c2, ACC) * _load(p2, offs, mask, ACC)
    if K > 3:
        acc += _scalar(c3, ACC) * _load(p3, offs, mask, ACC)
    if K > 4:
        acc += _scalar(c4, ACC) * _load(p4, offs, mask, ACC)
    if K > 5:
        acc += _scalar(c5, ACC) * _load(p5, offs, mask, ACC)
    if K > 6:
        acc += _scalar(c6, ACC) * _load(p6, offs, mask, ACC)
    if K > 7:
        acc += _scalar(c7, ACC) * _load(p7, offs, mask, ACC)
    return acc


@triton.jit
def _combine_kernel(
    out_ptr,
    p0,
    p1,
    p2,
    p3,
    p4,
    p5,
    p6,
    p7,
    n,
    c0: tl.float64,
    c1: tl.float64,
    c2: tl.float64,
    c3: tl.float64,
    c4: tl.float64,
    c5: tl.float64,
    c6: tl.float64,
    c7: tl.float64,
    K: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``out = sum_{i<K} c_i * p_i`` elementwise."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    acc = _weighted_sum(p0, p1, p2, p3, p4, p5, p6, p7, c0, c1, c2, c3, c4, c5, c6, c7, offs, mask, K, ACC)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _guided_step_kernel(
    x0_out_ptr,
    x_next_ptr,
    x_ptr,
    p0,
    p1,
    p2,
    p3,
    p4,
    p5,
    p6,
    p7,
    old_ptr,
    noise_ptr,
    n,
    c0: tl.float64,
    c1: tl.float64,
    c2: tl.float64,
    c3: tl.float64,
    c4: tl.float64,
    c5: tl.float64,
    c6: tl.float64,
    c7: tl.float64,
    a: tl.float64,
    b: tl.float64,
    u_x: tl.float64,
    u_0: tl.float64,
    u_old: tl.float64,
    u_noise: tl.float64,
    K: tl.constexpr,
    HAS_OLD: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``x0 = a x + b sum c_i p_i``; ``x_next = u_x x + u_0 x0 [+ u_old x0_old] [+ u_noise noise]``."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = _weighted_sum(p0, p1, p2, p3, p4, p5, p6, p7, c0, c1, c2, c3, c4, c5, c6, c7, offs, mask, K, ACC)
    x = _load(x_ptr, offs, mask, ACC)
    x0 = _scalar(a, ACC) * x + _scalar(b, ACC) * g
    x_next = _scalar(u_x, ACC) * x + _scalar(u_0, ACC) * x0
    if HAS_OLD:
        x_next += _scalar(u_old, ACC) * _load(old_ptr, offs, mask, ACC)
    if HAS_NOISE:
        x_next += _scalar(u_noise, ACC) * _load(noise_ptr, offs, mask, ACC)
    tl.store(x0_out_ptr + offs, x0.to(x0_out_ptr.dtype.element_ty), mask=mask)
    tl.store(x_next_ptr + offs, x_next.to(x_next_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------------------------


def _check_launchable(tensors: Sequence[torch.Tensor], op: str) -> None:
    """Raise ``RuntimeError`` unless these tensors can be handed to the kernels as they were built."""
    device = tensors[0].device
    if device.type != "cuda" and not is_interpreted():
        raise RuntimeError(
            f"{op}: the Triton kernels need CUDA tensors, got {device}; set TRITON_INTERPRET=1 before "
            "v2a_sampler.kernels.triton_guided is imported to run them on CPU through the Triton interpreter"
        )
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise RuntimeError(f"{op}: the Triton kernels are not differentiable; call under torch.no_grad()")


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A contiguous view (or copy) of ``t``."""
    return t if t.is_contiguous() else t.contiguous()


def _padded(ptrs: list[torch.Tensor], coeffs: list[float]) -> tuple[list[torch.Tensor], list[float]]:
    """Fill the unused pointer and coefficient slots (never dereferenced) up to ``MAX_BRANCHES``."""
    pad = MAX_BRANCHES - len(ptrs)
    return ptrs + [ptrs[0]] * pad, coeffs + [0.0] * pad


def _on_device(t: torch.Tensor) -> torch.cuda.device | nullcontext[None]:
    """Make ``t``'s GPU current for the launch (triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else nullcontext()


def _grid(n: int, block: int) -> tuple[int]:
    """One program per ``block`` elements."""
    return (triton.cdiv(n, block),)


def _check_block(block: int) -> None:
    """Raise ``ValueError`` unless ``block`` is a usable ``BLOCK`` (``tl.arange`` needs a power of two)."""
    if block <= 0 or block & (block - 1):
        raise ValueError(f"block must be a positive power of two, got {block}")


def _launch_combine(
    out: torch.Tensor, preds: list[torch.Tensor], coeffs: list[float], acc: torch.dtype, block: int
) -> None:
    """One ``_combine_kernel`` launch over at most ``MAX_BRANCHES`` contiguous predictions."""
    ptrs, cs = _padded(preds, coeffs)
    with _on_device(out):
        _combine_kernel[_grid(out.numel(), block)](
            out,
            *ptrs,
            out.numel(),
            *cs,
            K=len(preds),
            ACC=_TL_ACC[acc],
            BLOCK=block,
            num_warps=NUM_WARPS,
            enable_fp_fusion=FP_FUSION,
        )


def _reduce_groups(
    preds: list[torch.Tensor], coeffs: list[float], acc: torch.dtype, block: int
) -> tuple[list[torch.Tensor], list[float]]:
    """Fold leading groups of predictions into accumulation-dtype partial sums until one launch can take the rest."""
    while len(preds) > MAX_BRANCHES:
        partial = torch.empty(preds[0].shape, dtype=acc, device=preds[0].device)
        _launch_combine(partial, preds[:MAX_BRANCHES], coeffs[:MAX_BRANCHES], acc, block)
        preds = [partial] + preds[MAX_BRANCHES:]
        coeffs = [1.0] + coeffs[MAX_BRANCHES:]
    return preds, coeffs


def combine(
    preds: Sequence[torch.Tensor],
    coeffs: Sequence[float],
    out_dtype: torch.dtype | None = None,
    *,
    block: int = DEFAULT_BLOCK,
) -> torch.Tensor:
    """Triton ``sum_i coeffs[i] * preds[i]``; same contract as :func:`reference.combine`."""
    if len(preds) != len(coeffs):
        raise ValueError(f"combine: {len(preds)} predictions but {len(coeffs)} coefficients")
    if not preds:
        raise ValueError("combine: need at least one prediction")
    first = preds[0]
    check_operands("combine", [(f"preds[{i}]", p) for i, p in enumerate(preds)])
    _check_block(block)
    _check_launchable(list(preds), "combine")
    acc = step_accumulation_dtype(first, preds)
    out = torch.empty(first.shape, dtype=acc if out_dtype is None else out_dtype, device=first.device)
    if out.numel() == 0:
        return out
    flat = [_flat(p) for p in preds]
    cs = [float(c) for c in coeffs]
    flat, cs = _reduce_groups(flat, cs, acc, block)
    _launch_combine(out, flat, cs, acc, block)
    return out


def guided_step(
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
    *,
    block: int = DEFAULT_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton fused guided step; same contract as :func:`reference.guided_step_reference`."""
    check_step_inputs("guided_step", x, preds, coeffs, u_old, x0_old, u_noise, noise)
    _check_block(block)
    optional = [t for t in (x0_old, noise) if t is not None]
    _check_launchable([x, *preds, *optional], "guided_step")
    acc = step_accumulation_dtype(x, preds, x0_old, noise)
    x0 = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    x_next = torch.empty_like(x0)
    n = x.numel()
    if n == 0:
        return x0, x_next
    xf = _flat(x)
    flat, cs = _reduce_groups([_flat(p) for p in preds], [float(c) for c in coeffs], acc, block)
    ptrs, cs = _padded(flat, cs)
    old = xf if x0_old is None else _flat(x0_old)
    nz = xf if noise is None else _flat(noise)
    with _on_device(x):
        _guided_step_kernel[_grid(n, block)](
            x0,
            x_next,
            xf,
            *ptrs,
            old,
            nz,
            n,
            *cs,
            float(a),
            float(b),
            float(u_x),
            float(u_0),
            float(u_old),
            float(u_noise),
            K=len(flat),
            HAS_OLD=x0_old is not None,
            HAS_NOISE=noise is not None,
            ACC=_TL_ACC[acc],
            BLOCK=block,
            num_warps=NUM_WARPS,
            enable_fp_fusion=FP_FUSION,
        )
    return x0, x_next
