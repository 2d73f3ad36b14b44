"""Making bad models for autoguidance and mixture-of-guidance, each in one call.

* :func:`earlier_checkpoint`: the same run, far fewer iterations (AudioMoG: the bad model "taken directly from
  earlier checkpoints").
* :func:`train_reduced`: the same recipe with a smaller network and fewer iterations (EDM2's toy: smaller width).
* :func:`finetune`: a short fine-tune from a base checkpoint (AudioMoG's V2A bad model: 0.3M instead of 1.3M
  fine-tuning iterations).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..models import CONFIG_NAME, WEIGHTS_NAME, DenoiserModule, architecture_name, from_pretrained, load_config
from .trainer import TrainConfig, TrainResult, list_checkpoints, train


def recipe_of(source: TrainConfig | str | Path) -> TrainConfig:
    """The :class:`TrainConfig` of a run: given directly, a run directory (its latest checkpoint) or a model folder
    whose ``config.json`` carries training metadata."""
    if isinstance(source, TrainConfig):
        return source
    path = Path(source)
    saved = list_checkpoints(path)
    folder = saved[max(saved)] if saved else path
    meta = load_config(folder).get("training")
    if not meta or "config" not in meta:
        raise ValueError(f"{folder} has no training metadata; pass a TrainConfig instead")
    return TrainConfig.from_dict(meta["config"])


def earlier_checkpoint(
    run_dir: str | Path, iteration: int, out: str | Path | None = None, device: str = "cpu"
) -> DenoiserModule:
    """The checkpoint of ``run_dir`` saved after ``iteration`` iterations (copied to ``out`` as a model folder)."""
    saved = list_checkpoints(run_dir)
    if iteration not in saved:
        have = ", ".join(map(str, saved)) or "none"
        raise ValueError(f"{run_dir} has no checkpoint at iteration {iteration}; saved iterations: {have}")
    folder = saved[iteration]
    if out is not None:
        dst = Path(out)
        dst.mkdir(parents=True, exist_ok=True)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            shutil.copy2(folder / name, dst / name)
    return from_pretrained(folder, device=device)


def train_reduced(
    base: TrainConfig | str | Path,
    out_dir: str | Path | None = None,
    iterations: int | None = None,
    arch_overrides: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Train the recipe of ``base`` again with a smaller network and/or fewer iterations.

    ``arch_overrides`` changes constructor arguments (e.g. ``{"hidden_dim": 32}``); ``iterations`` defaults to the
    base run's. Checkpoints past the new length are dropped. Extra keyword arguments go to :func:`train`.
    """
    cfg = recipe_of(base)
    if not arch_overrides and (iterations is None or iterations == cfg.iterations):
        raise ValueError("train_reduced needs arch_overrides (e.g. {'hidden_dim': 32}) and/or fewer iterations")
    n = cfg.iterations if iterations is None else int(iterations)
    reduced = cfg.replace(
        arch_kwargs={**cfg.arch_kwargs, **dict(arch_overrides or {})},
        iterations=n,
        checkpoint_at=[i for i in cfg.checkpoint_at if i <= n],
    )
    return train(reduced, out_dir, **kwargs)


def finetune(
    base: str | Path,
    out_dir: str | Path | None = None,
    iterations: int = 256,
    data: str | None = None,
    data_kwargs: Mapping[str, Any] | None = None,
    **changes: Any,
) -> TrainResult:
    """Continue training the model at ``base`` (folder or repo id) for ``iterations`` with a fresh optimiser.

    The recipe is the base's own training config when it has one (else defaults), with ``changes`` applied (any
    :class:`TrainConfig` field, e.g. ``lr=5e-4``, ``amg_weight=0.5``); ``data`` / ``data_kwargs`` switch the data.
    ``progress``, ``device``, ``model`` and ``description`` are passed to :func:`train`.
    """
    train_kwargs = {k: changes.pop(k) for k in ("progress", "device", "description") if k in changes}
    model = from_pretrained(base)
    try:
        cfg = recipe_of(base)
    except ValueError:
        cfg = TrainConfig()
    updates: dict[str, Any] = {
        "arch": architecture_name(model),
        "arch_kwargs": dict(model.arch_kwargs),
        "prediction": model.prediction.value,
        "schedule": model.schedule.to_dict(),
        "init_from": str(base),
        "iterations": int(iterations),
        "checkpoint_at": [],
        "lr_warmup": 0,
        "lr_decay_start": None,
    }
    if data is not None:
        updates["data"] = data
        updates["data_kwargs"] = dict(data_kwargs or {})
    elif data_kwargs is not None:
        updates["data_kwargs"] = dict(data_kwargs)
    cfg = cfg.replace(**{**updates, **changes})
    return train(cfg, out_dir, **train_kwargs)
