"""The recipe that produces the embedded V2A model and its bad model (an earlier checkpoint of the same run).

    python -m v2a_sampler.training.v2a_recipe --out runs/v2a [--export v2a_sampler/assets/v2a_default]

Renders the synthetic training set (cached), fits the log-mel normalisation, trains :class:`V2AFlow` with the
flow-matching trainer, and exports a pipeline folder: the final EMA weights as the model and the checkpoint at
``bad_iteration`` (AudioMoG: the bad model has far fewer iterations) in ``bad/``. The exact recipe is written to
``recipe.json`` in the run and the export.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ..media.specs import AudioSpec, VideoSpec
from ..models import from_pretrained, save_pretrained
from .synth_v2a import ClipCrops, build_synth_set, mel_video_ratio
from .trainer import TrainConfig, checkpoint_name, train

#: The recipe of the shipped model. ``bad_iteration`` is a tenth of the run, as AudioMoG's bad model (0.1M of 1M).
RECIPE: dict[str, Any] = {
    "num_clips": 2400,
    "duration": 4.0,
    "crop_seconds": 2.0,
    "data_seed": 0,
    "arch_kwargs": {
        "n_mels": 64,
        "patch": 2,
        "dim": 128,
        "depth": 4,
        "heads": 4,
        "mlp_ratio": 3.0,
        "video_dim": 128,
        "frame_size": 32,
        "encoder_width": 16,
    },
    "iterations": 4000,
    "bad_iteration": 400,
    "batch_size": 16,
    "lr": 1e-3,
    "lr_warmup": 200,
    "lr_decay_start": 1500,
    "threads": 1,
    "p_drop": 0.1,
    "t_sampling": "logit_normal",
    "ema_std": 0.05,
    "seed": 0,
}
#: A few-minute variant for smoke tests of the recipe itself.
QUICK = {"num_clips": 64, "iterations": 40, "bad_iteration": 10, "batch_size": 4}


def make_config(recipe: dict[str, Any], audio: AudioSpec, video: VideoSpec) -> TrainConfig:
    """The trainer config of a recipe (the audio spec carries the fitted normalisation)."""
    return TrainConfig(
        arch="v2a_flow",
        arch_kwargs={**recipe["arch_kwargs"], "audio": audio.to_dict(), "video": video.to_dict()},
        data="synth_v2a",
        data_kwargs={
            "num_clips": recipe["num_clips"],
            "duration": recipe["duration"],
            "seed": recipe["data_seed"],
            "crop_seconds": recipe["crop_seconds"],
            "audio": audio.to_dict(),
            "video": video.to_dict(),
        },
        iterations=recipe["iterations"],
        batch_size=recipe["batch_size"],
        lr=recipe["lr"],
        lr_warmup=recipe["lr_warmup"],
        lr_decay_start=recipe["lr_decay_start"],
        p_drop=recipe["p_drop"],
        t_sampling=recipe["t_sampling"],
        ema_std=recipe["ema_std"],
        seed=recipe["seed"],
        checkpoint_at=[recipe["bad_iteration"]],
        log_every=100,
    )


def train_embedded(
    out: str | Path,
    recipe: dict[str, Any] | None = None,
    export: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Run the recipe into ``out/run`` and export the pipeline folder (``out/model`` or ``export``)."""
    recipe = {**RECIPE, **(recipe or {})}
    out = Path(out)
    torch.set_num_threads(recipe["threads"])  # small ops: one thread is faster than two contending ones
    video = VideoSpec(frame_size=recipe["arch_kwargs"]["frame_size"])
    audio = AudioSpec(n_mels=recipe["arch_kwargs"]["n_mels"])
    data = build_synth_set(
        recipe["num_clips"], recipe["duration"], recipe["data_seed"], audio, video, progress=progress
    )
    audio.fit_stats(data.mels)
    cfg = make_config(recipe, audio, video)
    crop = int(round(recipe["crop_seconds"] * video.fps))
    source = ClipCrops(audio.normalize(data.mels), data.frames, crop, mel_video_ratio(audio, video))
    t0 = time.perf_counter()
    result = train(cfg, out / "run", data=source, resume=resume, progress=progress, description="V2AFlow")
    minutes = (time.perf_counter() - t0) / 60
    target = Path(export) if export is not None else out / "model"
    meta = {"recipe": recipe, "train_minutes": round(minutes, 1), "final_loss": _last_loss(result)}
    _export(out / "run", target, recipe, meta)
    return target


def _last_loss(result: Any) -> float | None:
    hist = getattr(result, "history", None) or []
    return float(hist[-1]["loss"]) if hist and "loss" in hist[-1] else None


def _export(run: Path, target: Path, recipe: dict[str, Any], meta: dict[str, Any]) -> None:
    good = from_pretrained(run / checkpoint_name(recipe["iterations"]))
    bad = from_pretrained(run / checkpoint_name(recipe["bad_iteration"]))
    if target.exists():
        shutil.rmtree(target)
    card = {"training": {**meta, "role": "good", "iteration": recipe["iterations"]}}
    save_pretrained(good, target, card)
    bad_card = {"training": {**meta, "role": "bad (earlier checkpoint)", "iteration": recipe["bad_iteration"]}}
    save_pretrained(bad, target / "bad", bad_card)
    (target / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="train the embedded V2A model and its bad model")
    ap.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, exported model)")
    ap.add_argument("--export", type=Path, default=None, help="where to write the pipeline folder")
    ap.add_argument("--iterations", type=int, default=None, help="override the recipe's iterations")
    ap.add_argument("--quick", action="store_true", help="a tiny run that checks the recipe end to end")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out")
    args = ap.parse_args(argv)
    recipe = dict(QUICK) if args.quick else {}
    if args.iterations:
        recipe["iterations"] = args.iterations
        recipe.setdefault("bad_iteration", max(1, args.iterations // 10))
    path = train_embedded(args.out, recipe, export=args.export, resume=args.resume)
    print(f"exported the pipeline to {path}")


if __name__ == "__main__":
    main()
