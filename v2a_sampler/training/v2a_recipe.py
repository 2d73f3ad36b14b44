"""The recipe that produces the embedded V2A model, its bad-model candidates and its AMG-trained variant.

    v2a-train v2a --out runs/v2a2 --export v2a_sampler/assets/v2a_default --export-amg v2a_sampler/assets/v2a_amg

Renders the synthetic training set (cached), fits the log-mel normalisation and runs six stages, each resumable
(re-running the command continues a stage that stopped and skips the finished ones). AudioMoG's V2A recipe is the
model: one shared base, fine-tuned into the good model and (for fewer iterations) into the bad one.

* ``base``: the shared base, :class:`V2AFlow` trained with flow matching by ``RECIPE["base"]`` (the first embedded
  model's recipe); it saves its checkpoint at ``base["earlier"]`` as a candidate too. ``--base FOLDER`` uses a model
  trained by it before instead (its ``bad/`` sub-folder, if any, as that earlier checkpoint).
* ``main``: the good model: the base deepened to ``depth`` blocks (new blocks start as the identity) and fine-tuned
  for ``iterations`` (with ``frozen_encoder``, on the base's frame-encoder features computed once: the fine-tunes
  keep the base's video encoder, as MMAudio trains on frozen features, and skip its cost at every iteration),
  saving the fractions ``checkpoints`` of the fine-tune (earlier-checkpoint bad models, AudioMoG's "taken directly
  from earlier checkpoints") and every ``save_every`` iterations.
* ``finetune``: the base deepened and fine-tuned the same way with another seed for ``finetune["fraction"]`` of the
  iterations: AudioMoG V2A fine-tunes good and bad from one 2M-iteration base for 1.3M and 0.3M iterations, so the
  bad model has 2.3M / 3.3M = 70 % of the good one's training; ``fraction`` is set to match.
* ``small``: EDM2's bad model, a smaller network (``small``: half the width) trained from scratch by the base recipe
  for ``small["iterations"]``.
* ``amg``: the good run forked at ``amg["fork"]`` and continued with MGAudio's AMG objective (weight ``amg["weight"]``,
  linear ramp over ``amg["ramp"]`` of the fine-tune) up to the good model's iteration count: the AMG variant, with
  the same training as the good model, sampled with a small extra CFG.
* ``export``: the good model with the chosen bad model (``bad``: one of :func:`bad_candidates`' names, or a
  ``perturb:...`` spec of the good model, recorded in ``pipeline.json``) and the AMG variant, weights stored in
  ``storage_dtype`` (loaded back as float32).

Fine-tune iteration counts are fractions of ``iterations`` so ``--iters`` rescales them. The recipe and the wall time
of every stage are written to ``timings.json`` in the run and ``recipe.json`` in the exports.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..media.specs import AudioSpec, VideoSpec
from ..models import PIPELINE_CONFIG_NAME, from_pretrained, save_pretrained
from ..models.perturb import is_spec as is_perturbation
from .synth_v2a import ClipCrops, build_synth_set, encode_clips, mel_video_ratio
from .trainer import TrainConfig, checkpoint_name, list_checkpoints, train

#: The recipe of the shipped models (see the module docstring).
RECIPE: dict[str, Any] = {
    "num_clips": 2400,
    "duration": 4.0,
    "crop_seconds": 2.0,
    "data_seed": 0,
    "threads": 1,
    "batch_size": 16,
    "p_drop": 0.1,
    "t_sampling": "logit_normal",
    "ema_std": 0.05,
    "base": {
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
        "earlier": 400,
        "lr": 1e-3,
        "lr_warmup": 200,
        "lr_decay_start": 1500,
        "seed": 0,
    },
    "depth": 6,
    "frozen_encoder": False,
    "iterations": 6000,
    "lr": 6e-4,
    "lr_warmup": 100,
    "lr_decay_start": 1000,
    "seed": 10,
    "checkpoints": [0.1, 0.25, 0.5, 0.7],
    "save_every": 500,
    "finetune": {"fraction": 0.5, "seed": 11},
    "small": {"dim": 64, "heads": 4, "iterations": 2000, "seed": 3},
    "amg": {"weight": 0.5, "fork": 0.5, "ramp": 0.1, "seed": 12},
    # chosen by benchmarks/v2a_bad_models.py on validation clips (benchmarks/results/v2a_model_v2/bad_models/)
    "bad": "small",
    "storage_dtype": "float16",
}
#: A few-minute variant for smoke tests of the recipe itself.
QUICK: dict[str, Any] = {
    "num_clips": 64,
    "batch_size": 4,
    "base": {"iterations": 20, "earlier": 5, "lr_warmup": 2, "lr_decay_start": None},
    "iterations": 20,
    "lr_warmup": 2,
    "lr_decay_start": None,
    "save_every": 10,
    "small": {"dim": 32, "heads": 2, "iterations": 10},
}
#: The stages of the recipe, in order.
STAGES = ("base", "main", "finetune", "small", "amg", "export")
#: Sub-folders of a recipe run.
RUN_DIRS = {"base": "base", "main": "run", "finetune": "finetune", "small": "small", "amg": "amg"}
TIMINGS_FILE = "timings.json"
#: Where ``--base FOLDER`` is recorded in a run (so later stages find the base without the option).
BASE_LINK = "base.json"
#: The merged recipe of a run, written when it starts (tools that read a run use :func:`run_recipe`).
RUN_RECIPE = "recipe.json"


def run_recipe(out: str | Path) -> dict[str, Any]:
    """The recipe a run folder was trained with (its ``recipe.json``; the default recipe for runs made before it
    was recorded)."""
    path = Path(out) / RUN_RECIPE
    return merge_recipe(json.loads(path.read_text())) if path.is_file() else merge_recipe()


def merge_recipe(recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """:data:`RECIPE` with ``recipe``'s entries (nested dicts merged, two levels deep)."""
    out = json.loads(json.dumps(RECIPE))
    for key, value in (recipe or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {k: {**out[key][k], **v} if isinstance(v, dict) and isinstance(out[key].get(k), dict) else v
                        for k, v in {**out[key], **value}.items()}  # fmt: skip
        else:
            out[key] = value
    return out


def at(recipe: dict[str, Any], fraction: float) -> int:
    """The fine-tune iteration at ``fraction`` of the good model's fine-tune (at least 1)."""
    return max(1, int(round(fraction * recipe["iterations"])))


def checkpoint_iterations(recipe: dict[str, Any]) -> list[int]:
    """Iterations the good run saves: the earlier-checkpoint candidates, the AMG fork and every ``save_every``."""
    n = recipe["iterations"]
    keep = {at(recipe, f) for f in recipe["checkpoints"]} | {at(recipe, recipe["amg"]["fork"])}
    every = recipe.get("save_every") or 0
    keep |= set(range(every, n, every)) if every else set()
    return sorted(i for i in keep if i < n)


def _common(recipe: dict[str, Any], audio: AudioSpec, video: VideoSpec) -> dict[str, Any]:
    return {
        "arch": "v2a_flow",
        "data": "synth_v2a",
        "data_kwargs": {
            "num_clips": recipe["num_clips"],
            "duration": recipe["duration"],
            "seed": recipe["data_seed"],
            "crop_seconds": recipe["crop_seconds"],
            "audio": audio.to_dict(),
            "video": video.to_dict(),
        },
        "batch_size": recipe["batch_size"],
        "p_drop": recipe["p_drop"],
        "t_sampling": recipe["t_sampling"],
        "ema_std": recipe["ema_std"],
        "log_every": 100,
    }


def base_config(recipe: dict[str, Any], audio: AudioSpec, video: VideoSpec) -> TrainConfig:
    """The trainer config of the shared base (the audio spec carries the fitted normalisation)."""
    b = recipe["base"]
    return TrainConfig(
        **_common(recipe, audio, video),
        arch_kwargs={**b["arch_kwargs"], "audio": audio.to_dict(), "video": video.to_dict()},
        iterations=b["iterations"],
        lr=b["lr"],
        lr_warmup=b["lr_warmup"],
        lr_decay_start=b["lr_decay_start"],
        seed=b["seed"],
        checkpoint_at=[b["earlier"]] if b.get("earlier") else [],
    )


def stage_config(stage: str, recipe: dict[str, Any], base: TrainConfig, out: Path) -> TrainConfig:
    """The trainer config of a stage; ``base`` is the base stage's config (its arch_kwargs those of the base)."""
    if stage == "base":
        return base
    if stage == "small":
        small = recipe["small"]
        arch = {**base.arch_kwargs, "dim": small["dim"], "heads": small["heads"]}
        return base.replace(arch_kwargs=arch, iterations=small["iterations"], seed=small["seed"], checkpoint_at=[])
    data_kwargs = dict(base.data_kwargs)
    if recipe["frozen_encoder"]:
        data_kwargs["features_from"] = str(base_folder(out, recipe))
    main = base.replace(
        arch_kwargs={**base.arch_kwargs, "depth": recipe["depth"]},
        data_kwargs=data_kwargs,
        init_from=str(base_folder(out, recipe)),
        iterations=recipe["iterations"],
        lr=recipe["lr"],
        lr_warmup=recipe["lr_warmup"],
        lr_decay_start=recipe["lr_decay_start"],
        seed=recipe["seed"],
        checkpoint_at=checkpoint_iterations(recipe),
    )
    if stage == "main":
        return main
    if stage == "finetune":
        ft = recipe["finetune"]
        n = at(recipe, ft["fraction"])
        every = recipe.get("save_every") or 0
        return main.replace(iterations=n, seed=ft["seed"], checkpoint_at=list(range(every, n, every)) if every else [])
    if stage == "amg":
        amg = recipe["amg"]
        fork = at(recipe, amg["fork"])
        return main.replace(init_from=str(out / RUN_DIRS["main"] / checkpoint_name(fork)), lr=main.lr_at(fork),
                            lr_warmup=0, lr_decay_start=None, iterations=recipe["iterations"] - fork,
                            seed=amg["seed"], amg_weight=amg["weight"], amg_warmup=0,
                            amg_ramp=at(recipe, amg["ramp"]), checkpoint_at=[])  # fmt: skip
    raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")


def base_folder(out: Path, recipe: dict[str, Any]) -> Path:
    """The shared base: the folder given with ``--base`` (recorded in the run) or the base stage's last checkpoint."""
    link = out / BASE_LINK
    if link.is_file():
        return Path(json.loads(link.read_text())["base"])
    return out / RUN_DIRS["base"] / checkpoint_name(recipe["base"]["iterations"])


def final_checkpoint(out: Path, stage: str, cfg: TrainConfig) -> Path:
    return out / RUN_DIRS[stage] / checkpoint_name(cfg.iterations)


def train_embedded(
    out: str | Path,
    recipe: dict[str, Any] | None = None,
    export: str | Path | None = None,
    export_amg: str | Path | None = None,
    stages: tuple[str, ...] | list[str] = STAGES,
    base: str | Path | None = None,
    progress: bool = True,
    resume: bool = True,
) -> Path:
    """Run the recipe's ``stages`` into ``out`` and export the pipeline folders (``out/model``, ``out/amg_model``
    unless ``export`` / ``export_amg`` are given); returns the main pipeline folder.

    ``base``: a model folder trained by the base recipe before, used as the shared base instead of the base stage.
    A stage whose last checkpoint exists is skipped; one with resumable checkpoints continues from the latest
    (``resume=False`` starts it again).
    """
    recipe = merge_recipe(recipe)
    out = Path(out)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_RECIPE).write_text(json.dumps(recipe, indent=2) + "\n")  # what later tools read (run_recipe)
    if base is not None:
        (out / BASE_LINK).write_text(json.dumps({"base": str(Path(base).resolve())}) + "\n")
    torch.set_num_threads(recipe["threads"])  # small ops: one thread is faster than two contending ones
    arch = recipe["base"]["arch_kwargs"]
    video = VideoSpec(frame_size=arch["frame_size"])
    audio = AudioSpec(n_mels=arch["n_mels"])
    data = build_synth_set(recipe["num_clips"], recipe["duration"], recipe["data_seed"], audio, video,
                           progress=progress)  # fmt: skip
    audio.fit_stats(data.mels)
    if (out / BASE_LINK).is_file():  # a given base brings its own normalisation: train on exactly that
        audio = AudioSpec.from_dict(from_pretrained(base_folder(out, recipe)).arch_kwargs["audio"])
    base_cfg = base_config(recipe, audio, video)
    crop = int(round(recipe["crop_seconds"] * video.fps))
    mels = audio.normalize(data.mels)
    features: dict[str, torch.Tensor] = {}  # frozen-encoder features by encoder folder, computed once
    for stage in [s for s in STAGES if s in stages and s != "export"]:
        if stage == "base" and (out / BASE_LINK).is_file():
            continue
        cfg = stage_config(stage, recipe, base_cfg, out)
        if final_checkpoint(out, stage, cfg).is_dir():
            continue
        if cfg.init_from is not None and not Path(cfg.init_from).is_dir():
            raise ValueError(f"stage {stage} needs {cfg.init_from}: run the stages before it first")
        t0 = time.perf_counter()
        encoder = cfg.data_kwargs.get("features_from")
        if encoder is not None and encoder not in features:
            features[encoder] = encode_clips(from_pretrained(encoder), data.frames)
        video_cond = data.frames if encoder is None else features[encoder]
        source = ClipCrops(mels, video_cond, crop, mel_video_ratio(audio, video))
        train(cfg, out / RUN_DIRS[stage], data=source, resume=resume, progress=progress, description=stage)
        _add_timing(out, stage, (time.perf_counter() - t0) / 60)
    target = Path(export) if export is not None else out / "model"
    if "export" in stages:
        meta = {"recipe": recipe, "train_minutes": _read_timings(out), "base": str(base_folder(out, recipe))}
        _export(out, target, recipe, base_cfg, meta)
        _export_amg(out, Path(export_amg) if export_amg is not None else out / "amg_model", recipe, base_cfg, meta)
    return target


def _read_timings(out: Path) -> dict[str, float]:
    path = out / TIMINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _add_timing(out: Path, stage: str, minutes: float) -> None:
    """Add a stage's wall minutes to the run's record (read just before writing: stages may run in parallel)."""
    timings = _read_timings(out)
    timings[stage] = round(timings.get(stage, 0.0) + minutes, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / TIMINGS_FILE).write_text(json.dumps(timings, indent=2) + "\n")


def bad_candidates(out: str | Path, recipe: dict[str, Any] | None = None) -> dict[str, Path]:
    """The trained bad-model candidates of a recipe run, ``{name: model folder}``, those that exist:
    ``base-earlier`` (the base run's early checkpoint), ``base`` (the shared base itself), ``earlier:<fraction>``
    (the good model's fine-tune at that fraction), ``finetune`` and ``small``."""
    recipe = merge_recipe(recipe)
    out = Path(out)
    base = base_folder(out, recipe)
    if (out / BASE_LINK).is_file():
        early = base / "bad"
    else:
        early = list_checkpoints(out / RUN_DIRS["base"]).get(recipe["base"]["earlier"], out / "none")
    found = {"base-earlier": early, "base": base}
    saved = list_checkpoints(out / RUN_DIRS["main"])
    found.update({f"earlier:{f:g}": saved.get(at(recipe, f), out / "none") for f in recipe["checkpoints"]})
    found["finetune"] = out / RUN_DIRS["finetune"] / checkpoint_name(at(recipe, recipe["finetune"]["fraction"]))
    found["small"] = out / RUN_DIRS["small"] / checkpoint_name(recipe["small"]["iterations"])
    return {k: v for k, v in found.items() if (v / "config.json").is_file()}


def _export(out: Path, target: Path, recipe: dict[str, Any], base: TrainConfig, meta: dict[str, Any]) -> None:
    good = from_pretrained(final_checkpoint(out, "main", stage_config("main", recipe, base, out)))
    choice = recipe["bad"]
    bad_folder = None
    if not is_perturbation(choice):
        bad_folder = bad_candidates(out, recipe).get(choice)
        if bad_folder is None:
            raise ValueError(f"the recipe's bad model {choice!r} was not trained in {out}")
    if target.exists():
        shutil.rmtree(target)
    store = recipe["storage_dtype"]
    save_pretrained(good, target, _card(good, meta, "good"), storage_dtype=store)
    if bad_folder is not None:
        bad = from_pretrained(bad_folder)
        role = f"bad ({choice}: {_BAD_ROLES[choice.split(':')[0]]})"
        save_pretrained(bad, target / "bad", _card(bad, meta, role), storage_dtype=store)
    else:
        (target / PIPELINE_CONFIG_NAME).write_text(json.dumps({"bad": choice}, indent=2) + "\n")
    (target / "recipe.json").write_text(json.dumps(meta, indent=2) + "\n")


def _card(model: Any, meta: dict[str, Any], role: str) -> dict[str, Any]:
    """The exported model's ``training`` metadata: the recipe and timings, its role, and its checkpoint's own
    record (iteration, trainer config, AMG weight at the end)."""
    own = dict(getattr(model, "config", {}).get("training") or {})
    keep = {k: own[k] for k in ("iteration", "loss", "amg_weight_now", "config") if k in own}
    return {"training": {**meta, "role": role, **keep}}


_BAD_ROLES = {
    "base-earlier": "an early checkpoint of the shared base's run",
    "base": "the shared base, before fine-tuning",
    "earlier": "an earlier checkpoint of the good model's fine-tune",
    "finetune": "the shared base fine-tuned for fewer iterations",
    "small": "a smaller network trained for fewer iterations",
}


def _export_amg(out: Path, target: Path, recipe: dict[str, Any], base: TrainConfig, meta: dict[str, Any]) -> None:
    folder = final_checkpoint(out, "amg", stage_config("amg", recipe, base, out))
    if not folder.is_dir():
        return
    model = from_pretrained(folder)
    if target.exists():
        shutil.rmtree(target)
    card = _card(model, meta, "AMG variant (MGAudio objective, forked from the good model's fine-tune)")
    save_pretrained(model, target, card, storage_dtype=recipe["storage_dtype"])
    (target / "recipe.json").write_text(json.dumps(meta, indent=2) + "\n")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The recipe's command-line options (shared by ``v2a-train v2a`` and ``python -m ...v2a_recipe``)."""
    ap.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, exported models)")
    ap.add_argument("--export", type=Path, default=None, help="where to write the pipeline folder (default OUT/model)")
    ap.add_argument("--export-amg", type=Path, default=None, help="where to write the AMG variant (OUT/amg_model)")
    ap.add_argument("--stage", default="all", help=f"comma-separated stages of {', '.join(STAGES)} (default: all)")
    ap.add_argument("--iters", "--iterations", dest="iters", type=int, default=None, help="fine-tune iterations")
    ap.add_argument(
        "--base",
        dest="base_model",
        type=Path,
        default=None,
        help="a model trained by the base recipe before: the shared base (skips the base stage)",
    )
    ap.add_argument("--bad", default=None, help="override the shipped bad model (earlier:F, finetune, small, perturb:)")
    ap.add_argument("--quick", action="store_true", help="a tiny run that checks the recipe end to end")
    ap.add_argument("--restart", action="store_true", help="start unfinished stages again instead of resuming")
    ap.add_argument("--resume", action="store_true", help="(default behaviour; kept for old command lines)")
    ap.add_argument("--no-progress", action="store_true")


def run_from_args(args: argparse.Namespace, echo: Callable[[str], Any] = print) -> Path:
    recipe: dict[str, Any] = dict(QUICK) if args.quick else {}
    if args.iters:
        recipe["iterations"] = args.iters
    if args.bad:
        recipe["bad"] = args.bad
    stages = STAGES if args.stage == "all" else tuple(s.strip() for s in args.stage.split(",") if s.strip())
    path = train_embedded(args.out, recipe, export=args.export, export_amg=args.export_amg, stages=stages,
                          base=args.base_model, progress=not args.no_progress, resume=not args.restart)  # fmt: skip
    if "export" in stages:
        echo(f"pipeline folder: {path}")
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="train the embedded V2A model, its bad models and its AMG variant")
    add_arguments(ap)
    run_from_args(ap.parse_args(argv))


if __name__ == "__main__":
    main()
