"""A small class-conditional MLP denoiser for low-dimensional data (the 2D guidance lab).

Inputs are preconditioned as in EDM (Karras et al., 2022): the noisy state is scaled to unit variance with
``c_in = 1 / sqrt(alpha^2 sigma_data^2 + sigma^2)`` and the noise level enters as ``log(sigma / alpha) / 4`` plus a
few Fourier features of it. The class label enters as a learned embedding added to the first hidden layer; one extra
learned embedding is the null class used for classifier-free guidance.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.denoisers import Cond
from .base import DenoiserModule, schedule_terms
from .registry import register_architecture

#: Label value meaning "no class" inside a label tensor (rows with it use the learned null embedding).
NULL_LABEL = -1
#: Noise levels are clamped to [TAU_EPS, 1 - TAU_EPS] before taking log(sigma / alpha), which is infinite at the ends.
TAU_EPS = 1e-6


class ToyMLP(DenoiserModule):
    """Class-conditional MLP ``(x, t, {"label": LongTensor[B]}) -> prediction`` with a learned null class.

    Args:
        in_dim: data dimensionality.
        hidden_dim: width of every hidden layer.
        num_layers: number of hidden-to-hidden layers.
        num_classes: number of classes; the null class is one more learned embedding.
        num_freqs: Fourier features of the noise level (frequencies 1, 2, 4, ...).
        sigma_data: expected standard deviation of the data, for input scaling.
    """

    def __init__(
        self,
        in_dim: int = 2,
        hidden_dim: int = 64,
        num_layers: int = 4,
        num_classes: int = 2,
        num_freqs: int = 4,
        sigma_data: float = 0.5,
    ) -> None:
        super().__init__()
        self.arch_kwargs = {
            "in_dim": in_dim,
            "hidden_dim": hidden_dim,
            "num_layers": num_layers,
            "num_classes": num_classes,
            "num_freqs": num_freqs,
            "sigma_data": sigma_data,
        }
        self.condition_names = ("label",)
        self.num_classes = num_classes
        self.sigma_data = sigma_data
        self.register_buffer("freqs", 2.0 ** torch.arange(num_freqs, dtype=torch.float32), persistent=False)
        self.inp = nn.Linear(in_dim + 1 + 2 * num_freqs, hidden_dim)
        self.label_embed = nn.Embedding(num_classes + 1, hidden_dim)  # index num_classes = null class
        self.hidden = nn.ModuleList(nn.Linear(hidden_dim, hidden_dim) for _ in range(num_layers))
        self.out = nn.Linear(hidden_dim, in_dim)
        nn.init.normal_(self.label_embed.weight, std=1.0 / math.sqrt(hidden_dim))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def label_index(self, cond: Cond | None, batch: int, device: torch.device) -> torch.Tensor:
        """Embedding index per row: the class, or the null index for ``None`` / :data:`NULL_LABEL` rows."""
        labels = None if cond is None else cond.get("label")
        if labels is None:
            return torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        labels = torch.as_tensor(labels, device=device).long().reshape(-1)
        if labels.numel() == 1 and batch != 1:
            labels = labels.expand(batch)
        if labels.shape[0] != batch:
            raise ValueError(f"ToyMLP got {labels.shape[0]} labels for a batch of {batch}")
        if ((labels < NULL_LABEL) | (labels >= self.num_classes)).any():
            raise ValueError(f"ToyMLP labels must be in [0, {self.num_classes}) or {NULL_LABEL} (null)")
        return torch.where(labels == NULL_LABEL, torch.full_like(labels, self.num_classes), labels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        dtype = self.inp.weight.dtype
        h_in = x.to(dtype)
        t = torch.as_tensor(t, device=x.device).to(dtype).reshape(-1).expand(x.shape[0])
        alpha, sigma, _, _ = schedule_terms(self.schedule, t)
        level = (sigma / (alpha + sigma)).clamp(TAU_EPS, 1.0 - TAU_EPS)
        c_noise = (torch.log(level) - torch.log1p(-level)).unsqueeze(-1) / 4.0  # log(sigma / alpha) / 4
        c_in = torch.rsqrt((alpha * self.sigma_data) ** 2 + sigma**2).unsqueeze(-1)
        phase = c_noise * self.freqs.to(dtype)
        feats = torch.cat([h_in * c_in, c_noise, torch.sin(phase), torch.cos(phase)], dim=-1)
        h = self.inp(feats) + self.label_embed(self.label_index(cond, x.shape[0], x.device))
        for layer in self.hidden:
            h = layer(nn.functional.silu(h))
        return self.out(nn.functional.silu(h)).to(x.dtype)

    def perturbation_sites(self) -> dict[str, list[nn.Module]]:
        """Where :mod:`~v2a_sampler.models.perturb` may perturb this network: its hidden layers (no attention)."""
        return {"blocks": list(self.hidden), "attention": []}


register_architecture("mlp", ToyMLP)
