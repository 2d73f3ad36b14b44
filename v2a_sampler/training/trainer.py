"""A compact, seeded, resumable flow-matching trainer for :class:`~v2a_sampler.models.DenoiserModule` networks.

One :class:`TrainConfig` describes a run completely (architecture, data, objective, optimiser, EMA, checkpoints), so
a run can be repeated, resumed, shrunk (reduced-capacity bad models) or continued from a base model (fine-tunes).

A run directory holds one folder per saved iteration, ``iter-000512/``, each loadable with
:func:`~v2a_sampler.models.from_pretrained` (``model.safetensors`` holds the EMA weights when EMA is on). With
``save_training_state`` the folder also holds ``training_state.safetensors`` (raw weights, EMA, optimiser moments,
RNG states) and ``training_state.json`` (iteration, optimiser hyper-parameters, loss history) to resume from.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..models import DenoiserModule, architecture_name, build, from_pretrained, save_pretrained
from .data import DataSource, make_dataset
from .ema import EMA
from .objectives import T_SAMPLINGS, amg_weight_at, draw_batch_noise, drop_masks, flow_matching_loss

STATE_WEIGHTS = "training_state.safetensors"
STATE_JSON = "training_state.json"
CHECKPOINT_RE = re.compile(r"^iter-(\d+)$")
#: Config fields that may change when a run is resumed (they do not alter the iterations already done).
RESUMABLE_CHANGES = ("iterations", "checkpoint_at", "log_every", "save_training_state")


def checkpoint_name(iteration: int) -> str:
    return f"iter-{iteration:06d}"


@dataclass
class TrainConfig:
    """Everything that defines a training run (JSON round-trips through :meth:`to_dict` / :meth:`from_dict`)."""

    # what is trained, on what
    arch: str = "mlp"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "toy2d"
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    prediction: str = "velocity"
    schedule: dict[str, Any] = field(default_factory=lambda: {"type": "flow", "noise_at": 1.0})
    init_from: str | None = None  # a model folder / repo id whose weights start the run (fine-tuning)
    # length and optimiser (Adam(W))
    iterations: int = 4096
    batch_size: int = 2048
    lr: float = 2e-3
    lr_warmup: int = 0  # linear warm-up iterations
    lr_decay_start: int | None = None  # inverse-sqrt decay after this iteration (EDM2); None = constant
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    # objective
    t_sampling: str = "logit_normal"  # or "uniform" (noise level sigma / (alpha + sigma))
    t_mean: float = 0.0
    t_std: float = 1.0
    p_drop: float | dict[str, float] = 0.1  # per-condition dropout for CFG
    p_drop_all: float = 0.0  # extra probability of dropping all conditions together
    amg_weight: float | None = None  # MGAudio AMG weight w (None = plain flow matching)
    amg_warmup: int | None = None  # iterations at AMG weight 0 (None: iterations // 4)
    amg_ramp: int | None = None  # linear ramp length to amg_weight (None: iterations // 4)
    # averaging, seeding, output
    ema_std: float | None = 0.05  # power-function EMA (relative std); None = off unless ema_decay
    ema_decay: float | None = None  # constant-decay EMA instead
    seed: int = 0
    checkpoint_at: list[int] = field(default_factory=list)  # the last iteration is always saved
    save_training_state: bool = True
    log_every: int = 100

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self.checkpoint_at = sorted({int(i) for i in self.checkpoint_at})
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` on an inconsistent config."""
        if self.iterations < 1 or self.batch_size < 1:
            raise ValueError(f"iterations and batch_size must be >= 1, got {self.iterations}, {self.batch_size}")
        if self.t_sampling not in T_SAMPLINGS:
            raise ValueError(f"t_sampling must be one of {T_SAMPLINGS}, got {self.t_sampling!r}")
        if self.ema_std is not None and self.ema_decay is not None:
            raise ValueError("give at most one of ema_std and ema_decay")
        if self.amg_weight is not None and not self.amg_weight < 1.0:
            raise ValueError(f"amg_weight must be < 1 (the AMG fixed point needs 1 - w > 0), got {self.amg_weight}")
        bad = [i for i in self.checkpoint_at if not 1 <= i <= self.iterations]
        if bad:
            raise ValueError(f"checkpoint_at {bad} outside 1..{self.iterations}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers, got {self.betas}")

    @property
    def amg_schedule(self) -> tuple[int, int]:
        """``(warmup, ramp)`` iterations of the AMG weight schedule (see :func:`amg_weight_at`)."""
        warm = self.iterations // 4 if self.amg_warmup is None else self.amg_warmup
        ramp = self.iterations // 4 if self.amg_ramp is None else self.amg_ramp
        return warm, ramp

    def amg_weight_at(self, iteration: int) -> float:
        warm, ramp = self.amg_schedule
        return amg_weight_at(iteration, self.amg_weight, warm, ramp)

    def lr_at(self, iteration: int) -> float:
        """Learning rate at (0-based) ``iteration``: linear warm-up, then optional inverse-sqrt decay."""
        lr = self.lr
        if self.lr_warmup > 0:
            lr *= min(1.0, (iteration + 1) / self.lr_warmup)
        if self.lr_decay_start:
            lr /= math.sqrt(max(iteration / self.lr_decay_start, 1.0))
        return lr

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}")
        return cls(**dict(d))

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    model: DenoiserModule  # raw (last) weights
    ema: DenoiserModule | None  # averaged weights (None when EMA is off)
    config: TrainConfig
    history: list[dict[str, float]]
    checkpoints: dict[int, Path]
    out_dir: Path | None

    @property
    def denoiser(self) -> DenoiserModule:
        """The model to sample from: the EMA if any, else the raw weights (eval mode)."""
        return (self.ema if self.ema is not None else self.model).eval()


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint state <-> safetensors
# ---------------------------------------------------------------------------------------------------------------


def _optim_flatten(sd: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optim_unflatten(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for pid, vals in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(vals)
    return {"state": state, "param_groups": meta["param_groups"]}


def list_checkpoints(run_dir: str | Path, with_state: bool = False) -> dict[int, Path]:
    """``{iteration: folder}`` of the checkpoints in a run directory (optionally only resumable ones)."""
    out: dict[int, Path] = {}
    root = Path(run_dir)
    if not root.is_dir():
        return out
    for p in root.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir() and (p / "config.json").is_file() and (not with_state or (p / STATE_WEIGHTS).is_file()):
            out[int(m[1])] = p
    return dict(sorted(out.items()))


def _save_checkpoint(
    folder: Path,
    step: int,
    cfg: TrainConfig,
    model: DenoiserModule,
    ema: EMA | None,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    history: list[dict[str, float]],
) -> None:
    export = ema.module if ema is not None else model
    amg_now = cfg.amg_weight_at(step - 1)
    export.set_protocol(amg_weight=amg_now if amg_now else None)
    meta = {
        "iteration": step,
        "loss": history[-1]["loss"] if history else None,
        "weights": "ema" if ema is not None else "raw",
        "ema": ema.describe() if ema is not None else None,
        "amg_weight_now": amg_now,
        "config": cfg.to_dict(),
    }
    save_pretrained(export, folder, {"training": meta})
    if not cfg.save_training_state:
        return
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.module.state_dict().items()})
    opt_tensors, opt_meta = _optim_flatten(opt.state_dict())
    tensors.update(opt_tensors)
    tensors["rng.generator"] = gen.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(folder / STATE_WEIGHTS))
    state = {"iteration": step, "optimizer": opt_meta, "history": history, "config": cfg.to_dict()}
    (folder / STATE_JSON).write_text(json.dumps(state, indent=1) + "\n")


def _check_resume(saved: Mapping[str, Any], cfg: TrainConfig, folder: Path) -> None:
    old = {k: v for k, v in saved.items() if k not in RESUMABLE_CHANGES}
    new = {k: v for k, v in cfg.to_dict().items() if k not in RESUMABLE_CHANGES}
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        raise ValueError(f"cannot resume from {folder}: config differs in {diff} (only {RESUMABLE_CHANGES} may change)")


# ---------------------------------------------------------------------------------------------------------------
# Model construction
# ---------------------------------------------------------------------------------------------------------------


def _deepen_to(base: DenoiserModule, cfg: TrainConfig) -> DenoiserModule:
    """``base`` grown to the config's ``depth`` when that is all that differs and the network can grow
    (``deepened(depth)``, function-preserving: :meth:`~v2a_sampler.models.v2a_flow.V2AFlow.deepened`)."""
    mine, wanted = dict(base.arch_kwargs), dict(cfg.arch_kwargs or {})
    grow = getattr(base, "deepened", None)
    if grow is None or "depth" not in wanted or wanted.get("depth") == mine.get("depth"):
        return base
    if {k: v for k, v in mine.items() if k != "depth"} != {k: v for k, v in wanted.items() if k != "depth"}:
        return base  # other differences: reported by the caller
    return grow(int(wanted["depth"]))


def build_model(cfg: TrainConfig) -> DenoiserModule:
    """The initial network of a run: seeded fresh init, or the weights of ``cfg.init_from`` (a shallower network
    of the same architecture is deepened with identity blocks when the network supports it)."""
    if cfg.init_from is None:
        torch.manual_seed(cfg.seed)
        return build(cfg.arch, cfg.arch_kwargs, cfg.prediction, cfg.schedule)
    base = from_pretrained(cfg.init_from)
    base = _deepen_to(base, cfg)
    if architecture_name(base) != cfg.arch or (cfg.arch_kwargs and base.arch_kwargs != dict(cfg.arch_kwargs)):
        raise ValueError(
            f"init_from {cfg.init_from!r} is {architecture_name(base)} {base.arch_kwargs}, but the config asks for "
            f"{cfg.arch} {cfg.arch_kwargs}"
        )
    if base.prediction.value != cfg.prediction or base.schedule.to_dict() != dict(cfg.schedule):
        raise ValueError(
            f"init_from {cfg.init_from!r} predicts {base.prediction.value} on {base.schedule.to_dict()}, but the "
            f"config asks for {cfg.prediction} on {cfg.schedule}"
        )
    return base.set_protocol(amg_weight=None)


# ---------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------


def _progress(enabled: bool, total: int, start: int, description: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )
    task = bar.add_task(description, total=total, completed=start, loss="-")
    return bar, task


def train(
    config: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    model: DenoiserModule | None = None,
    data: DataSource | None = None,
    resume: bool = False,
    progress: bool = True,
    device: torch.device | str = "cpu",
    description: str | None = None,
) -> TrainResult:
    """Train a denoiser with flow matching (+ optional AMG) and save checkpoints to ``out_dir``.

    Args:
        config: the run.
        out_dir: run directory for ``iter-NNNNNN/`` checkpoints (None: nothing is written).
        model: a module to train instead of building ``config.arch`` (its class must be registered to be saved).
        data: a data source instead of the registered ``config.data``.
        resume: continue from the latest resumable checkpoint in ``out_dir`` (bit-identical to an uninterrupted run).
        progress: show a progress bar.
    """
    cfg = config
    out = Path(out_dir) if out_dir is not None else None
    if resume and out is None:
        raise ValueError("resume=True needs out_dir")
    model = build_model(cfg) if model is None else model
    model.to(device).train().requires_grad_(True)
    data = make_dataset(cfg.data, **cfg.data_kwargs) if data is None else data
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    ema = None
    if cfg.ema_std is not None or cfg.ema_decay is not None:
        ema = EMA(model, std=cfg.ema_std, decay=cfg.ema_decay)
    history: list[dict[str, float]] = []
    start = 0
    if resume:
        assert out is not None
        saved = list_checkpoints(out, with_state=True)
        if saved:
            start, folder = max(saved.items())
            state = json.loads((folder / STATE_JSON).read_text())
            _check_resume(state["config"], cfg, folder)
            tensors = load_file(str(folder / STATE_WEIGHTS))
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            if ema is not None:
                ema.module.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
            opt.load_state_dict(_optim_unflatten(tensors, state["optimizer"]))
            gen.set_state(tensors["rng.generator"])
            torch.set_rng_state(tensors["rng.torch"])
            history = list(state["history"])
        if start >= cfg.iterations:
            raise ValueError(f"{out} already holds iteration {start} >= iterations={cfg.iterations}; nothing to do")
    checkpoints = list_checkpoints(out) if out is not None else {}
    names = tuple(model.condition_names)
    dtype = next(model.parameters()).dtype
    window: list[float] = []
    bar, task = _progress(progress, cfg.iterations, start, description or f"train {cfg.arch}")
    with bar:
        for it in range(start, cfg.iterations):
            lr = cfg.lr_at(it)
            for group in opt.param_groups:
                group["lr"] = lr
            x0, cond = data(cfg.batch_size, gen)
            x0 = x0.to(device=device, dtype=dtype)
            if cond is not None:
                cond = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
            eps, t = draw_batch_noise(x0, model, cfg.t_sampling, cfg.t_mean, cfg.t_std, gen)
            masks = drop_masks(x0.shape[0], names, cfg.p_drop, cfg.p_drop_all, gen) if names else {}
            w = cfg.amg_weight_at(it)
            loss = flow_matching_loss(model, x0, cond, eps, t, masks, w).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            step = it + 1
            if ema is not None:
                ema.update(model, step)
            window.append(float(loss.detach()))
            if step % cfg.log_every == 0 or step == cfg.iterations:
                history.append({"iteration": step, "loss": sum(window) / len(window), "lr": lr, "amg_weight": w})
                window = []
                bar.update(task, loss=f"{history[-1]['loss']:.4f}")
            bar.update(task, completed=step)
            if out is not None and (step in cfg.checkpoint_at or step == cfg.iterations):
                folder = out / checkpoint_name(step)
                _save_checkpoint(folder, step, cfg, model, ema, opt, gen, history)
                checkpoints[step] = folder
    final_amg = cfg.amg_weight_at(cfg.iterations - 1)
    for m in (model, ema.module if ema is not None else None):
        if m is not None:
            m.set_protocol(amg_weight=final_amg if final_amg else None)
    model.eval()
    return TrainResult(
        model=model,
        ema=ema.module if ema is not None else None,
        config=cfg,
        history=history,
        checkpoints=dict(sorted(checkpoints.items())),
        out_dir=out,
    )


@torch.no_grad()
def evaluate_loss(
    model: Any,
    data: DataSource,
    num_samples: int = 16384,
    batch_size: int = 4096,
    seed: int = 1234,
    t_sampling: str = "uniform",
    t_mean: float = 0.0,
    t_std: float = 1.0,
    drop: bool = False,
) -> float:
    """Held-out flow-matching loss on fresh data with a fixed seed: the same ``(x0, eps, t)`` for every model.

    ``drop=True`` evaluates the unconditional branch (every condition dropped), otherwise the conditional one.
    """
    gen = torch.Generator().manual_seed(seed)
    names = frozenset(model.condition_names)
    dtype = next(model.parameters()).dtype if isinstance(model, torch.nn.Module) else torch.float32
    total, count = 0.0, 0
    while count < num_samples:
        n = min(batch_size, num_samples - count)
        x0, cond = data(n, gen)
        x0 = x0.to(dtype)
        eps, t = draw_batch_noise(x0, model, t_sampling, t_mean, t_std, gen)
        masks = {k: torch.full((n,), drop) for k in names}
        total += float(flow_matching_loss(model, x0, cond, eps, t, masks).loss) * n
        count += n
    return total / num_samples
