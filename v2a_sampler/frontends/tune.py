"""``v2a-tune``: the best weights of a guidance family for a pipeline at an NFE budget, found on validation clips.

    v2a-tune val/manifest.jsonl --family hg --budget 100 --out tuned/     # or: --synthetic 16 (embedded model)
    v2a-tune --synthetic 8 --family cfg --budget 32 --quick --out tuned/  # a few minutes on 2 CPU cores

Search: coordinate search over the family's weights (each on a grid: :data:`RANGES` or ``--grid w1=1:5:9``), and
for every coordinate **successive halving** over validation units (clip x seed): all grid values are scored on a few
units, the better ``1/eta`` of them on ``eta`` times as many, and so on until one is left (it is scored on all
units). Every generated track is cached, so a candidate never pays twice for a unit. The number of steps is the most
the budget affords with the family's NFE per step (the solver registry's arithmetic). The papers report convex
optima in the weights; the *curve* around the optimum (each weight swept on its grid with the others at the
optimum, on all units) is reported with paired bootstrap intervals of the difference to the optimum.

Validation data: a manifest (``.jsonl``/``.csv`` as for manifest runs; events sidecars ``<video>.events.json``
beside the videos or an ``events`` column, reference audio in an ``audio`` column for ``fd``/``kid``), or
``--synthetic N`` clips of the procedural world drawn from :data:`VALIDATION_SEED_OFFSET` (disjoint from the
training clips and from the benchmarks' test clips). Metrics: ``onset_f1`` (default), ``class_accuracy``, ``fd``,
``kid`` (:mod:`v2a_sampler.metrics.stats`).

Writes ``OUT/best.json`` (the winning spec, its score, steps and NFE), ``OUT/search.csv`` (every scored candidate
with the units it was scored on), ``OUT/curve.csv`` and ``OUT/curve.png``.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console

from ..core import guidance as G
from ..core.solvers import get_solver
from ..errors import error_line
from ..media import io
from ..metrics.stats import METRICS, ClipScores, clip_scores, paired_bootstrap, pooled, reference_windows
from ..pipelines.base import V2APipeline
from ..pipelines.config import RunConfig
from .common import EXIT_RUNTIME, EXIT_USAGE

#: Synthetic validation clips are drawn from these seeds (training uses 0.., the benchmarks' test clips
#: EVAL_SEED_OFFSET + 500.. and + 900..).
VALIDATION_SEED_OFFSET = 2_000_000
#: Default search grid per family weight: (low, high, points).
RANGES: dict[str, dict[str, tuple[float, float, int]]] = {
    "cfg": {"w": (1.0, 7.0, 9)},
    "ag": {"w": (1.0, 4.0, 7)},
    "pg": {"w1": (1.0, 5.0, 9), "w2": (0.0, 1.5, 7)},
    "hg": {"w1": (1.0, 5.0, 9), "w2": (1.0, 5.0, 9), "w3": (0.6, 2.4, 7)},
}
QUICK_POINTS = 3  # grid points per weight with --quick
SEED_STRIDE = 1000  # unit seeds: clip i, seed s -> base + SEED_STRIDE * s + i


@dataclass
class ValidationClip:
    frames: Any
    duration: float
    events: list[dict[str, Any]]
    name: str


@dataclass
class ValidationSet:
    """Clips (frames read once), their ground-truth events, and the reference windows of real audio."""

    clips: list[ValidationClip]
    reference: torch.Tensor | None = None

    @classmethod
    def synthetic(cls, pipe: V2APipeline, n: int, duration: float = 4.0, offset: int = VALIDATION_SEED_OFFSET):
        """``n`` clips of the procedural world (seeds ``offset + i``), the references ``n`` other clips' audio."""
        from ..media.specs import resize_frames
        from ..synth import make_clip
        from ..training.synth_v2a import RENDER_SIZE

        fps = getattr(getattr(pipe, "video_spec", None), "fps", 25.0)
        size = getattr(getattr(pipe, "video_spec", None), "frame_size", 32) * 3
        clips = []
        for i in range(n):
            c = make_clip(offset + i, duration=duration, fps=fps, size=RENDER_SIZE)
            frames = resize_frames(torch.from_numpy(c.frames), size)
            clips.append(ValidationClip(frames, duration, list(c.events), f"val-{offset + i}"))
        refs = [make_clip(offset + 500_000 + i, duration=duration, fps=fps, size=32) for i in range(n)]
        return cls(clips, reference_windows([(r.audio, r.sample_rate) for r in refs]))

    @classmethod
    def from_manifest(cls, path: str | Path, pipe: V2APipeline, duration: float | None = None) -> ValidationSet:
        """The rows of a manifest: frames via the pipeline, events from sidecars or an ``events`` column."""
        from .datagen import read_manifest
        from .evaluate import EVENTS_SUFFIX, _load_events

        man = read_manifest(path)
        clips, audio = [], []
        for row in man.rows:
            sidecar = Path(str(row.extra.get("events"))) if row.extra.get("events") else None
            sidecar = (
                (row.base / sidecar) if sidecar is not None else row.video.with_name(row.video.stem + EVENTS_SUFFIX)
            )
            if not sidecar.is_file():
                raise io.V2AInputError(f"no events for {row.source}: expected {sidecar}")
            frames, seconds = pipe.load_video(row.video, row.duration or duration)
            clips.append(ValidationClip(frames, seconds, _load_events(sidecar), row.default_name))
            if row.extra.get("audio"):
                wave, rate = io.read_audio(row.base / str(row.extra["audio"]))
                audio.append((wave.mean(0).numpy() if wave.ndim > 1 else wave.numpy(), rate))
        return cls(clips, reference_windows(audio) if audio else None)


@dataclass(frozen=True)
class SearchSpace:
    """The family (a preset name), a candidate grid per weight, and an optional fixed noise-level interval."""

    family: str
    grid: Mapping[str, tuple[float, ...]]
    interval: tuple[float, float] | None = None

    @classmethod
    def default(cls, family: str, points: int | None = None, interval: tuple[float, float] | None = None):
        if family not in RANGES:
            raise ValueError(f"unknown guidance family {family!r}; tunable: {', '.join(RANGES)}")
        grid = {}
        for name, (lo, hi, n) in RANGES[family].items():
            grid[name] = _linspace(lo, hi, points or n)
        return cls(family, grid, interval)

    def spec(self, weights: Mapping[str, float]) -> G.Guidance:
        preset = G.PRESETS[self.family]
        g = preset(*(weights[p.name] for p in preset.weights))
        return G.interval(g, *self.interval) if self.interval else g

    @property
    def defaults(self) -> dict[str, float]:
        preset = G.PRESETS[self.family]
        out = {}
        for p in preset.weights:  # the paper default, snapped to the grid
            out[p.name] = min(self.grid[p.name], key=lambda v, d=p.default: abs(v - d))
        return out


def _linspace(lo: float, hi: float, n: int) -> tuple[float, ...]:
    if n < 2:
        return (round((lo + hi) / 2, 6),)
    return tuple(round(lo + (hi - lo) * k / (n - 1), 6) for k in range(n))


def parse_grid(items: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """``["w1=1:5:9", "w3=0.8,1.2,1.6"]`` -> grids (``lo:hi:points`` or a comma list)."""
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--grid expects NAME=LO:HI:POINTS or NAME=V1,V2,..., got {item!r}")
        try:
            if ":" in text:
                lo, hi, n = text.split(":")
                out[name.strip()] = _linspace(float(lo), float(hi), int(n))
            else:
                out[name.strip()] = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"--grid {item!r}: numbers expected") from None
    return out


@dataclass
class TuneResult:
    """The winner and everything measured on the way."""

    best: G.Guidance
    weights: dict[str, float]
    score: float
    metric: str
    steps: int
    nfe: int
    units: int
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    curve: list[dict[str, Any]] = field(default_factory=list)
    nfe_spent: int = 0
    seconds: float = 0.0


class _Scorer:
    """Generates and scores (spec, unit) pairs once each; a unit is (clip index, seed index)."""

    def __init__(self, pipe, data, solver, budget, metric, seed, options, on_generate=None) -> None:
        self.pipe, self.data, self.solver, self.budget, self.metric = pipe, data, solver, budget, metric
        self.seed, self.options, self.on_generate = seed, options, on_generate
        self.cache: dict[tuple[str, int, int], ClipScores] = {}
        self.nfe_spent = 0
        self.plans: dict[str, Any] = {}

    def plan(self, g: G.Guidance):
        key = g.spec()
        if key not in self.plans:
            steps = get_solver(self.solver).steps_for_budget(self.budget, g.nfe_per_step)
            if steps is None:
                raise ValueError(f"an NFE budget of {self.budget} cannot pay one {self.solver} step of {key}")
            self.plans[key] = self.pipe.plan(RunConfig(guidance=g, solver=self.solver, steps=steps,
                                                       options=self.options))  # fmt: skip
        return self.plans[key]

    def scores(self, g: G.Guidance, units: Sequence[tuple[int, int]]) -> ClipScores:
        plan, key = self.plan(g), g.spec()
        todo = [u for u in units if (key, *u) not in self.cache]
        by_seed: dict[int, list[int]] = {}
        for c, s in todo:
            by_seed.setdefault(s, []).append(c)
        for s, clips in by_seed.items():
            videos = [self.data.clips[c].frames for c in clips]
            seeds = [self.seed + SEED_STRIDE * s + c for c in clips]
            outs = self.pipe.generate(videos, plan, seed=seeds, duration=self.data.clips[clips[0]].duration)
            for c, audio in zip(clips, outs, strict=True):
                sc = clip_scores([[(audio.waveform.numpy(), audio.sample_rate)]], [self.data.clips[c].events])
                self.cache[(key, c, s)] = sc
                self.nfe_spent += int(audio.info["nfe"])
            if self.on_generate is not None:
                self.on_generate(len(clips))
        parts = [self.cache[(key, *u)] for u in units]
        return ClipScores([p.onsets[0] for p in parts], [p.class_correct[0] for p in parts],
                          [p.class_total[0] for p in parts], [p.windows[0] for p in parts])  # fmt: skip

    def value(self, g: G.Guidance, units: Sequence[tuple[int, int]]) -> float:
        return float(pooled(self.scores(g, units), self.metric, self.data.reference))


def tune(
    pipe: V2APipeline,
    data: ValidationSet,
    family: str = "hg",
    budget: int = 100,
    solver: str = "euler",
    metric: str = "onset_f1",
    seeds: int = 2,
    space: SearchSpace | None = None,
    passes: int = 2,
    eta: int = 2,
    min_units: int = 4,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    on_generate: Callable[[int], None] | None = None,
) -> TuneResult:
    """Coordinate search with successive halving (see the module docstring) for ``family`` at ``budget`` NFE."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    if metric in ("fd", "kid") and data.reference is None:
        raise ValueError(f"metric {metric} needs reference audio (an 'audio' column, or --synthetic)")
    if not data.clips:
        raise ValueError("no validation clips")
    higher = METRICS[metric]
    space = space or SearchSpace.default(family)
    t0 = time.perf_counter()
    scorer = _Scorer(pipe, data, solver, budget, metric, seed, dict(options or {}), on_generate)
    all_units = [(c, s) for s in range(seeds) for c in range(len(data.clips))]
    current = space.defaults
    evaluations: list[dict[str, Any]] = []

    def better(a: float, b: float) -> bool:
        return (a > b) if higher else (a < b)

    for _ in range(passes):
        changed = False
        for name, values in space.grid.items():
            survivors = list(dict.fromkeys(values))
            n_units = min(len(all_units), min_units)
            while True:
                units = all_units[:n_units]
                scored = []
                for v in survivors:
                    g = space.spec({**current, name: v})
                    val = scorer.value(g, units)
                    scored.append((val, v))
                    evaluations.append({"param": name, "value": v, "spec": g.spec(), "units": len(units),
                                        metric: val})  # fmt: skip
                scored.sort(key=lambda sv: -sv[0] if higher else sv[0])
                if len(survivors) == 1 or n_units == len(all_units):
                    break
                survivors = [v for _, v in scored[: max(1, math.ceil(len(scored) / eta))]]
                n_units = min(len(all_units), n_units * eta)
            best_value = scored[0][1]
            if best_value != current[name]:
                changed = True
            current[name] = best_value
        if not changed:
            break
    best = space.spec(current)
    score = scorer.value(best, all_units)
    full = scorer.scores(best, all_units)
    curve = []
    for name, values in space.grid.items():
        for v in values:
            g = space.spec({**current, name: v})
            other = scorer.scores(g, all_units)
            value = pooled(other, metric, data.reference)
            if v == current[name]:
                diff, lo, hi, significant = 0.0, 0.0, 0.0, False
            elif len(full) < 2:  # one validation unit: a difference, but no interval to put around it
                diff, lo, hi, significant = value - pooled(full, metric, data.reference), math.nan, math.nan, False
            else:
                cmp = paired_bootstrap(full, other, metric, data.reference, n_boot=500)
                diff, lo, hi, significant = cmp.diff, cmp.lo, cmp.hi, cmp.significant
            curve.append({"param": name, "value": v, "spec": g.spec(), metric: value, "diff": diff, "lo": lo,
                          "hi": hi, "significant": significant})  # fmt: skip
    plan = scorer.plan(best)
    return TuneResult(best, dict(current), score, metric, plan.steps, plan.nfe, len(all_units), evaluations, curve,
                      scorer.nfe_spent, time.perf_counter() - t0)  # fmt: skip


def write_report(result: TuneResult, out: str | Path) -> list[Path]:
    """``best.json``, ``search.csv``, ``curve.csv`` and (with matplotlib) ``curve.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    best = {"spec": result.best.spec(), "weights": result.weights, "metric": result.metric, "score": result.score,
            "steps": result.steps, "nfe_per_clip": result.nfe, "units": result.units,
            "nfe_spent": result.nfe_spent, "seconds": round(result.seconds, 1)}  # fmt: skip
    paths = [out / "best.json", out / "search.csv", out / "curve.csv"]
    paths[0].write_text(json.dumps(best, indent=1) + "\n")
    for path, rows in ((paths[1], result.evaluations), (paths[2], result.curve)):
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths
    names = list(dict.fromkeys(r["param"] for r in result.curve))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        rows = [r for r in result.curve if r["param"] == name]
        xs = [r["value"] for r in rows]
        ys = [r[result.metric] for r in rows]
        err = [[r["diff"] - r["lo"] for r in rows], [r["hi"] - r["diff"] for r in rows]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=2)
        ax.axvline(result.weights[name], color="grey", ls=":")
        ax.set_xlabel(name)
        ax.set_ylabel(result.metric)
    bars = ("bars: 95 % paired bootstrap interval of the difference to the optimum" if result.units >= 2
            else "one unit: no intervals")  # fmt: skip
    fig.suptitle(f"{result.best.spec()}: {result.metric} on {result.units} validation units\n({bars})", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=100)
    plt.close(fig)
    return [*paths, out / "curve.png"]


_err = Console(stderr=True, highlight=False, soft_wrap=True)
_out = Console(highlight=False, soft_wrap=True)
app = typer.Typer(add_completion=False, rich_markup_mode=None)


@app.command()
def main(
    manifest: Annotated[
        Path | None, typer.Argument(help="Validation manifest (.jsonl/.csv).", show_default=False)
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("tuned"),
    family: Annotated[str, typer.Option(help=f"Guidance family: {', '.join(RANGES)}.")] = "hg",
    budget: Annotated[int, typer.Option(min=1, help="NFE per clip.")] = 100,
    solver: Annotated[str, typer.Option(help="Solver (the registry's names).")] = "euler",
    metric: Annotated[str, typer.Option(help=f"One of {', '.join(METRICS)}.")] = "onset_f1",
    seeds: Annotated[int, typer.Option(min=1, help="Noise seeds per clip.")] = 2,
    synthetic: Annotated[int | None, typer.Option(help="Use N synthetic validation clips.", show_default=False)] = None,
    duration: Annotated[float, typer.Option(help="Seconds per synthetic clip.")] = 4.0,
    grid: Annotated[list[str] | None, typer.Option(help="NAME=LO:HI:POINTS or NAME=V1,V2 (repeatable).")] = None,
    interval: Annotated[str | None, typer.Option(help="Fixed noise-level interval LO,HI.", show_default=False)] = None,
    model: Annotated[str | None, typer.Option(help="Model (as v2a-sample --model).", show_default=False)] = None,
    bad_model: Annotated[str | None, typer.Option(help="Bad model (as v2a-sample).", show_default=False)] = None,
    quick: Annotated[bool, typer.Option("--quick", help=f"{QUICK_POINTS} grid points per weight, one pass.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing report.")] = False,
) -> None:
    """Tune a guidance family's weights at an NFE budget on validation clips; write the winner and the curve."""
    try:
        if (manifest is None) == (synthetic is None):
            raise ValueError("give a validation manifest or --synthetic N (not both)")
        if (out / "best.json").exists() and not overwrite:
            raise ValueError(f"{out / 'best.json'} exists (pass --overwrite to replace it)")
        lo_hi = tuple(float(v) for v in interval.split(",")) if interval else None
        if lo_hi is not None and len(lo_hi) != 2:
            raise ValueError("--interval expects LO,HI")
        space = SearchSpace.default(family, QUICK_POINTS if quick else None, lo_hi)  # type: ignore[arg-type]
        if grid:
            custom = parse_grid(grid)
            unknown = set(custom) - set(space.grid)
            if unknown:
                raise ValueError(
                    f"{family} has no weight {', '.join(sorted(unknown))}; weights: {', '.join(space.grid)}"
                )
            space = SearchSpace(family, {**space.grid, **custom}, lo_hi)  # type: ignore[arg-type]
        get_solver(solver)
        from ..pipelines.loader import load_pipeline

        pipe = load_pipeline(RunConfig(model=model, bad_model=bad_model))
        data = (ValidationSet.synthetic(pipe, synthetic, duration) if synthetic is not None
                else ValidationSet.from_manifest(manifest, pipe))  # type: ignore[arg-type]  # fmt: skip
        result = tune(pipe, data, family, budget, solver, metric, seeds, space, passes=1 if quick else 2)
        paths = write_report(result, out)
    except ValueError as e:
        _err.print(f"error: {error_line(e)}", markup=False)
        raise typer.Exit(EXIT_USAGE) from None
    except (RuntimeError, OSError) as e:
        _err.print(f"error: {error_line(e)}", markup=False)
        raise typer.Exit(EXIT_RUNTIME) from None
    written = ", ".join(map(str, paths))
    _out.print(f"best {result.best.spec()} ({solver} x{result.steps}, NFE {result.nfe}): {metric} "
               f"{result.score:.4g} on {result.units} units; searched {len(result.evaluations)} candidates, "
               f"{result.nfe_spent} NFE, {result.seconds:.0f}s -> {written}", markup=False)  # fmt: skip


def run() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    run()
