"""Shared helpers of the quality benchmarks: NFE budget -> steps, aggregation over seeds, error-bar plots.

The cost model is the solver registry's (:class:`v2a_sampler.solvers.Solver`): a run of ``N`` steps evaluates
``stages(N)`` guided denoiser stages (Heun: ``2 N - 1`` on a grid ending at ``sigma = 0``), each costing the
guidance's ``nfe_per_step`` branch evaluations per sample. The functions here only name that arithmetic for the
benchmark scripts.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from v2a_sampler import guidance as G
from v2a_sampler.solvers import get_solver

#: Column suffix of the standard deviation over seeds.
STD_SUFFIX = "_std"


def stages(solver: str, steps: int, final_sigma_zero: bool = True) -> int:
    """Denoiser stages of ``steps`` solver steps (the registry's ``Solver.stages``)."""
    return get_solver(solver).stages(steps, final_sigma_zero)


def nfe_per_step(guidance: str | G.Guidance) -> int:
    """Branch evaluations per stage of a guidance spec (none 1, CFG and AG 2, PG 3, HG 4)."""
    return G.parse(guidance).nfe_per_step


def cost(guidance: str | G.Guidance, solver: str, steps: int, final_sigma_zero: bool = True) -> int:
    """Exact NFE per sample of a guided solver run."""
    return nfe_per_step(guidance) * stages(solver, steps, final_sigma_zero)


def steps_for_budget(budget: int, per_stage: int, solver: str, final_sigma_zero: bool = True) -> int | None:
    """The most steps whose cost ``per_stage * stages(steps)`` fits in ``budget`` (``Solver.steps_for_budget``)."""
    return get_solver(solver).steps_for_budget(budget, per_stage, final_sigma_zero)


def aggregate(
    rows: Iterable[Mapping[str, Any]], keys: Sequence[str], metrics: Sequence[str], seed_key: str = "seed"
) -> list[dict[str, Any]]:
    """Group per-seed rows by ``keys``: mean and sample std (``<metric>_std``, NaN for one seed) of each metric.

    Non-numeric or missing metric values (None) are skipped; a group with none left gets NaN. ``seeds`` counts rows.
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        row["seeds"] = len({r[seed_key] for r in rs})
        for m in metrics:
            vals = [float(r[m]) for r in rs if isinstance(r.get(m), (int, float)) and math.isfinite(float(r[m]))]
            row[m] = statistics.fmean(vals) if vals else math.nan
            row[m + STD_SUFFIX] = statistics.stdev(vals) if len(vals) > 1 else math.nan
        out.append(row)
    return out


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path, columns: Sequence[str]) -> Path:
    """Write ``rows`` with ``columns`` (floats to 6 significant digits, None as empty)."""
    import csv

    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            v = [r.get(c) for c in columns]
            w.writerow(["" if x is None else f"{x:.6g}" if isinstance(x, float) else x for x in v])
    return path


def plot_errorbars(
    panels: Sequence[tuple[str, str, Sequence[Mapping[str, Any]]]],
    x_key: str,
    series_key: Callable[[Mapping[str, Any]], str],
    path: str | Path,
    log_x: bool = False,
) -> Path:
    """One panel per ``(title, metric, rows)``: ``metric`` against ``x_key`` per series, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    for ax, (title, metric, rows) in zip(axes[0], panels, strict=True):
        series: dict[str, list[Mapping[str, Any]]] = {}
        for r in rows:
            series.setdefault(series_key(r), []).append(r)
        for name, rs in series.items():
            rs = sorted(rs, key=lambda r: r[x_key])
            err = [0.0 if math.isnan(r[metric + STD_SUFFIX]) else r[metric + STD_SUFFIX] for r in rs]
            ax.errorbar([r[x_key] for r in rs], [r[metric] for r in rs], yerr=err, label=name, capsize=2, marker=".")
        if log_x:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(x_key)
        ax.set_ylabel(metric)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def wait_until_serving(url: str, proc: Any, timeout_s: float, poll_s: float = 0.5) -> bool:
    """Poll ``url`` until it answers (``True``), or until ``proc`` (a ``subprocess.Popen``) has exited or
    ``timeout_s`` have passed (``False``): a server started in a subprocess, as the app's benchmark and test do."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return True
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(poll_s)
