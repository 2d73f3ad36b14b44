"""EDM2's 2D toy network: a magnitude-preserving MLP that outputs a scalar log-density; the score is its gradient.

The set-up of Karras et al. (2024), "Guiding a Diffusion Model with a Bad Version of Itself" (NVlabs/edm2,
``toy_example.py``), rewritten for the denoiser protocol:

* Inputs: the noisy point scaled to unit variance, ``x / sqrt(sigma_data^2 + sigma^2)``, the noise embedding
  ``log(sigma) / 4`` and a constant 1.
* Layers: magnitude-preserving linear layers (each weight row normalised to unit length at every use; during
  training the stored weights are also renormalised in place, EDM2's forced weight normalisation) and a
  magnitude-preserving SiLU (``silu(x) / 0.596``), ``num_layers`` hidden-to-hidden layers after the input layer.
* Output: ``log p(x; sigma) = gain * mean(y^2) / sigma - |x_scaled|^2 / 2`` with a learned scalar ``gain`` (0 at
  initialisation, i.e. a Gaussian of the data's scale).
* Denoiser: Tweedie's formula ``D(x; sigma) = x + sigma^2 grad_x log p(x; sigma)`` on EDM's variance-exploding
  schedule (time = sigma). The gradient needs autograd, so :meth:`EDM2ToyNet.forward` enables it locally even when
  the sampler runs under ``torch.no_grad``.

Each network models one distribution (one class, or the union of the classes); it has no conditions.
:func:`v2a_sampler.lab.edm2_toy.class_dispatch` combines per-class networks and an unconditional one into a
class-conditional denoiser.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.denoisers import Cond, EDMSchedule, Prediction
from .base import DenoiserModule
from .registry import register_architecture

#: Sampling range of EDM2's toy (``do_sample``: sigma from 5 down to 0.002).
SIGMA_MAX = 5.0
SIGMA_MIN = 0.002
#: Gain of EDM2's magnitude-preserving SiLU (``silu(x) / 0.596`` keeps unit-variance inputs at unit variance).
MP_SILU_GAIN = 0.596
#: Epsilon of the weight normalisation.
NORM_EPS = 1e-4
#: The noise embedding is ``log(sigma) * NOISE_EMBED_SCALE``.
NOISE_EMBED_SCALE = 0.25


def _normalize_rows(w: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """Rows of ``w`` scaled to norm ``sqrt(fan_in)`` (unit RMS), as EDM2's ``normalize``."""
    norm = torch.linalg.vector_norm(w, dim=1, keepdim=True, dtype=torch.float32)
    norm = eps + norm / math.sqrt(w.shape[1])
    return w / norm.to(w.dtype)


class MPLinear(nn.Module):
    """Magnitude-preserving linear layer without bias: unit-norm weight rows at every use."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.normal_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:  # forced weight normalisation: keep the stored weights on the unit sphere
            with torch.no_grad():
                self.weight.copy_(_normalize_rows(self.weight))
        w = _normalize_rows(self.weight) / math.sqrt(self.weight.shape[1])
        return x @ w.t()


class MPSiLU(nn.Module):
    """``silu(x) / 0.596``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.silu(x) / MP_SILU_GAIN


class EDM2ToyNet(DenoiserModule):
    """EDM2's toy log-density network as an ``x0``-predicting denoiser on the EDM schedule (sigma 0.002 to 5).

    Args:
        in_dim: data dimensionality.
        num_layers: hidden-to-hidden layers after the input layer (EDM2: 4).
        hidden_dim: width (EDM2's good model: 64, its bad model: 32).
        sigma_data: expected data standard deviation, for the input scaling.
    """

    def __init__(self, in_dim: int = 2, num_layers: int = 4, hidden_dim: int = 64, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.arch_kwargs = {
            "in_dim": in_dim,
            "num_layers": num_layers,
            "hidden_dim": hidden_dim,
            "sigma_data": sigma_data,
        }
        self.sigma_data = sigma_data
        self.prediction = Prediction.X0
        self.schedule = EDMSchedule(sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN)
        self.condition_names = ()
        layers: list[nn.Module] = [MPLinear(in_dim + 2, hidden_dim)]
        for _ in range(num_layers):
            layers += [MPSiLU(), MPLinear(hidden_dim, hidden_dim)]
        self.layers = nn.Sequential(*layers)
        self.gain = nn.Parameter(torch.zeros([]))

    def log_density(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """Unnormalised ``log p(x; sigma)`` per row of ``x`` ``[N, D]`` (``sigma``: scalar or ``[N]``)."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).broadcast_to(x.shape[:-1]).unsqueeze(-1)
        xs = x / (self.sigma_data**2 + sigma**2).sqrt()
        y = self.layers(torch.cat([xs, sigma.log() * NOISE_EMBED_SCALE, torch.ones_like(sigma)], dim=-1))
        return y.square().mean(-1) * self.gain / sigma.squeeze(-1) - 0.5 * xs.square().sum(-1)

    def score(self, x: torch.Tensor, sigma: torch.Tensor | float, create_graph: bool = False) -> torch.Tensor:
        """``grad_x log p(x; sigma)`` (``create_graph=True`` keeps it differentiable, for training)."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logp = self.log_density(xg, sigma)
            (grad,) = torch.autograd.grad(logp.sum(), xg, create_graph=create_graph)
        return grad

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        """The clean-data estimate ``x + sigma^2 * score`` at sigma ``t`` (the condition is ignored)."""
        dtype = self.gain.dtype
        xin = x.to(dtype)
        sigma = torch.as_tensor(t, device=x.device).to(dtype).reshape(-1).expand(x.shape[0])
        return (xin + sigma.square().unsqueeze(-1) * self.score(xin, sigma)).detach().to(x.dtype)


register_architecture("edm2_toy", EDM2ToyNet)
