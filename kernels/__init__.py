"""Compute kernels behind guided sampling, shipped as ``v2a_sampler.kernels``.

``combine`` is the affine combination of branch predictions that every guided step performs. This module holds
the plain torch reference; fused GPU kernels dispatch to the same signature.
"""

from .reference import combine

__all__ = ["combine"]
