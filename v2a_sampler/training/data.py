"""Training data sources.

A data source is any callable ``source(batch_size, generator) -> (x0, cond)`` returning a batch of clean data
(batch first) and its named conditions (``{"label": LongTensor[B]}``, ...). The trainer passes its own seeded
``torch.Generator`` so runs are reproducible and resumable. Named sources (for configs and the CLI) are registered
with :func:`register_dataset`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import torch

from ..core.denoisers import Cond


@runtime_checkable
class DataSource(Protocol):
    """``source(batch_size, generator) -> (x0, cond)``."""

    def __call__(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, Cond | None]: ...


class TensorData:
    """Random minibatches (with replacement) from fixed tensors: ``x0 [N, ...]`` and ``cond = {name: [N, ...]}``."""

    def __init__(self, x0: torch.Tensor, cond: Mapping[str, torch.Tensor] | None = None) -> None:
        self.x0 = x0
        self.cond = dict(cond or {})
        for k, v in self.cond.items():
            if v.shape[0] != x0.shape[0]:
                raise ValueError(f"condition {k!r} has {v.shape[0]} rows but x0 has {x0.shape[0]}")

    def __call__(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, Cond | None]:
        idx = torch.randint(self.x0.shape[0], (batch_size,), generator=generator)
        return self.x0[idx], ({k: v[idx] for k, v in self.cond.items()} if self.cond else None)


DatasetFactory = Callable[..., DataSource]
_DATASETS: dict[str, DatasetFactory] = {}


def register_dataset(name: str, factory: DatasetFactory) -> DatasetFactory:
    """Register ``factory(**kwargs) -> DataSource`` under ``name``; returns ``factory``."""
    _DATASETS[name] = factory
    return factory


def make_dataset(name: str, **kwargs: Any) -> DataSource:
    """Build the registered data source ``name`` with ``kwargs``."""
    try:
        factory = _DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; registered: {', '.join(sorted(_DATASETS)) or 'none'}") from None
    return factory(**kwargs)


def _toy2d(**kwargs: Any) -> DataSource:
    from ..lab.toy2d import make_toy2d

    return make_toy2d(**kwargs).data_source()


register_dataset("toy2d", _toy2d)
