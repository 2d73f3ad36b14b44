"""Compute kernels behind guided sampling, shipped as ``v2a_sampler.kernels``.

* ``combine(preds, coeffs, out_dtype=None)``: the affine combination ``sum_i c_i p_i`` every guided step performs.
* ``guided_step(x, preds, coeffs, a, b, u_x, u_0, u_old=0.0, x0_old=None, u_noise=0.0, noise=None)``: one fused
  guided solver step, returning ``(x0, x_next)`` (see :func:`reference.guided_step_reference` for the math).

Both dispatch to the Triton kernels (:mod:`.triton_guided`) when every tensor is on a CUDA device and triton
imports, and to the plain torch reference (:mod:`.reference`) otherwise. ``backend="torch"|"triton"|"auto"`` or
the environment variable ``V2A_KERNELS`` (read at every call; the argument wins) forces a choice. Forcing triton on
CPU tensors works only under the Triton interpreter (``TRITON_INTERPRET=1`` set before the kernels are first
used). Importing this package never imports triton.

Which ``u_x, u_0, u_old, u_noise`` a solver step uses is not written here: each fusable solver's linear rule in
:mod:`v2a_sampler.core.solvers` gives the coefficients of ``x_next = c_x x + c_0 x0 + c_d (x0 - x0_prev) + c_n
noise``, and its fused loop passes ``u_x = c_x``, ``u_0 = c_0 + c_d``, ``u_old = -c_d``, ``u_noise = c_n``
(``tests/test_kernels.py`` checks it equals the plain loop step for step).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Literal

import torch

from . import reference
from .reference import guided_step_reference

#: Environment variable that picks the backend when no ``backend=`` argument is given.
BACKEND_ENV = "V2A_KERNELS"
#: Accepted backend names.
BACKENDS = ("auto", "torch", "triton")

Backend = Literal["torch", "triton"]

_triton_module: ModuleType | None = None
_triton_error: str | None = None


def _load_triton() -> ModuleType | None:
    """The Triton kernel module, or None (with the reason kept in ``_triton_error``) if triton cannot be used."""
    global _triton_module, _triton_error
    if _triton_module is None and _triton_error is None:
        try:
            from . import triton_guided
        except Exception as exc:  # ImportError, or a broken triton install failing at import in any other way
            _triton_error = f"{type(exc).__name__}: {exc}"
        else:
            _triton_module = triton_guided
    return _triton_module


def triton_available() -> bool:
    """Whether the Triton kernels import in this process."""
    return _load_triton() is not None


def resolve_backend(tensors: Sequence[torch.Tensor], backend: str | None = None) -> Backend:
    """The backend a call on ``tensors`` uses: ``backend`` if given, else ``$V2A_KERNELS``, else ``"auto"``.

    ``auto`` picks triton when every tensor is on CUDA, triton imports and no autograd graph is being recorded
    through the inputs; torch otherwise. Raises ``ValueError`` for an unknown name and ``RuntimeError`` when
    triton is forced but cannot run these tensors.
    """
    raw = backend if backend is not None else os.environ.get(BACKEND_ENV, "auto")
    choice = raw.strip().lower() or "auto"
    if choice not in BACKENDS:
        source = "backend argument" if backend is not None else f"${BACKEND_ENV}"
        raise ValueError(f"unknown kernel backend {raw!r} ({source}); expected one of: {', '.join(BACKENDS)}")
    if choice == "torch":
        return "torch"
    on_cuda = bool(tensors) and all(getattr(t, "is_cuda", False) for t in tensors)
    if choice == "auto":
        if not on_cuda or (torch.is_grad_enabled() and any(getattr(t, "requires_grad", False) for t in tensors)):
            return "torch"
        if _load_triton() is None:
            warnings.warn(
                f"CUDA tensors but the Triton kernels are unavailable ({_triton_error}); using the torch reference",
                RuntimeWarning,
                stacklevel=3,
            )
            return "torch"
        return "triton"
    module = _load_triton()
    if module is None:
        raise RuntimeError(f"kernel backend 'triton' requested but triton cannot be used: {_triton_error}")
    if not on_cuda and not module.is_interpreted():
        devices = sorted({str(getattr(t, "device", type(t).__name__)) for t in tensors})
        raise RuntimeError(
            f"kernel backend 'triton' needs CUDA tensors, got {', '.join(devices)}; to run the kernels on CPU set "
            "TRITON_INTERPRET=1 before they are first used (the Triton interpreter, for tests)"
        )
    return "triton"


def combine(
    preds: Sequence[torch.Tensor],
    coeffs: Sequence[float],
    out_dtype: torch.dtype | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """``sum_i coeffs[i] * preds[i]`` accumulated in at least float32 (see :func:`reference.combine`)."""
    if resolve_backend(list(preds), backend) == "triton":
        assert _triton_module is not None
        return _triton_module.combine(preds, coeffs, out_dtype)
    return reference.combine(preds, coeffs, out_dtype)


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
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One guided solver step ``(x0, x_next)`` in ``x.dtype`` (see :func:`reference.guided_step_reference`)."""
    tensors = [x, *preds, *(t for t in (x0_old, noise) if t is not None)]
    impl = guided_step_reference
    if resolve_backend(tensors, backend) == "triton":
        assert _triton_module is not None
        impl = _triton_module.guided_step
    return impl(x, preds, coeffs, a, b, u_x, u_0, u_old=u_old, x0_old=x0_old, u_noise=u_noise, noise=noise)


__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "combine",
    "guided_step",
    "guided_step_reference",
    "resolve_backend",
    "triton_available",
]
