"""The guidance experiment of the 2D lab: sample every method at AudioMoG's toy settings and measure it exactly.

AudioMoG (Appendix E, Fig. 2) samples the fractal toy with no guidance, CFG at ``w = 3``, AG at ``w = 3``, PG at
``w1 = w2 = 2`` and HG at ``w1 = w2 = 1.5, w3 = 2`` with Heun's solver; the bad model is a smaller network trained
for fewer iterations. We run exactly these settings on our models and add reference rows: ``data`` (fresh true
samples: the best any method can score at this sample count) and ``exact`` (the exact denoiser through the same
solver: the discretisation floor). Methods whose bad model is the earlier checkpoint carry the suffix ``_early``.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.solvers import get_timesteps, sample
from .metrics import METRIC_NAMES, evaluate, outlier_threshold
from .toy2d import Toy2D

#: AudioMoG Appendix E guidance settings of the 2D toy.
PAPER_GUIDANCE = {"none": "none", "cfg": "cfg(3)", "ag": "ag(3)", "pg": "pg(2,2)", "hg": "hg(1.5,1.5,2)"}
#: Solver and grid: Heun as in the paper, on EDM's Karras grid (32 steps, sigma/alpha from 80 to 0.002, rho = 7),
#: mapped to flow time; the last step to sigma = 0 is an Euler step (63 evaluations per branch).
SOLVER = "heun"
STEPS = 32
SIGMA_MAX = 80.0
SIGMA_MIN = 0.002
#: Resolution of the exact-density background of the sample plots.
PLOT_GRID = 160
#: Seed offsets keeping the true reference set and the "data" row disjoint from the sampling noise seeds.
REFERENCE_SEED = 10**6
DATA_ROW_SEED = 5 * 10**5
#: CSV columns, in order (per-seed files add "seed").
CSV_COLUMNS = ("method", "nfe", *METRIC_NAMES)
PER_SEED_COLUMNS = ("method", "seed", "nfe", *METRIC_NAMES)


@dataclass(frozen=True)
class Method:
    """One row of the experiment: a guidance spec on a model role, with an optional bad model."""

    name: str
    guidance: str | None  # None for the "data" reference row
    model: str = "good"  # key into the models mapping ("good" or "exact")
    bad: str | None = None  # key of the bad model, if the guidance needs one


def methods(bads: Sequence[str] = ("bad_small", "bad_early")) -> list[Method]:
    """The experiment rows: references, the paper's five methods with the first bad model, variants with the rest."""
    rows = [Method("data", None, model="data"), Method("exact", "none", model="exact")]
    for name, spec in PAPER_GUIDANCE.items():
        needs_bad = name in ("ag", "pg", "hg")
        rows.append(Method(name, spec, bad=bads[0] if needs_bad and bads else None))
    for extra in bads[1:]:
        suffix = extra.removeprefix("bad_")
        rows += [Method(f"{n}_{suffix}", PAPER_GUIDANCE[n], bad=extra) for n in ("ag", "pg", "hg")]
    return rows


def sampling_grid(schedule: Any) -> torch.Tensor:
    """The experiment's time grid in the model's own time."""
    return get_timesteps(schedule, STEPS, grid="karras", sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN)


def draw(
    method: Method,
    models: Mapping[str, Any],
    toy: Toy2D,
    label: int,
    n: int,
    seed: int,
    grid: Callable[[Any], torch.Tensor] | None = None,
    noise: Callable[[int, int, torch.Generator], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int]:
    """``n`` samples of class ``label`` for one method and the NFE per sample (same noise for every method).

    ``grid`` maps a model's schedule to its timesteps (default :func:`sampling_grid`); ``noise(n, label, gen)`` draws
    the start (default: standard normal): a lab family (:mod:`v2a_sampler.lab.families`) brings its own."""
    if method.model == "data":
        x, _ = toy.sample(n, label, torch.Generator().manual_seed(seed))
        return x, 0
    net = models[method.model]
    bad = models[method.bad] if method.bad else None
    gen = torch.Generator().manual_seed(seed)
    start = noise(n, label, gen) if noise is not None else torch.randn(n, 2, generator=gen, dtype=torch.float32)
    cond = {"label": torch.full((n,), label, dtype=torch.long)}
    timesteps = (grid or sampling_grid)(net.schedule)
    x, info = sample(net, start, cond=cond, guidance=method.guidance, bad=bad, solver=SOLVER, timesteps=timesteps)
    return x.to(torch.float64), info.nfe


def run(
    models: Mapping[str, Any],
    toy: Toy2D,
    rows: Sequence[Method],
    n_per_class: int,
    seeds: Sequence[int],
    on_step: Callable[[str], None] | None = None,
    keep: tuple[int, int] | None = (0, 0),
    classes: Sequence[int] | None = None,
    grid: Callable[[Any], torch.Tensor] | None = None,
    noise: Callable[[int, int, torch.Generator], torch.Tensor] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """Every (seed, method) metric row, averaged over classes, and the samples of ``keep = (seed, class)``.

    ``models`` maps ``"good"``, ``"exact"`` and the bad-model keys to denoisers. Noise for seed ``s`` and class ``c``
    comes from seed ``1000 s + c`` for every method; the true reference set from a disjoint seed. ``classes``
    (default: all of ``toy``'s), ``grid`` and ``noise`` (as :func:`draw`) are what a lab family changes.
    """
    classes = list(range(toy.num_classes)) if classes is None else list(classes)
    thresholds = {c: outlier_threshold(toy, c) for c in classes}
    per_seed: list[dict[str, Any]] = []
    kept: dict[str, torch.Tensor] = {}
    for s in seeds:
        refs = {
            c: toy.sample(n_per_class, c, torch.Generator().manual_seed(REFERENCE_SEED + 1000 * s + c))[0]
            for c in classes
        }
        for m in rows:
            acc: dict[str, list[float]] = {k: [] for k in METRIC_NAMES}
            nfe = 0
            for c in classes:
                seed = 1000 * s + c + (DATA_ROW_SEED if m.model == "data" else 0)
                x, nfe = draw(m, models, toy, c, n_per_class, seed, grid, noise)
                if keep == (s, c):
                    kept[m.name] = x
                for k, v in evaluate(toy, x, c, refs[c], thresholds[c]).items():
                    acc[k].append(v)
            per_seed.append({"method": m.name, "seed": s, "nfe": nfe, **{k: sum(v) / len(v) for k, v in acc.items()}})
            if on_step is not None:
                on_step(m.name)
    return per_seed, kept


def summarize(per_seed: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per method: the mean of every metric over seeds and its standard deviation (``<metric>_std``)."""
    order: list[str] = []
    by_method: dict[str, list[Mapping[str, Any]]] = {}
    for r in per_seed:
        if r["method"] not in by_method:
            order.append(r["method"])
        by_method.setdefault(r["method"], []).append(r)
    out = []
    for name in order:
        rs = by_method[name]
        row: dict[str, Any] = {"method": name, "nfe": rs[0]["nfe"], "seeds": len(rs)}
        for k in METRIC_NAMES:
            vals = [float(r[k]) for r in rs]
            row[k] = sum(vals) / len(vals)
            row[f"{k}_std"] = statistics.stdev(vals) if len(vals) > 1 else math.nan
        out.append(row)
    return out


def write_csv(
    rows: Sequence[Mapping[str, Any]], path: str | Path, spread: bool = False, columns: Sequence[str] | None = None
) -> Path:
    """``metrics.csv``: ``method,nfe,<metrics>`` (plus ``seeds`` and ``<metric>_std`` columns with ``spread``)."""
    cols = list(columns or CSV_COLUMNS) + (["seeds"] + [f"{k}_std" for k in METRIC_NAMES] if spread else [])
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([r[c] if isinstance(r[c], (str, int)) else f"{r[c]:.6g}" for c in cols])
    return path


def plot_panels(
    toy: Toy2D, samples: Mapping[str, torch.Tensor], path: str | Path, label: int = 0, max_points: int = 4000
) -> Path:
    """A grid of scatter plots (one per method) over the exact class density, like AudioMoG Fig. 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(samples)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    lim = 1.45
    grid = torch.linspace(-lim, lim, PLOT_GRID, dtype=torch.float64)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    pts = torch.stack([gx.flatten(), gy.flatten()], dim=1)
    logp = torch.cat([toy.log_prob(p, label) for p in pts.split(8192)]).reshape(gx.shape)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, name in zip(axes.flat, names, strict=False):
        ax.imshow(logp.clamp(min=-8.0).numpy(), extent=(-lim, lim, -lim, lim), origin="lower", cmap="Greys", alpha=0.35)
        x = samples[name][:max_points].numpy()
        ax.scatter(x[:, 0], x[:, 1], s=0.6, c="tab:orange", linewidths=0)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(name, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
