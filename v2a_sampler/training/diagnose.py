"""``v2a-train diagnose``: the autoguidance diagnostic (:mod:`v2a_sampler.diagnostics`) from the command line.

    v2a-train diagnose --good toy2d:good --bad toy2d:bad_small --data toy2d --trajectories none --out out/diag
    v2a-train diagnose --good toy2d_edm2:good --bad toy2d_edm2:bad --data toy2d_edm2 --out out/diag_edm2
    v2a-train diagnose --good embedded --bad embedded/bad --data synth_v2a --out out/diag_v2a
    v2a-train diagnose --good runs/good/iter-004096 --bad runs/good/iter-000512 --data held_out.safetensors --out d

Models: a model folder or Hugging Face repo id (``from_pretrained``), ``embedded`` / ``embedded/bad`` (the shipped
V2A pair), or a lab model ``toy2d:<good|bad_early|bad_small>`` / ``toy2d_edm2:<good|bad>``.

Data: ``toy2d`` / ``toy2d_edm2`` (the lab's exact data: exact errors and alignment, and ``--trajectories``),
``synth_v2a`` (held-out clips of the synthetic world, disjoint from the training seeds), or a ``.safetensors`` /
``.pt`` file holding ``x0`` (batch first) and one tensor per condition under its name (e.g. ``video``, ``label``).

Writes ``OUT/diagnostic.csv`` (one line per source and noise level), ``OUT/diagnostic.png`` and
``OUT/summary.txt``, and prints the table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

#: Held-out samples per data set (the lab's data is cheap; V2A clips are rendered once and cached).
DEFAULT_SAMPLES = {"toy2d": 4096, "toy2d_edm2": 4096, "synth_v2a": 256, "file": None}
#: Trajectories sampled per ``--trajectories`` entry.
DEFAULT_TRAJECTORIES = 2048
#: Seed offset of the trajectory noise (disjoint from the data-mode noise seed).
TRAJECTORY_SEED = 7919
EMBEDDED = "embedded"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register the ``diagnose`` subcommand on a ``v2a-train`` subparser collection."""
    p = sub.add_parser("diagnose", help="will a bad model help? w*, alignment and errors per noise level")
    p.add_argument("--good", required=True, help="model folder / repo id, 'embedded', 'toy2d:good', ...")
    p.add_argument("--bad", required=True, help="model folder / repo id, 'embedded/bad', 'toy2d:bad_small', ...")
    p.add_argument("--data", required=True, help="toy2d | toy2d_edm2 | synth_v2a | FILE.safetensors/.pt")
    p.add_argument("--n", type=int, default=None, help="held-out samples (default: 4096 lab, 256 clips V2A)")
    p.add_argument("--levels", type=int, default=None, help="noise levels, log-spaced (lab default: sampler grid)")
    p.add_argument("--sigma-min", type=float, default=0.002, help="lowest sigma/alpha of --levels")
    p.add_argument("--sigma-max", type=float, default=80.0, help="highest sigma/alpha of --levels")
    p.add_argument("--estimator", choices=("exact", "targets"), default=None, help="default: exact where known")
    p.add_argument(
        "--trajectories",
        action="append",
        metavar="GUIDANCE",
        help="also measure on the states sampling with GUIDANCE visits ('none', 'ag(2)', ...; lab data only)",
    )
    p.add_argument("--num-trajectories", type=int, default=DEFAULT_TRAJECTORIES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)
    return p


def load_model(spec: str) -> Any:
    """A denoiser from a command-line spec (see the module docstring)."""
    from ..models import from_pretrained

    family, sep, kind = spec.partition(":")
    if sep and family == "toy2d":
        from ..lab.toy2d import pretrained

        return pretrained(kind)
    if sep and family == "toy2d_edm2":
        from ..lab.edm2_toy import family_models

        models = family_models()
        if kind not in models or kind == "exact":
            raise ValueError(f"unknown toy2d_edm2 model {kind!r}; expected 'good' or 'bad'")
        return models[kind]
    if spec == EMBEDDED or spec.startswith(EMBEDDED + "/"):
        from ..models import embedded_model_path

        return from_pretrained(embedded_model_path(), subfolder=spec[len(EMBEDDED) + 1 :] or None)
    return from_pretrained(spec)


def load_data(spec: str, good: Any, n: int | None, seed: int) -> tuple[torch.Tensor, Any, Any, str]:
    """``(x0, cond, exact denoiser or None, kind)`` for a data spec."""
    gen = torch.Generator().manual_seed(seed)
    if spec in ("toy2d", "toy2d_edm2"):
        if spec == "toy2d":
            from ..lab.toy2d import make_toy2d

            toy = make_toy2d()
            x0, labels = toy.sample(n or DEFAULT_SAMPLES[spec], generator=gen)
        else:
            from ..lab.edm2_toy import CLASS_A, make_edm2_toy

            toy = make_edm2_toy()
            x0, labels = toy.sample(n or DEFAULT_SAMPLES[spec], CLASS_A, gen)
        return x0, {"label": labels}, toy.denoiser(good.prediction, good.schedule), spec
    if spec == "synth_v2a":
        return (*_synth_v2a(good, n or DEFAULT_SAMPLES[spec], gen), None, spec)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--data {spec!r} is neither a known data set (toy2d, toy2d_edm2, synth_v2a) nor a file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
    else:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    if "x0" not in tensors:
        raise ValueError(f"{path} holds no 'x0' tensor (found {sorted(tensors)})")
    x0 = tensors.pop("x0")
    if n is not None:
        x0, tensors = x0[:n], {k: v[:n] for k, v in tensors.items()}
    return x0, (tensors or None), None, "file"


def _synth_v2a(good: Any, n: int, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``n`` held-out clips of the synthetic world as normalised log-mel crops and their frames."""
    from ..training.synth_v2a import EVAL_SEED_OFFSET, build_synth_set, mel_video_ratio

    audio, video = getattr(good, "audio_spec", None), getattr(good, "video_spec", None)
    if audio is None or video is None or not audio.mel_mean:
        raise ValueError("--data synth_v2a needs a V2A model with audio/video specs and mel statistics")
    recipe = _recipe(good)
    data = build_synth_set(n, recipe.get("duration", 4.0), EVAL_SEED_OFFSET, audio, video, progress=False)
    crop = int(round(recipe.get("crop_seconds", 2.0) * video.fps))
    ratio = mel_video_ratio(audio, video)
    starts = torch.randint(data.frames.shape[1] - crop + 1, (n,), generator=gen).tolist()
    mels = torch.stack([data.mels[i, :, ratio * s : ratio * (s + crop)] for i, s in enumerate(starts)])
    frames = torch.stack([data.frames[i, s : s + crop] for i, s in enumerate(starts)])
    return audio.normalize(mels), {"video": frames}


def _recipe(model: Any) -> dict[str, Any]:
    """The training recipe recorded in a V2A model's ``config.json`` (empty if none)."""
    training = (getattr(model, "config", None) or {}).get("training") or {}
    recipe = training.get("recipe")
    return dict(recipe) if isinstance(recipe, dict) else {}


def lab_grid(kind: str, schedule: Any) -> list[float]:
    """The lab family's sampling grid (model times, without the final data end)."""
    if kind == "toy2d_edm2":
        from ..lab.edm2_toy import sampling_grid
    else:
        from ..lab.experiment import sampling_grid
    return sampling_grid(schedule)[:-1].tolist()


def lab_noise(kind: str, n: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Start noise and labels of lab trajectories (EDM2's family starts from noisy class-A data, as it samples)."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "toy2d_edm2":
        from ..lab.edm2_toy import CLASS_A, initial_noise

        return initial_noise(n, CLASS_A, gen), {"label": torch.full((n,), CLASS_A, dtype=torch.long)}
    labels = torch.randint(2, (n,), generator=gen)
    return torch.randn(n, 2, generator=gen), {"label": labels}


def run(args: argparse.Namespace) -> None:
    from ..diagnostics import DEFAULT_BATCH, default_levels, diagnose, diagnose_trajectories

    start = time.perf_counter()
    good, bad = load_model(args.good), load_model(args.bad)
    x0, cond, exact, kind = load_data(args.data, good, args.n, args.seed)
    lab = kind in ("toy2d", "toy2d_edm2")
    if args.levels:
        levels = default_levels(good.schedule, args.levels, args.sigma_min, args.sigma_max)
    elif lab:
        levels = lab_grid(kind, good.schedule)
    else:
        levels = default_levels(good.schedule, sigma_min=args.sigma_min, sigma_max=args.sigma_max)
    batch = args.batch_size or (DEFAULT_BATCH if lab else 16)
    report = diagnose(
        good, bad, x0, cond, levels=levels, exact=exact, estimator=args.estimator, seed=args.seed, batch_size=batch
    )
    for spec in args.trajectories or []:
        if exact is None:
            raise ValueError("--trajectories needs the exact denoiser: use it with --data toy2d or toy2d_edm2")
        noise, tcond = lab_noise(kind, args.num_trajectories, args.seed + TRAJECTORY_SEED)
        from ..lab.edm2_toy import sampling_grid as edm2_grid
        from ..lab.experiment import SOLVER
        from ..lab.experiment import sampling_grid as ours_grid

        grid = (edm2_grid if kind == "toy2d_edm2" else ours_grid)(good.schedule)
        report = report + diagnose_trajectories(
            good, bad, exact, noise, tcond, guidance=spec, solver=SOLVER, timesteps=grid, batch_size=batch
        )
    seconds = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report.to_csv(out / "diagnostic.csv")
    report.plot(out / "diagnostic.png", title=f"good {args.good} vs bad {args.bad} on {args.data}")
    text = report.summary() + f"\n{seconds:.1f} s for {x0.shape[0]} samples x {len(levels)} levels"
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    print(f"wrote {out / 'diagnostic.csv'}, {out / 'diagnostic.png'}")
