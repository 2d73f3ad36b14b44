"""The two model families of the 2D lab, measured by one runner with the same metrics.

* ``ours`` (:mod:`v2a_sampler.lab.toy2d`, :mod:`v2a_sampler.lab.recipes`): our fractal, class-conditional flow
  models (``ToyMLP``), both classes; AudioMoG's sampler settings (Heun 32 steps, sigma 80 to 0.002, pure noise).
* ``edm2`` (:mod:`v2a_sampler.lab.edm2_toy`): EDM2's fractal and its log-density networks, class A only (as in
  EDM2's figure); EDM2's sampler settings (Heun 32 steps, sigma 5 to 0.002, starting from noisy data).

:func:`run` is :func:`v2a_sampler.lab.experiment.run` with the family's classes, start noise and time grid; the
rows, summaries, CSV and plots are the experiment's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import experiment as E
from .toy2d import Toy2D

NoiseFn = Callable[[int, int, torch.Generator], torch.Tensor]
GridFn = Callable[[Any], torch.Tensor]


@dataclass(frozen=True)
class Family:
    """What differs between the lab's model families."""

    name: str
    toy: Toy2D
    classes: tuple[int, ...]
    grid: GridFn
    noise: NoiseFn
    #: the shipped bad model(s) in the order :func:`v2a_sampler.lab.experiment.methods` takes them
    bads: tuple[str, ...]

    def held_out(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` true samples (float64) with uniformly drawn class labels from the family's classes, all from one
        generator seeded ``seed``: held-out data for the autoguidance diagnostic."""
        gen = torch.Generator().manual_seed(seed)
        labels = torch.tensor(self.classes)[torch.randint(len(self.classes), (n,), generator=gen)]
        x0 = torch.empty(n, 2, dtype=torch.float64)
        for c in self.classes:
            sel = labels == c
            x0[sel] = self.toy.sample(int(sel.sum()), c, gen)[0]
        return x0, labels

    def models(self, folder: str | Path | None = None) -> dict[str, Any]:
        """The family's shipped denoisers (``good``, its bad models, ``exact``)."""
        if self.name == "edm2":
            from .edm2_toy import family_models

            return family_models(folder)
        from .toy2d import PRETRAINED_KINDS, pretrained

        models: dict[str, Any] = {k: pretrained(k, folder) for k in PRETRAINED_KINDS}
        models["exact"] = self.toy.denoiser()
        return models


def _pure_noise(n: int, label: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(n, 2, generator=gen, dtype=torch.float32)


def get_family(name: str) -> Family:
    """``"ours"`` or ``"edm2"``."""
    if name == "ours":
        from .toy2d import make_toy2d

        return Family("ours", make_toy2d(), (0, 1), E.sampling_grid, _pure_noise, ("bad_small", "bad_early"))
    if name == "edm2":
        from . import edm2_toy

        toy = edm2_toy.make_edm2_toy()
        return Family(
            "edm2",
            toy,
            (edm2_toy.CLASS_A,),
            edm2_toy.sampling_grid,
            lambda n, label, gen: edm2_toy.initial_noise(n, label, gen, toy),
            ("bad",),
        )
    raise ValueError(f"unknown lab family {name!r}; expected 'ours' or 'edm2'")


FAMILIES = ("ours", "edm2")


def draw(
    family: Family, method: E.Method, models: Mapping[str, Any], label: int, n: int, seed: int
) -> tuple[torch.Tensor, int]:
    """``n`` samples of class ``label`` for one method and the NFE per sample (the same start noise for every
    method of a seed): :func:`v2a_sampler.lab.experiment.draw` with the family's grid and start noise."""
    return E.draw(method, models, family.toy, label, n, seed, family.grid, family.noise)


def run(
    family: Family,
    models: Mapping[str, Any],
    rows: Sequence[E.Method],
    n_per_class: int,
    seeds: Sequence[int],
    on_step: Callable[[str], None] | None = None,
    keep: tuple[int, int] | None = (0, 0),
) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """Every (seed, method) metric row, averaged over the family's classes, and the samples of ``keep``:
    :func:`v2a_sampler.lab.experiment.run` with the family's classes, grid and start noise."""
    return E.run(models, family.toy, rows, n_per_class, seeds, on_step, keep, family.classes, family.grid,
                 family.noise)  # fmt: skip
