"""Training recipes of the 2D lab's models: one good model and two bad ones, as in AudioMoG's toy (Appendix E).

* ``good``: ``ToyMLP`` of width :data:`GOOD_WIDTH`, :data:`GOOD_ITERATIONS` iterations (the paper: d = 64, M = 4096).
* ``bad_early``: the checkpoint of the same run after :data:`EARLY_ITERATION` iterations (AudioMoG: "taken directly
  from earlier checkpoints").
* ``bad_small``: a width-:data:`SMALL_WIDTH` network trained for :data:`SMALL_ITERATIONS` iterations with the same
  recipe otherwise (the paper: d = 32, M = 512).

Batch size, learning-rate schedule and noise-level distribution follow EDM2's toy example: batch 4096, Adam at 1e-2
decayed as ``1 / sqrt(iteration / 512)``, noise levels logit-normal with mean -2.3 and std 1.5 (i.e. log-normal
``sigma / alpha`` with ``P_mean = -2.3, P_std = 1.5``). Unlike EDM2 (which regresses exact scores), the objective is
plain flow matching with velocity targets ``eps - x0`` and 10% label dropout for CFG, since that is what our trainer
does for real models.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..models import CONFIG_NAME, WEIGHTS_NAME
from .bad import train_reduced
from .trainer import TrainConfig, TrainResult, checkpoint_name, train

GOOD_WIDTH = 64
GOOD_ITERATIONS = 4096
EARLY_ITERATION = 512
SMALL_WIDTH = 32
SMALL_ITERATIONS = 512
#: Samples per training batch, peak learning rate (decayed as 1/sqrt(iteration / EARLY_ITERATION) after
#: EARLY_ITERATION iterations): the values of EDM2's toy example.
BATCH = 4096
LR = 1e-2

GOOD = TrainConfig(
    arch="mlp",
    arch_kwargs={"hidden_dim": GOOD_WIDTH, "num_layers": 4, "num_classes": 2},
    data="toy2d",
    iterations=GOOD_ITERATIONS,
    batch_size=BATCH,
    lr=LR,
    lr_decay_start=EARLY_ITERATION,
    t_sampling="logit_normal",
    t_mean=-2.3,
    t_std=1.5,
    p_drop=0.1,
    ema_std=0.05,
    seed=0,
    checkpoint_at=[EARLY_ITERATION],
    save_training_state=False,
)


def _export(folder: Path, dst: Path) -> Path:
    """Copy a checkpoint's loadable files (config + weights) to ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        shutil.copy2(folder / name, dst / name)
    return dst


def train_lab_models(out: str | Path, runs: str | Path | None = None, progress: bool = True) -> dict[str, Path]:
    """Train the good and both bad models and export them to ``out/{good,bad_early,bad_small}`` (a few minutes).

    ``runs`` keeps the full run directories (all checkpoints); by default they live in a temporary folder.
    """
    if runs is None:
        with tempfile.TemporaryDirectory() as tmp:
            return train_lab_models(out, tmp, progress)
    out, runs = Path(out), Path(runs)
    good: TrainResult = train(GOOD, runs / "good", progress=progress, description="good (width 64)")
    small = train_reduced(
        GOOD,
        runs / "small",
        iterations=SMALL_ITERATIONS,
        arch_overrides={"hidden_dim": SMALL_WIDTH},
        progress=progress,
        description="bad_small (width 32)",
    )
    return {
        "good": _export(good.checkpoints[GOOD_ITERATIONS], out / "good"),
        "bad_early": _export(runs / "good" / checkpoint_name(EARLY_ITERATION), out / "bad_early"),
        "bad_small": _export(small.checkpoints[SMALL_ITERATIONS], out / "bad_small"),
    }
