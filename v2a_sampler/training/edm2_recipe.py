"""Training recipes of the EDM2-faithful lab family (:mod:`v2a_sampler.lab.edm2_toy`): exact-score regression
(``sigma^2 |score - true score|^2`` on noisy samples of log-normal sigma), Adam at 1e-2 decayed as
``1 / sqrt(iteration / 512)``, batch 4096, power-function EMA with std 0.010, no gradient clipping, as EDM2's
``toy_example.py``; :func:`train_family` retrains the shipped networks bit for bit (one thread).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..lab.edm2_toy import (
    ASSETS,
    BATCH,
    BETAS,
    CLASS_A,
    EMA_STD,
    LR,
    LR_DECAY_START,
    P_MEAN,
    P_STD,
    PRETRAINED_KINDS,
    SIGMA_DATA,
    make_edm2_toy,
    noisy_score,
)
from ..models import save_pretrained
from ..models.edm2_toy import EDM2ToyNet
from .ema import EMA

# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """One EDM2 toy training run. ``label`` is the class trained on (None: both classes, the unconditional model)."""

    label: int | None = CLASS_A
    hidden_dim: int = 64
    num_layers: int = 4
    iterations: int = 4096
    batch_size: int = BATCH
    lr: float = LR
    lr_decay_start: int = LR_DECAY_START
    p_mean: float = P_MEAN
    p_std: float = P_STD
    sigma_data: float = SIGMA_DATA
    ema_std: float = EMA_STD
    seed: int = 0
    #: further EMA profiles tracked in the same run (saved next to the main one; no extra training cost)
    extra_ema_stds: tuple[float, ...] = ()
    #: iterations (besides the last) at which the EMA weights are kept
    checkpoint_at: tuple[int, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["extra_ema_stds"] = list(self.extra_ema_stds)
        d["checkpoint_at"] = list(self.checkpoint_at)
        return d

    def replace(self, **changes: Any) -> Recipe:
        return replace(self, **changes)


#: The shipped networks: EDM2's good and bad class-A models and its small unconditional model (for CFG).
RECIPES: dict[str, Recipe] = {
    "good": Recipe(label=CLASS_A, hidden_dim=64, iterations=4096),
    "bad": Recipe(label=CLASS_A, hidden_dim=32, iterations=512),
    "uncond": Recipe(label=None, hidden_dim=32, iterations=512),
}
assert tuple(RECIPES) == PRETRAINED_KINDS


def _init_weights(net: EDM2ToyNet, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen))


def train_net(
    recipe: Recipe, progress: bool = False, description: str = "edm2 toy"
) -> dict[tuple[int, float], EDM2ToyNet]:
    """Train one network; returns the EMA weights ``{(iteration, ema_std): network}`` at every checkpoint.

    Seeded by ``recipe.seed`` through one ``torch.Generator`` (initial weights, noise levels, data): repeatable bit
    for bit on one thread.
    """
    toy = make_edm2_toy()
    mixture = toy.class_mixture(recipe.label)
    gen = torch.Generator().manual_seed(recipe.seed)
    net = EDM2ToyNet(num_layers=recipe.num_layers, hidden_dim=recipe.hidden_dim, sigma_data=recipe.sigma_data)
    _init_weights(net, gen)
    net.train().requires_grad_(True)
    stds = (recipe.ema_std, *recipe.extra_ema_stds)
    emas = {s: EMA(net, std=s) for s in stds}
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr, betas=BETAS)
    keep = set(recipe.checkpoint_at) | {recipe.iterations}
    out: dict[tuple[int, float], EDM2ToyNet] = {}
    bar = _bar(progress, recipe.iterations, description)
    for it in range(recipe.iterations):
        for group in opt.param_groups:
            group["lr"] = recipe.lr / math.sqrt(max(it / recipe.lr_decay_start, 1.0))
        sigma = (torch.randn(recipe.batch_size, generator=gen) * recipe.p_std + recipe.p_mean).exp()
        x0 = mixture.sample(recipe.batch_size, generator=gen).to(torch.float32)
        x = x0 + sigma.unsqueeze(-1) * torch.randn(x0.shape, generator=gen)
        target = noisy_score(mixture, x, sigma)
        pred = net.score(x, sigma, create_graph=True)
        loss = (sigma.square() * (pred - target).square().mean(-1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for ema in emas.values():
            ema.update(net, it + 1)
        if it + 1 in keep:
            for s, ema in emas.items():
                out[(it + 1, s)] = _frozen_copy(ema.module)
        if bar is not None:
            bar(float(loss.detach()))
    return out


def _frozen_copy(module: EDM2ToyNet) -> EDM2ToyNet:
    return copy.deepcopy(module).eval().requires_grad_(False)


def _bar(enabled: bool, total: int, description: str) -> Callable[[float], None] | None:
    if not enabled:
        return None
    from rich.progress import Progress

    prog = Progress(transient=True)
    task = prog.add_task(description, total=total)
    prog.start()
    state = {"n": 0}

    def step(_loss: float) -> None:
        state["n"] += 1
        prog.advance(task)
        if state["n"] >= total:
            prog.stop()

    return step


def save_net(net: EDM2ToyNet, folder: str | Path, recipe: Recipe, iteration: int, ema_std: float, **meta: Any) -> Path:
    """Write a network folder (``config.json`` records the recipe, iteration and EMA profile)."""
    info = {"recipe": recipe.to_dict(), "iteration": iteration, "ema_std": ema_std, **meta}
    return save_pretrained(net, folder, {"training": info, "family": "edm2"})


def train_family(out: str | Path = ASSETS, progress: bool = True) -> dict[str, Path]:
    """Train the shipped networks (:data:`RECIPES`) into ``out/<kind>``; a few minutes on one CPU thread."""
    out = Path(out)
    paths = {}
    for kind, recipe in RECIPES.items():
        start = time.perf_counter()
        nets = train_net(recipe, progress=progress, description=f"edm2 {kind}")
        net = nets[(recipe.iterations, recipe.ema_std)]
        seconds = round(time.perf_counter() - start, 1)
        paths[kind] = save_net(net, out / kind, recipe, recipe.iterations, recipe.ema_std, train_seconds=seconds)
    return paths
