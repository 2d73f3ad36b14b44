"""Will a bad model help? The autoguidance diagnostic.

Autoguidance (AudioMoG eq. 6; Karras et al. 2024) replaces the good model's clean-data estimate ``D_g`` by
``D_w = D_b + w (D_g - D_b)``. In ``x0`` space, with ``D*`` the ideal denoiser ``E[x0 | x_t]``, the good model's
error ``e = D_g - D*`` and the difference ``Delta = D_g - D_b``, the guided error is ``e + (w - 1) Delta``, so per
noise level

* the **denoising-optimal weight** is ``w*(t) = 1 - E[e . Delta] / E|Delta|^2``,
* AG at ``w*`` lowers the mean squared error by ``R = (E[e . Delta])^2 / E|Delta|^2``,
* and ``R / E|e|^2 = cos^2`` with the **alignment** ``cos = E[e . (D_b - D_g)] / sqrt(E|e|^2 E|Delta|^2)``: 1 when
  the bad model makes the good model's errors, only larger (EDM2's argument for autoguidance), 0 when the
  correction is unrelated to the good model's error (then AG only injects the bad model's own error).

With an exact ``D*`` (the 2D lab) every quantity is exact. For real models the **per-sample target** ``x0`` stands in
for ``D*``: since ``E[x0 | x_t] = D*(x_t)`` and ``Delta`` is a function of ``x_t``, ``E[(D_g - x0) . Delta]`` is an
unbiased estimate of ``E[e . Delta]``, so ``w*`` and ``R`` are estimable from held-out data alone. The alignment is
not (``|D_g - x0|`` includes the data's own spread), so ``R / E|D_g - x0|^2`` is reported as a lower bound of
``cos^2``.

Two places to measure: :func:`diagnose` uses states ``x_t = alpha x0 + sigma eps`` made from held-out data;
:func:`diagnose_trajectories` uses the states the (unguided or guided) sampler actually visits, where only an exact
``D*`` gives the error. The two can disagree (they do on EDM2's own toy models).

Confidence intervals are 95 % normal intervals from the **delta method** (first-order influence functions of the
ratios of sample means), treating the rows (held-out samples or trajectories) as independent; a quantity pooled over
noise levels uses the same rows at every level, so its interval accounts for the correlation between levels.
Everything runs batched under ``torch.no_grad`` in ``x0`` space, in each model's own time convention.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .core.denoisers import Cond, Denoiser, Schedule, check_compatible, to_x0

#: Two-sided 95 % normal quantile of the confidence intervals.
Z95 = 1.959963984540054
#: Default noise range (sigma / alpha) of :func:`default_levels`: EDM's sampling range.
DEFAULT_SIGMA_MIN = 0.002
DEFAULT_SIGMA_MAX = 80.0
#: Default number of noise levels of :func:`default_levels`.
DEFAULT_NUM_LEVELS = 12
#: AG weights whose guided-denoiser error :meth:`DiagnosticReport.summary_stats` reports.
GUIDED_WEIGHTS = (2.0, 3.0)
#: Rows per model call.
DEFAULT_BATCH = 4096
#: CSV columns (one row per noise level and source), in order.
CSV_COLUMNS = (
    "source",
    "estimator",
    "t",
    "ratio",
    "noise_level",
    "n",
    "err_good",
    "err_bad",
    "loss_good",
    "delta_sq",
    "e_dot_delta",
    "e_dot_delta_lo",
    "e_dot_delta_hi",
    "w_star",
    "w_star_lo",
    "w_star_hi",
    "reduction",
    "reduction_lo",
    "reduction_hi",
    "rel_reduction",
    "rel_reduction_lb",
    "loss_bad",
    "excess_loss",
    "excess_loss_lo",
    "excess_loss_hi",
    "cosine",
    "cosine_lo",
    "cosine_hi",
    "error_ratio",
)

CondFn = Callable[[Cond | None], Cond | None]


# ---------------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------------


def _ci(value: float, influence: torch.Tensor) -> tuple[float, float]:
    """Normal 95 % interval of a smooth function of sample means from its per-row influence values."""
    n = influence.numel()
    if n < 2 or not math.isfinite(value):
        return math.nan, math.nan
    se = float(influence.std(unbiased=True)) / math.sqrt(n)
    return value - Z95 * se, value + Z95 * se


@dataclass
class _Level:
    """Per-row statistics of one noise level (float64 ``[n]`` each; ``c`` is ``|e|^2`` and needs ``D*``)."""

    t: float
    ratio: float
    noise_level: float
    a: torch.Tensor  # e . Delta  (or (D_g - x0) . Delta with per-sample targets)
    b: torch.Tensor  # |Delta|^2
    a_exact: torch.Tensor | None = None  # e . Delta (exact)
    a_target: torch.Tensor | None = None  # (D_g - x0) . Delta (per-sample targets)
    c: torch.Tensor | None = None  # |e|^2 (exact)
    d: torch.Tensor | None = None  # |D_b - D*|^2 (exact)
    loss: torch.Tensor | None = None  # |D_g - x0|^2 (data)
    loss_bad: torch.Tensor | None = None  # |D_b - x0|^2 (data)

    # influence functions of the level's derived quantities
    def w_star(self) -> tuple[float, torch.Tensor]:
        ma, mb = float(self.a.mean()), float(self.b.mean())
        r = ma / mb if mb > 0 else math.nan
        return 1.0 - r, -(self.a - r * self.b) / mb

    def reduction(self) -> tuple[float, torch.Tensor]:
        ma, mb = float(self.a.mean()), float(self.b.mean())
        r = ma / mb if mb > 0 else math.nan
        return ma * r, 2.0 * r * (self.a - ma) - r * r * (self.b - mb)

    def cosine(self) -> tuple[float, torch.Tensor] | None:
        if self.c is None or self.a_exact is None:
            return None
        a = self.a_exact
        ma, mb, mc = float(a.mean()), float(self.b.mean()), float(self.c.mean())
        if mb <= 0 or mc <= 0:
            return math.nan, torch.zeros_like(a)
        root = math.sqrt(mb * mc)
        cos = -ma / root
        infl = -(a - ma) / root + 0.5 * ma / root**3 * (mc * (self.b - mb) + mb * (self.c - mc))
        return cos, infl


@dataclass
class LevelRow:
    """The diagnostic at one noise level (all errors are mean squared norms in ``x0`` space).

    Attributes:
        source: ``"data"`` (states made from held-out data) or ``"trajectory:<guidance>"`` (states the sampler
            visited).
        estimator: ``"exact"`` (``e = D_g - D*``) or ``"targets"`` (``D_g - x0`` in place of ``e``).
        t, ratio, noise_level: model time, ``sigma / alpha`` and ``sigma / (alpha + sigma)``.
        err_good, err_bad: ``E|D_g - D*|^2`` and ``E|D_b - D*|^2`` (exact only, else NaN).
        loss_good: ``E|D_g - x0|^2`` (data only, else NaN).
        delta_sq: ``E|D_g - D_b|^2``.
        e_dot_delta: ``E[e . Delta]`` from the estimator, with its interval.
        w_star: the denoising-optimal AG weight ``1 - E[e . Delta] / E|Delta|^2``, with its interval.
        reduction: ``(E[e . Delta])^2 / E|Delta|^2``, the error AG at ``w_star`` removes, with its interval.
        rel_reduction: ``reduction / err_good`` (exact only); equals ``cosine^2`` for the exact estimator.
        rel_reduction_lb: ``reduction / loss_good`` (data only): a lower bound of the relative reduction.
        loss_bad: ``E|D_b - x0|^2`` (data only).
        excess_loss: ``loss_bad - loss_good`` with its interval (data only): an unbiased estimate of ``err_bad -
            err_good`` (the data's own spread cancels), so for one good model it ranks candidate bad models exactly
            as their error ratio ``err_bad / err_good`` does, without knowing ``D*``.
        cosine: the alignment ``cos(e, D_b - D_g)`` (exact only), with its interval.
        error_ratio: ``err_bad / err_good`` (exact only).
    """

    source: str
    estimator: str
    t: float
    ratio: float
    noise_level: float
    n: int
    err_good: float = math.nan
    err_bad: float = math.nan
    loss_good: float = math.nan
    delta_sq: float = math.nan
    e_dot_delta: float = math.nan
    e_dot_delta_lo: float = math.nan
    e_dot_delta_hi: float = math.nan
    w_star: float = math.nan
    w_star_lo: float = math.nan
    w_star_hi: float = math.nan
    reduction: float = math.nan
    reduction_lo: float = math.nan
    reduction_hi: float = math.nan
    rel_reduction: float = math.nan
    rel_reduction_lb: float = math.nan
    loss_bad: float = math.nan
    excess_loss: float = math.nan
    excess_loss_lo: float = math.nan
    excess_loss_hi: float = math.nan
    cosine: float = math.nan
    cosine_lo: float = math.nan
    cosine_hi: float = math.nan
    error_ratio: float = math.nan


def _row(level: _Level, source: str, estimator: str) -> LevelRow:
    n = level.a.numel()
    ma = float(level.a.mean())
    row = LevelRow(source, estimator, level.t, level.ratio, level.noise_level, n)
    row.delta_sq = float(level.b.mean())
    row.e_dot_delta = ma
    row.e_dot_delta_lo, row.e_dot_delta_hi = _ci(ma, level.a - ma)
    row.w_star, infl = level.w_star()
    row.w_star_lo, row.w_star_hi = _ci(row.w_star, infl)
    row.reduction, infl = level.reduction()
    lo, hi = _ci(row.reduction, infl)
    row.reduction_lo, row.reduction_hi = max(lo, 0.0), hi
    if level.c is not None and level.d is not None:
        row.err_good, row.err_bad = float(level.c.mean()), float(level.d.mean())
        row.rel_reduction = row.reduction / row.err_good if row.err_good > 0 else math.nan
        row.error_ratio = row.err_bad / row.err_good if row.err_good > 0 else math.nan
        cos = level.cosine()
        if cos is not None:
            row.cosine, infl = cos
            row.cosine_lo, row.cosine_hi = _ci(row.cosine, infl)
    if level.loss is not None:
        row.loss_good = float(level.loss.mean())
        row.rel_reduction_lb = row.reduction / row.loss_good if row.loss_good > 0 else math.nan
    if level.loss is not None and level.loss_bad is not None:
        gap = level.loss_bad - level.loss
        row.loss_bad = float(level.loss_bad.mean())
        row.excess_loss = float(gap.mean())
        row.excess_loss_lo, row.excess_loss_hi = _ci(row.excess_loss, gap - row.excess_loss)
    return row


# ---------------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class DiagnosticReport:
    """Per-noise-level rows of the diagnostic (:class:`LevelRow`) and pooled summaries (:meth:`summary_stats`).

    Reports from :func:`diagnose` and :func:`diagnose_trajectories` combine with ``+`` (rows of both, e.g. for one
    CSV or plot).
    """

    rows: list[LevelRow]
    meta: dict[str, Any] = field(default_factory=dict)
    _levels: dict[str, list[_Level]] = field(default_factory=dict, repr=False)

    def __add__(self, other: DiagnosticReport) -> DiagnosticReport:
        levels = {**self._levels, **other._levels}
        return DiagnosticReport(self.rows + other.rows, {**self.meta, **other.meta}, levels)

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(r.source for r in self.rows))

    def reestimate(self, estimator: str) -> DiagnosticReport:
        """The same measurement with the other estimator (``"exact"`` or ``"targets"``), where its per-row terms
        were recorded (data reports with ``exact`` record both)."""
        rows: list[LevelRow] = []
        levels: dict[str, list[_Level]] = {}
        for source, lvls in self._levels.items():
            new = []
            for lv in lvls:
                a = lv.a_exact if estimator == "exact" else lv.a_target
                if a is None:
                    raise ValueError(f"source {source!r} has no {estimator!r} terms")
                new.append(replace(lv, a=a))
            levels[source] = new
            rows += [_row(lv, source, estimator) for lv in new]
        return DiagnosticReport(rows, dict(self.meta), levels)

    def select(self, source: str) -> list[LevelRow]:
        return [r for r in self.rows if r.source == source]

    def summary_stats(self, source: str | None = None) -> dict[str, float]:
        """Pooled over the noise levels of one source (default: the first), with 95 % intervals.

        * ``w_star_mean``: the mean over levels of ``w*(t)`` (the weight a constant-weight AG would use if every
          level counted equally);
        * ``alignment_mean``: the mean over levels of the cosine (exact only);
        * ``rel_reduction_mean`` / ``rel_reduction_lb_mean``: mean relative error reduction (exact) or its lower
          bound (data);
        * ``error_ratio_mean``: mean of ``E|D_b - D*|^2 / E|D_g - D*|^2`` (exact only);
        * ``excess_loss_mean``: mean of the bad model's excess held-out loss (data only);
        * ``guided_error_ratio_<w>_mean``: mean of :meth:`guided_error_ratio` for ``w`` in :data:`GUIDED_WEIGHTS`.
        """
        source = source or self.sources[0]
        levels = self._levels.get(source, [])
        rows = self.select(source)
        out: dict[str, float] = {"levels": float(len(rows))}
        if not levels:
            return out
        w = [lv.w_star() for lv in levels]
        out["w_star_mean"] = sum(v for v, _ in w) / len(w)
        out["w_star_mean_lo"], out["w_star_mean_hi"] = _ci(out["w_star_mean"], sum(i for _, i in w) / len(w))
        cos = [lv.cosine() for lv in levels]
        if all(c is not None for c in cos):
            vals = [c for c in cos if c is not None]
            out["alignment_mean"] = sum(v for v, _ in vals) / len(vals)
            infl = sum(i for _, i in vals) / len(vals)
            out["alignment_mean_lo"], out["alignment_mean_hi"] = _ci(out["alignment_mean"], infl)
        for key in ("rel_reduction", "rel_reduction_lb", "error_ratio", "excess_loss"):
            vals = [getattr(r, key) for r in rows]
            if all(math.isfinite(v) for v in vals):
                out[f"{key}_mean"] = sum(vals) / len(vals)
        for w in GUIDED_WEIGHTS:
            ratios = self.guided_error_ratio(w, source)
            if ratios and all(math.isfinite(v) for v in ratios):
                out[f"guided_error_ratio_{w:g}_mean"] = sum(ratios) / len(ratios)
        return out

    def w_star_guidance(self, source: str | None = None, clip: tuple[float, float] = (0.0, 10.0)) -> Any:
        """Autoguidance at the measured ``w*(t)`` of every level (clipped to ``clip``) as one guidance expression:
        AG with a noise-level-dependent weight, each level's weight held over the noise levels nearer to it than
        to its neighbours (nested :func:`v2a_sampler.guidance.interval` pieces). It is the denoising-optimal AG
        schedule of this bad model: sampling with it tests whether *correcting* the good model's errors helps."""
        from .core import guidance as G

        rows = sorted(self.select(source or self.sources[0]), key=lambda r: r.noise_level)
        if not rows:
            raise ValueError("the report has no rows for that source")
        levels = [r.noise_level for r in rows]
        edges = [0.0] + [(a + b) / 2 for a, b in zip(levels, levels[1:], strict=False)] + [1.0]
        out: Any = None
        for r, lo, hi in zip(rows, edges[:-1], edges[1:], strict=True):
            w = min(max(r.w_star, clip[0]), clip[1])
            out = G.interval(G.ag(w), lo, hi, out)
        return out

    def guided_error_ratio(self, w: float, source: str | None = None) -> list[float]:
        """Per level, ``E|D_w - D*|^2 / E|D_g - D*|^2`` for AG at weight ``w`` (exact only, else NaN):
        ``(E|e|^2 + 2 (w - 1) E[e . Delta] + (w - 1)^2 E|Delta|^2) / E|e|^2``. Below 1, AG at ``w`` brings the
        denoiser closer to the ideal one; above 1 it moves it away (whatever it does to the samples)."""
        out = []
        for lv in self._levels.get(source or self.sources[0], []):
            if lv.c is None or lv.a_exact is None:
                out.append(math.nan)
                continue
            ma, mb, mc = float(lv.a_exact.mean()), float(lv.b.mean()), float(lv.c.mean())
            k = w - 1.0
            out.append((mc + 2.0 * k * ma + k * k * mb) / mc if mc > 0 else math.nan)
        return out

    # -- output ---------------------------------------------------------------------------------------------
    def to_dicts(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.rows]

    def to_csv(self, path: str | Path) -> Path:
        """One line per (source, level) with the :data:`CSV_COLUMNS`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            for r in self.rows:
                d = asdict(r)
                w.writerow([d[c] if isinstance(d[c], (str, int)) else f"{d[c]:.6g}" for c in CSV_COLUMNS])
        return path

    def summary(self) -> str:
        """A text table per source and a pooled line."""
        lines = []
        for source in self.sources:
            rows = self.select(source)
            est = rows[0].estimator
            lines.append(f"[{source}] estimator={est}, n={rows[0].n} per level")
            head = f"{'sigma/alpha':>11} {'level':>6} {'t':>8} {'E|e|^2':>10} {'E|Dg-x0|^2':>10} {'E|Delta|^2':>10}"
            head += f" {'cos':>6} {'w*':>7} {'w* 95% CI':>17} {'rel.red.':>8}"
            lines.append(head)
            for r in rows:
                rel = r.rel_reduction if math.isfinite(r.rel_reduction) else r.rel_reduction_lb
                ci = f"[{r.w_star_lo:.2f}, {r.w_star_hi:.2f}]"
                lines.append(
                    f"{r.ratio:>11.4g} {r.noise_level:>6.3f} {r.t:>8.4g} {r.err_good:>10.3g} {r.loss_good:>10.3g} "
                    f"{r.delta_sq:>10.3g} {r.cosine:>6.2f} {r.w_star:>7.3f} {ci:>17} {rel:>8.3f}"
                )
            s = self.summary_stats(source)
            pooled = f"  mean over {int(s['levels'])} levels: w* = {s['w_star_mean']:.3f}"
            pooled += f" [{s['w_star_mean_lo']:.3f}, {s['w_star_mean_hi']:.3f}]"
            if "alignment_mean" in s:
                pooled += f", alignment = {s['alignment_mean']:.3f}"
                pooled += f" [{s['alignment_mean_lo']:.3f}, {s['alignment_mean_hi']:.3f}]"
            if "rel_reduction_mean" in s:
                pooled += f", relative reduction = {s['rel_reduction_mean']:.3f}"
            elif "rel_reduction_lb_mean" in s:
                pooled += f", relative reduction >= {s['rel_reduction_lb_mean']:.3f}"
            if "error_ratio_mean" in s:
                pooled += f", error ratio = {s['error_ratio_mean']:.2f}"
            if "excess_loss_mean" in s:
                pooled += f", excess loss of the bad model = {s['excess_loss_mean']:.3g}"
            lines.append(pooled)
        return "\n".join(lines)

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """Three panels against sigma / alpha: errors, alignment (or its lower bound), and ``w*`` with its
        interval; one line per source."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for k, source in enumerate(self.sources):
            rows = self.select(source)
            x = [r.ratio for r in rows]
            color = f"C{k}"
            ax = axes[0]
            if all(math.isfinite(r.err_good) for r in rows):
                ax.plot(x, [r.err_good for r in rows], "-", color=color, label=f"E|e|² ({source})")
                ax.plot(x, [r.err_bad for r in rows], ":", color=color, label=f"E|D_b−D*|² ({source})")
            if all(math.isfinite(r.loss_good) for r in rows):
                ax.plot(x, [r.loss_good for r in rows], "-.", color=color, label=f"E|D_g−x0|² ({source})")
            ax.plot(x, [r.delta_sq for r in rows], "--", color=color, label=f"E|Δ|² ({source})")
            ax = axes[1]
            if all(math.isfinite(r.cosine) for r in rows):
                ax.plot(x, [r.cosine for r in rows], "-", color=color, label=f"cos(e, D_b−D_g) ({source})")
                ax.fill_between(x, [r.cosine_lo for r in rows], [r.cosine_hi for r in rows], color=color, alpha=0.2)
            else:
                lb = [math.sqrt(max(r.rel_reduction_lb, 0.0)) for r in rows]
                ax.plot(x, lb, "-.", color=color, label=f"|cos| lower bound ({source})")
            ax = axes[2]
            ax.plot(x, [r.w_star for r in rows], "-", color=color, label=source)
            ax.fill_between(x, [r.w_star_lo for r in rows], [r.w_star_hi for r in rows], color=color, alpha=0.2)
        axes[0].set_yscale("log")
        axes[0].set_title("errors (x0 space)")
        axes[1].axhline(0.0, color="grey", lw=0.8)
        axes[1].set_title("alignment")
        axes[1].set_ylim(-1.05, 1.05)
        axes[2].axhline(1.0, color="grey", lw=0.8)
        axes[2].set_title("denoising-optimal AG weight w*")
        for ax in axes:
            ax.set_xscale("log")
            ax.set_xlabel("noise level sigma / alpha")
            ax.legend(fontsize=7)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


# ---------------------------------------------------------------------------------------------------------------
# Evaluation helpers
# ---------------------------------------------------------------------------------------------------------------


def default_levels(
    schedule: Schedule,
    num: int = DEFAULT_NUM_LEVELS,
    sigma_min: float = DEFAULT_SIGMA_MIN,
    sigma_max: float = DEFAULT_SIGMA_MAX,
) -> list[float]:
    """``num`` model times whose ``sigma / alpha`` is log-spaced from ``sigma_min`` to ``sigma_max`` (capped at the
    schedule's noise end when that is finite), in decreasing noise."""
    end = schedule.terms(schedule.noise_end).ratio
    hi = min(sigma_max, end) if math.isfinite(end) else sigma_max
    if not 0 < sigma_min < hi:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {hi}")
    ratios = torch.logspace(math.log10(hi), math.log10(sigma_min), num, dtype=torch.float64)
    return [schedule.t_from_ratio(float(r)) for r in ratios]


def _dtype_of(model: Any, default: torch.dtype) -> torch.dtype:
    """The dtype a model is fed: its parameters' for modules, else ``default`` (callables keep float64)."""
    if isinstance(model, torch.nn.Module):
        p = next(model.parameters(), None)
        if p is not None:
            return p.dtype
    return default


def _take(cond: Cond | None, sl: slice) -> Cond | None:
    """Rows ``sl`` of every batch-first value of a condition mapping."""
    if cond is None:
        return None
    out: dict[str, Any] = {}
    for k, v in cond.items():
        out[k] = v[sl] if isinstance(v, (torch.Tensor, list, tuple)) else v
    return out


def _encoder(model: Any) -> CondFn:
    enc = getattr(model, "encode_conditions", None)
    return enc if callable(enc) else (lambda c: c)


def _x0(model: Any, x: torch.Tensor, t: float, cond: Cond | None) -> torch.Tensor:
    """The model's clean-data estimate at ``(x, t)`` in float64 (the state is fed in the model's dtype)."""
    terms = model.schedule.terms(t)
    xin = x.to(_dtype_of(model, x.dtype))
    t_vec = torch.full((x.shape[0],), float(t), dtype=torch.promote_types(xin.dtype, torch.float32), device=x.device)
    pred = model(xin, t_vec, cond)
    return to_x0(model.prediction, x, pred.to(torch.float64), terms)


def _sqnorm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).square().sum(1)


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u.flatten(1) * v.flatten(1)).sum(1)


def _check(good: Denoiser, bad: Denoiser, exact: Denoiser | None) -> None:
    check_compatible(good, bad)
    if exact is not None and exact.schedule != good.schedule:
        raise ValueError(f"the exact denoiser's schedule {exact.schedule} differs from the models' {good.schedule}")


def _stats(
    t: float,
    schedule: Schedule,
    chunks: list[dict[str, torch.Tensor]],
    estimator: str,
) -> _Level:
    cat = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
    terms = schedule.terms(t)
    a = cat["a_exact"] if estimator == "exact" else cat["a_target"]
    return _Level(
        t=float(t),
        ratio=terms.ratio,
        noise_level=terms.noise_level,
        a=a,
        b=cat["b"],
        a_exact=cat.get("a_exact"),
        a_target=cat.get("a_target"),
        c=cat.get("c"),
        d=cat.get("d"),
        loss=cat.get("loss"),
        loss_bad=cat.get("loss_bad"),
    )


def _evaluate_chunk(
    good: Any,
    bad: Any,
    exact: Any | None,
    x: torch.Tensor,
    t: float,
    cond_g: Cond | None,
    cond_b: Cond | None,
    cond_x: Cond | None,
    x0: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    d_g = _x0(good, x, t, cond_g)
    d_b = _x0(bad, x, t, cond_b)
    delta = d_g - d_b
    out = {"b": _sqnorm(delta)}
    if x0 is not None:
        resid = d_g - x0.to(torch.float64)
        out["a_target"] = _dot(resid, delta)
        out["loss"] = _sqnorm(resid)
        out["loss_bad"] = _sqnorm(d_b - x0.to(torch.float64))
    if exact is not None:
        d_star = _x0(exact, x, t, cond_x)
        e = d_g - d_star
        out["a_exact"] = _dot(e, delta)
        out["c"] = _sqnorm(e)
        out["d"] = _sqnorm(d_b - d_star)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def diagnose(
    good: Denoiser,
    bad: Denoiser,
    x0: torch.Tensor,
    cond: Cond | None = None,
    *,
    levels: Sequence[float] | None = None,
    exact: Denoiser | None = None,
    estimator: str | None = None,
    bad_cond: Cond | None = None,
    exact_cond: Cond | None = None,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH,
) -> DiagnosticReport:
    """The autoguidance diagnostic on states made from held-out data ``x0`` (batch first) and its conditions.

    Args:
        good, bad: the models (any prediction type; one schedule and time convention, as AG needs).
        x0: held-out clean data ``[N, ...]``; each row gets one fresh noise draw per level (seeded by ``seed``).
        cond: the conditions of ``x0`` (batch-first values). Models with ``encode_conditions`` (the V2A models)
            encode them once per batch; ``bad_cond`` / ``exact_cond`` override them for the bad / exact model.
        levels: model times to measure at (default: :func:`default_levels` of the good model's schedule).
        exact: the ideal denoiser ``D*`` when known (the lab): exact errors, alignment and error ratio.
        estimator: ``"exact"`` (needs ``exact``) or ``"targets"`` (``x0`` stands in for ``D*``; unbiased for
            ``E[e . Delta]``); default ``"exact"`` when ``exact`` is given.
        batch_size: rows per model call.

    Returns:
        A :class:`DiagnosticReport` with one row per level (source ``"data"``).
    """
    _check(good, bad, exact)
    estimator = estimator or ("exact" if exact is not None else "targets")
    if estimator not in ("exact", "targets"):
        raise ValueError(f"estimator must be 'exact' or 'targets', got {estimator!r}")
    if estimator == "exact" and exact is None:
        raise ValueError("the exact estimator needs the ideal denoiser (exact=...)")
    times = list(levels) if levels is not None else default_levels(good.schedule)
    n = x0.shape[0]
    gen = torch.Generator(device=x0.device).manual_seed(seed)
    x0_64 = x0.to(torch.float64)
    enc_g, enc_b = _encoder(good), _encoder(bad)
    per_level: list[list[dict[str, torch.Tensor]]] = [[] for _ in times]
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        xc = x0_64[sl]
        cg = enc_g(_take(cond, sl))
        cb = enc_b(_take(bad_cond if bad_cond is not None else cond, sl))
        cx = _take(exact_cond if exact_cond is not None else cond, sl)
        for k, t in enumerate(times):
            terms = good.schedule.terms(float(t))
            eps = torch.randn(xc.shape, generator=gen, dtype=torch.float64, device=xc.device)
            x_t = terms.alpha * xc + terms.sigma * eps
            per_level[k].append(_evaluate_chunk(good, bad, exact, x_t, float(t), cg, cb, cx, xc))
    levels_out = [_stats(float(t), good.schedule, ch, estimator) for t, ch in zip(times, per_level, strict=True)]
    rows = [_row(lv, "data", estimator) for lv in levels_out]
    return DiagnosticReport(rows, {"data": {"n": n, "seed": seed, "estimator": estimator}}, {"data": levels_out})


@torch.no_grad()
def diagnose_trajectories(
    good: Denoiser,
    bad: Denoiser,
    exact: Denoiser,
    noise: torch.Tensor,
    cond: Cond | None = None,
    *,
    guidance: str | Any = "none",
    solver: str = "heun",
    timesteps: Sequence[float] | torch.Tensor | None = None,
    steps: int | None = None,
    grid: str | None = None,
    bad_cond: Cond | None = None,
    exact_cond: Cond | None = None,
    every: int = 1,
    batch_size: int = DEFAULT_BATCH,
    source: str | None = None,
) -> DiagnosticReport:
    """The diagnostic on the states the sampler visits: ``sample(good, noise, cond, guidance, bad, ...)`` is run
    once, the state entering every ``every``-th step is recorded, and ``D_g``, ``D_b`` and the exact ``D*`` are
    evaluated there (``exact`` is required: the visited states have no data target).

    ``guidance`` is any spec ``sample()`` accepts (``"none"``, ``"ag(2)"``, ...). The report's source is
    ``"trajectory:<guidance>"`` unless ``source`` names it.
    """
    from .core import guidance as G
    from .core.solvers import sample

    _check(good, bad, exact)
    states: list[tuple[float, torch.Tensor]] = []
    g = G.resolve(guidance, good, bad)

    def record(info: dict[str, Any]) -> None:
        if good.schedule.terms(float(info["t_next"])).sigma > 0:
            states.append((float(info["t_next"]), info["x"].detach().to(torch.float64).clone()))

    _, sinfo = sample(
        good,
        noise,
        cond=cond,
        guidance=g,
        bad=bad if g.needs_bad_model else None,
        solver=solver,
        steps=steps,
        timesteps=timesteps,
        grid=grid,
        callback=record,
        bad_cond=bad_cond,
    )
    t0 = float(sinfo.timesteps[0])
    start_state = noise.to(torch.promote_types(noise.dtype, torch.float32)).to(torch.float64)
    states.insert(0, (t0, start_state * good.schedule.terms(t0).sigma))
    states = states[::every]
    n = noise.shape[0]
    enc_g, enc_b = _encoder(good), _encoder(bad)
    per_level: list[list[dict[str, torch.Tensor]]] = [[] for _ in states]
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        cg = enc_g(_take(cond, sl))
        cb = enc_b(_take(bad_cond if bad_cond is not None else cond, sl))
        cx = _take(exact_cond if exact_cond is not None else cond, sl)
        for k, (t, x) in enumerate(states):
            per_level[k].append(_evaluate_chunk(good, bad, exact, x[sl], t, cg, cb, cx, None))
    name = source or f"trajectory:{g.spec()}"
    levels_out = [_stats(t, good.schedule, ch, "exact") for (t, _), ch in zip(states, per_level, strict=True)]
    rows = [_row(lv, name, "exact") for lv in levels_out]
    meta = {name: {"n": n, "guidance": g.spec(), "solver": solver, "nfe": sinfo.nfe}}
    return DiagnosticReport(rows, meta, {name: levels_out})


def pooled_w_star(report: DiagnosticReport, source: str | None = None) -> float:
    """The report's mean denoising-optimal weight over levels (see :meth:`DiagnosticReport.summary_stats`)."""
    return report.summary_stats(source)["w_star_mean"]


__all__ = [
    "CSV_COLUMNS",
    "DiagnosticReport",
    "LevelRow",
    "default_levels",
    "diagnose",
    "diagnose_trajectories",
    "pooled_w_star",
]
