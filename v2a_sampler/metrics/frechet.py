"""Fréchet distance between Gaussians fitted to two sets of embeddings (the FID/FAD statistic), in numpy float64.

``FD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))``. The trace term is computed without a general
matrix square root: with ``A = S_a^(1/2)`` (eigendecomposition of a symmetric PSD matrix), ``S_a S_b`` is similar
to the symmetric PSD ``A S_b A``, so ``tr((S_a S_b)^(1/2))`` is the sum of the square roots of the eigenvalues of
``A S_b A`` (tiny negative round-off eigenvalues clamped to 0). Stable for singular covariances (fewer samples
than dimensions, dead ReLU units), no scipy needed.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["frechet_distance", "frechet_distance_from_stats", "gaussian_stats", "sqrtm_psd", "trace_sqrt_product"]

FeatureLike = np.ndarray | torch.Tensor


def gaussian_stats(feats: FeatureLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of ``[N, D]`` features, ``N >= 2``."""
    x = np.asarray(feats.detach().cpu() if isinstance(feats, torch.Tensor) else feats, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"need features [N >= 2, D >= 1], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def sqrtm_psd(mat: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues clamped to 0)."""
    sym = 0.5 * (mat + mat.T)
    values, vectors = np.linalg.eigh(sym)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """``tr((cov_a @ cov_b)^(1/2))`` of symmetric PSD matrices: eigenvalues of ``A cov_b A`` with ``A^2 = cov_a``."""
    root = sqrtm_psd(cov_a)
    middle = root @ cov_b @ root
    values = np.linalg.eigvalsh(0.5 * (middle + middle.T))
    return float(np.sqrt(np.clip(values, 0.0, None)).sum())


def frechet_distance_from_stats(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Fréchet distance between ``N(mu_a, cov_a)`` and ``N(mu_b, cov_b)`` (clamped at 0 against round-off)."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.atleast_2d(np.asarray(cov_a, np.float64)), np.atleast_2d(np.asarray(cov_b, np.float64))
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape or cov_a.shape != (mu_a.size, mu_a.size):
        raise ValueError(f"mismatched statistics: {mu_a.shape}, {cov_a.shape}, {mu_b.shape}, {cov_b.shape}")
    diff = mu_a - mu_b
    fd = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt_product(cov_a, cov_b)
    return max(float(fd), 0.0)


def frechet_distance(feats_a: FeatureLike, feats_b: FeatureLike) -> float:
    """Fréchet distance between Gaussians fitted to ``[N_a, D]`` and ``[N_b, D]`` feature sets."""
    return frechet_distance_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))
