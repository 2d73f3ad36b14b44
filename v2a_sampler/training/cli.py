"""``v2a-train``: train denoisers and make bad models from the command line.

Examples::

    v2a-train fit --data toy2d --arch mlp --arch-kw hidden_dim=64 --iters 4096 --checkpoint-at 512 --out runs/good
    v2a-train earlier --run runs/good --iter 512 --out models/bad_early
    v2a-train reduced --from runs/good --arch-kw hidden_dim=32 --iters 512 --out runs/small
    v2a-train finetune --base runs/good/iter-004096 --iters 256 --set lr=5e-4 --out runs/ft
    v2a-train fit --config runs/good/iter-004096/config.json --amg-weight 0.5 --out runs/amg
    v2a-train --threads 1 toy2d --out models/toy2d   # the 2D lab's good + bad models
    v2a-train --threads 1 toy2d --family edm2 --out models/toy2d_edm2   # the EDM2-faithful lab family
    v2a-train v2a --out runs/v2a2 --export my_pipeline      # the embedded model's recipe (all stages, resumable)
    v2a-train show runs/good/iter-004096
    v2a-train diagnose --good toy2d:good --bad toy2d:bad_small --data toy2d --out out/diag   # will AG help?

Every model folder written loads with ``v2a_sampler.models.from_pretrained``. Also runs as
``python -m v2a_sampler.training``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .trainer import TrainConfig, TrainResult

# Command-line flags that map one-to-one onto TrainConfig fields: flag -> (field, type).
_FLAGS: dict[str, tuple[str, type]] = {
    "--arch": ("arch", str),
    "--data": ("data", str),
    "--iters": ("iterations", int),
    "--batch": ("batch_size", int),
    "--lr": ("lr", float),
    "--seed": ("seed", int),
    "--p-drop": ("p_drop", float),
    "--p-drop-all": ("p_drop_all", float),
    "--t-sampling": ("t_sampling", str),
    "--t-mean": ("t_mean", float),
    "--t-std": ("t_std", float),
    "--amg-weight": ("amg_weight", float),
    "--amg-warmup": ("amg_warmup", int),
    "--amg-ramp": ("amg_ramp", int),
    "--ema-std": ("ema_std", float),
}


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _pairs(items: Sequence[str] | None, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} expects key=value, got {item!r}")
        out[key.strip().replace("-", "_") if what == "--set" else key.strip()] = _value(val)
    return out


def _add_config_flags(p: argparse.ArgumentParser, with_arch: bool = True) -> None:
    for flag, (field, typ) in _FLAGS.items():
        if not with_arch and field in ("arch",):
            continue
        p.add_argument(flag, dest=field, type=typ, default=None, help=f"TrainConfig.{field}")
    if with_arch:
        p.add_argument("--arch-kw", action="append", metavar="K=V", help="architecture constructor argument")
    p.add_argument("--data-kw", action="append", metavar="K=V", help="data source argument")
    p.add_argument("--checkpoint-at", default=None, help="comma-separated iterations to save (last always saved)")
    p.add_argument("--set", action="append", metavar="K=V", help="any other TrainConfig field (JSON values)")
    p.add_argument("--no-state", action="store_true", help="do not save optimiser/RNG state (not resumable)")


def _config_changes(args: argparse.Namespace) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for field, _ in _FLAGS.values():
        val = getattr(args, field, None)
        if val is not None:
            changes[field] = val
    if getattr(args, "arch_kw", None):
        changes["arch_kwargs"] = _pairs(args.arch_kw, "--arch-kw")
    if args.data_kw:
        changes["data_kwargs"] = _pairs(args.data_kw, "--data-kw")
    if args.checkpoint_at:
        changes["checkpoint_at"] = [int(v) for v in str(args.checkpoint_at).split(",") if v.strip()]
    if args.no_state:
        changes["save_training_state"] = False
    changes.update(_pairs(args.set, "--set"))
    return changes


def _load_config_file(path: str | None) -> TrainConfig:
    if path is None:
        return TrainConfig()
    d = json.loads(Path(path).read_text())
    if "training" in d and isinstance(d["training"], dict) and "config" in d["training"]:
        d = d["training"]["config"]  # a model folder's config.json
    elif "config" in d and "iteration" in d:
        d = d["config"]  # a training_state.json
    return TrainConfig.from_dict(d)


def _report(result: TrainResult) -> None:
    last = result.history[-1] if result.history else {}
    print(f"trained {result.config.arch} {result.config.arch_kwargs}: final loss {last.get('loss', float('nan')):.5f}")
    for it, folder in result.checkpoints.items():
        print(f"  iter {it}: {folder}")


def _cmd_fit(args: argparse.Namespace) -> None:
    from .trainer import train

    base = _load_config_file(args.config)
    changes = _config_changes(args)
    if "arch_kwargs" in changes:
        changes["arch_kwargs"] = {**base.arch_kwargs, **changes["arch_kwargs"]}
    if "iterations" in changes and "checkpoint_at" not in changes:  # a shorter run keeps the checkpoints that fit
        changes["checkpoint_at"] = [i for i in base.checkpoint_at if i <= changes["iterations"]]
    cfg = base.replace(**changes)
    _report(train(cfg, args.out, resume=args.resume, progress=not args.no_progress))


def _cmd_earlier(args: argparse.Namespace) -> None:
    from .bad import earlier_checkpoint

    earlier_checkpoint(args.run, args.iter, out=args.out)
    print(f"bad model (iteration {args.iter} of {args.run}) -> {args.out}")


def _cmd_reduced(args: argparse.Namespace) -> None:
    from .bad import train_reduced

    arch = _pairs(args.arch_kw, "--arch-kw")
    _report(
        train_reduced(args.source, args.out, iterations=args.iters, arch_overrides=arch, progress=not args.no_progress)
    )


def _cmd_finetune(args: argparse.Namespace) -> None:
    from .bad import finetune

    changes = _config_changes(args)
    for key in ("iterations", "data", "data_kwargs"):
        changes.pop(key, None)
    result = finetune(
        args.base,
        args.out,
        iterations=args.iterations if args.iterations is not None else 256,
        data=args.data,
        data_kwargs=_pairs(args.data_kw, "--data-kw") if args.data_kw else None,
        progress=not args.no_progress,
        **changes,
    )
    _report(result)


def _cmd_toy2d(args: argparse.Namespace) -> None:
    from .edm2_recipe import train_family
    from .lab_recipes import train_lab_models

    trainer = train_family if args.family == "edm2" else train_lab_models
    for kind, path in trainer(args.out, progress=not args.no_progress).items():
        print(f"{kind}: {path}")


def _cmd_v2a(args: argparse.Namespace) -> None:
    from .v2a_recipe import run_from_args

    run_from_args(args)


def _cmd_show(args: argparse.Namespace) -> None:
    from ..models import load_config

    cfg = load_config(args.path)
    summary = {k: v for k, v in cfg.items() if k != "training"}
    train_meta = cfg.get("training") or {}
    summary["training"] = {k: v for k, v in train_meta.items() if k != "config"}
    print(json.dumps(summary, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="v2a-train", description="Train denoisers and make bad models.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (small models train fastest on 1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="train a model (flow matching, optional AMG)")
    p.add_argument("--config", help="TrainConfig JSON (or a model folder's config.json) to start from")
    _add_config_flags(p)
    p.add_argument("--out", required=True, help="run directory for iter-NNNNNN checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the latest resumable checkpoint in --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("earlier", help="bad model: an earlier checkpoint of a run")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--iter", required=True, type=int, help="iteration of the checkpoint")
    p.add_argument("--out", required=True, help="model folder to write")
    p.set_defaults(func=_cmd_earlier)

    p = sub.add_parser("reduced", help="bad model: the same recipe, smaller and/or shorter")
    p.add_argument("--from", dest="source", required=True, help="run directory or model folder of the base run")
    p.add_argument("--arch-kw", action="append", metavar="K=V", help="architecture override, e.g. hidden_dim=32")
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_reduced)

    p = sub.add_parser("finetune", help="bad (or good) model: a short fine-tune from a base model")
    p.add_argument("--base", required=True, help="model folder or Hugging Face repo id")
    _add_config_flags(p, with_arch=False)
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("toy2d", help="train the 2D lab's models (ours: good + 2 bad; edm2: good, bad, uncond)")
    p.add_argument("--out", required=True)
    p.add_argument("--family", choices=("ours", "edm2"), default="ours", help="which lab family (default: ours)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_toy2d)

    p = sub.add_parser("v2a", help="the embedded V2A model, its bad-model candidates and AMG variant (shipped recipe)")
    from .v2a_recipe import add_arguments as add_v2a_arguments

    add_v2a_arguments(p)
    p.set_defaults(func=_cmd_v2a)

    from .diagnose import add_parser as add_diagnose

    add_diagnose(sub)

    p = sub.add_parser("show", help="print a model folder's config and training metadata")
    p.add_argument("path")
    p.set_defaults(func=_cmd_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``v2a-train``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError, TypeError) as e:
        print(f"v2a-train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
