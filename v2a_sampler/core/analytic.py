"""Exact denoisers for Gaussian-mixture data.

A Gaussian mixture stays a Gaussian mixture under ``x = alpha * x0 + sigma * eps``, so the posterior mean
``E[x0 | x]`` (the ideal denoiser), the noisy log-density and its score are available in closed form. These serve as
ground truth for solver tests and as the exact reference of the 2D guidance lab.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .denoisers import Cond, FlowSchedule, FnDenoiser, Prediction, Schedule, eps_from_x0, from_x0_eps

LOG_2PI = math.log(2.0 * math.pi)


class GaussianMixture:
    """``sum_k w_k N(mu_k, Sigma_k)`` in ``D`` dimensions (float64 internally)."""

    def __init__(self, weights: Sequence[float] | torch.Tensor, means: torch.Tensor, covs: torch.Tensor) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        mu = torch.as_tensor(means, dtype=torch.float64)
        cov = torch.as_tensor(covs, dtype=torch.float64)
        if (
            mu.ndim != 2
            or cov.ndim != 3
            or cov.shape != (mu.shape[0], mu.shape[1], mu.shape[1])
            or w.numel() != mu.shape[0]
        ):
            raise ValueError(
                f"GaussianMixture needs weights [K], means [K, D], covs [K, D, D]; got "
                f"{tuple(w.shape)}, {tuple(mu.shape)}, {tuple(cov.shape)}"
            )
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError("mixture weights must be non-negative with a positive sum")
        self.log_weights = torch.log(w / w.sum())
        self.means = mu
        self.covs = cov

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @classmethod
    def gaussian(cls, mean: Sequence[float] | torch.Tensor, cov: torch.Tensor) -> GaussianMixture:
        mean_t = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
        return cls([1.0], mean_t, torch.as_tensor(cov, dtype=torch.float64).reshape(1, mean_t.shape[1], -1))

    @classmethod
    def concat(cls, parts: Sequence[GaussianMixture], weights: Sequence[float] | None = None) -> GaussianMixture:
        """The mixture ``sum_j weights[j] * parts[j]``."""
        weights = [1.0] * len(parts) if weights is None else list(weights)
        total = sum(weights)
        logw = torch.cat([p.log_weights + math.log(w / total) for p, w in zip(parts, weights, strict=True)])
        return cls(logw.exp(), torch.cat([p.means for p in parts]), torch.cat([p.covs for p in parts]))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        idx = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(self.covs)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        return self.means[idx] + (chol[idx] @ z.unsqueeze(-1)).squeeze(-1)

    def _noisy(self, alpha: float, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        eye = torch.eye(self.dim, dtype=torch.float64)
        return alpha * self.means, alpha * alpha * self.covs + sigma * sigma * eye

    def _component_terms(self, x: torch.Tensor, alpha: float, sigma: float):
        m, c = self._noisy(alpha, sigma)
        chol = torch.linalg.cholesky(c)  # [K, D, D]
        diff = x.to(torch.float64).unsqueeze(1) - m.unsqueeze(0)  # [N, K, D]
        sol = torch.cholesky_solve(diff.unsqueeze(-1).transpose(0, 1), chol.unsqueeze(1)).transpose(0, 1).squeeze(-1)
        maha = (diff * sol).sum(-1)
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        logp = self.log_weights - 0.5 * (maha + logdet + self.dim * LOG_2PI)  # [N, K]
        return logp, sol

    def log_prob(self, x: torch.Tensor, alpha: float = 1.0, sigma: float = 0.0) -> torch.Tensor:
        """log density of ``alpha * x0 + sigma * eps`` at ``x`` (``[N, D]``)."""
        logp, _ = self._component_terms(x, alpha, sigma)
        return torch.logsumexp(logp, dim=1)

    def score(self, x: torch.Tensor, alpha: float = 1.0, sigma: float = 0.0) -> torch.Tensor:
        """``grad_x log p(x)`` of the noisy distribution."""
        logp, sol = self._component_terms(x, alpha, sigma)
        resp = torch.softmax(logp, dim=1)
        return -(resp.unsqueeze(-1) * sol).sum(1)

    def posterior_mean(self, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        """``E[x0 | alpha * x0 + sigma * eps = x]`` by Tweedie's formula."""
        if alpha == 0.0:
            return torch.exp(self.log_weights) @ self.means + torch.zeros_like(x, dtype=torch.float64)
        s = self.score(x, alpha, sigma)
        return (x.to(torch.float64) + sigma * sigma * s) / alpha

    def flow_map(self, x: torch.Tensor, src: tuple[float, float], dst: tuple[float, float]) -> torch.Tensor:
        """Exact probability-flow ODE transport of a *single Gaussian* from ``(alpha, sigma)`` to ``(alpha', sigma')``.

        ``x' - alpha' mu = C'^(1/2) C^(-1/2) (x - alpha mu)`` with ``C = alpha^2 Sigma + sigma^2 I`` (all C commute).
        """
        if self.num_components != 1:
            raise ValueError("flow_map is closed-form only for a single Gaussian")
        (a0, s0), (a1, s1) = src, dst
        evals, evecs = torch.linalg.eigh(self.covs[0])
        c0 = a0 * a0 * evals + s0 * s0
        c1 = a1 * a1 * evals + s1 * s1
        gain = torch.sqrt(c1 / c0)
        centered = (x.to(torch.float64) - a0 * self.means[0]) @ evecs
        return (centered * gain) @ evecs.T + a1 * self.means[0]


class ConditionalGaussianMixture:
    """One :class:`GaussianMixture` per integer class label, and their prior-weighted union as the null condition."""

    def __init__(self, classes: Sequence[GaussianMixture], class_probs: Sequence[float] | None = None) -> None:
        if not classes:
            raise ValueError("need at least one class")
        self.classes = list(classes)
        probs = [1.0 / len(classes)] * len(classes) if class_probs is None else list(class_probs)
        self.class_probs = [p / sum(probs) for p in probs]
        self.unconditional = GaussianMixture.concat(self.classes, self.class_probs)

    def mixture(self, label: int | None) -> GaussianMixture:
        return self.unconditional if label is None else self.classes[int(label)]

    def denoiser(
        self,
        prediction: Prediction | str = Prediction.VELOCITY,
        schedule: Schedule | None = None,
        name: str = "exact_gmm",
    ) -> FnDenoiser:
        """An exact :class:`Denoiser` with condition ``"label"`` (a LongTensor ``[B]``); null = unconditional."""
        schedule = schedule or FlowSchedule(1.0)
        pred_type = Prediction.parse(prediction)

        def fn(x: torch.Tensor, t: torch.Tensor, cond: Cond | None) -> torch.Tensor:
            terms = schedule.terms(float(t[0]))
            labels = None if cond is None else cond.get("label")
            x64 = x.to(torch.float64)
            if labels is None:
                x0 = self.unconditional.posterior_mean(x64, terms.alpha, terms.sigma)
            else:
                labels = torch.as_tensor(labels).reshape(-1)
                x0 = torch.empty_like(x64)
                for lab in labels.unique().tolist():
                    sel = labels == lab
                    x0[sel] = self.classes[int(lab)].posterior_mean(x64[sel], terms.alpha, terms.sigma)
            if pred_type is Prediction.X0:
                out = x0
            elif terms.sigma == 0.0:
                raise ValueError("exact denoiser evaluated at sigma = 0 for a non-x0 prediction")
            else:
                out = from_x0_eps(pred_type, x0, eps_from_x0(x64, x0, terms), terms)
            return out.to(x.dtype)

        return FnDenoiser(fn, prediction=pred_type, schedule=schedule, condition_names=("label",), name=name)


def gaussian_denoiser(
    mean: Sequence[float] | torch.Tensor,
    cov: torch.Tensor,
    prediction: Prediction | str = Prediction.VELOCITY,
    schedule: Schedule | None = None,
) -> FnDenoiser:
    """Exact unconditional denoiser of ``N(mean, cov)`` (ignores conditions)."""
    return ConditionalGaussianMixture([GaussianMixture.gaussian(mean, cov)]).denoiser(prediction, schedule)
