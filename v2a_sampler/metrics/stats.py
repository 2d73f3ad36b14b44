"""Statistics that hold for comparing generation methods: per-clip scores, paired bootstrap intervals, KID.

A comparison of two methods is *paired*: the same clips and the same noise seeds, so clip-level variation cancels.
:func:`clip_scores` keeps, per clip, the sufficient statistics of every pooled metric (onset counts, class counts,
embedding windows); :func:`pooled` recomputes a metric from any subset of clips; :func:`paired_bootstrap` resamples
*clips* with replacement (the same clips for both methods) and reports the difference of the pooled metric with a
percentile interval and a two-sided bootstrap p-value.

For distribution distances the Fréchet distance is biased at small sample sizes (its expected value depends on the
number of windows): compare methods at equal window counts, and prefer :func:`kid` (Bińkowski et al. 2018, the
unbiased MMD² with the cubic polynomial kernel ``k(x, y) = (x·y / d + 1)^3``), reported with its standard error over
disjoint blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .classifier import TimbreClassifier, class_counts, load_classifier, window_embeddings
from .frechet import frechet_distance_from_stats, gaussian_stats
from .inputs import AudioLike, EventLike
from .onsets import DEFAULT_TOLERANCE_S, OnsetCounts, onset_counts

#: Metrics :func:`pooled` knows, and whether higher is better.
METRICS = {"onset_f1": True, "onset_precision": True, "onset_recall": True, "class_accuracy": True, "fd": False,
           "kid": False}  # fmt: skip
#: Default bootstrap resamples and interval level.
N_BOOT = 2000
LEVEL = 0.95
#: Disjoint blocks over which :func:`kid`'s standard error is taken.
KID_BLOCKS = 10


@dataclass
class ClipScores:
    """Per-clip sufficient statistics of one method's tracks (each clip's samples summed)."""

    onsets: list[OnsetCounts]
    class_correct: list[int]
    class_total: list[int]
    windows: list[torch.Tensor]  # [W_i, D] embedding windows of clip i's samples

    def __len__(self) -> int:
        return len(self.onsets)


def clip_scores(
    tracks: Sequence[Sequence[tuple[AudioLike, int]]],
    events: Sequence[Sequence[EventLike]],
    classifier: TimbreClassifier | None = None,
    tolerance: float = DEFAULT_TOLERANCE_S,
) -> ClipScores:
    """:class:`ClipScores` of ``tracks[i]`` (the samples of clip ``i``, ``(audio, rate)`` each) against
    ``events[i]``, with the definitions of :func:`v2a_sampler.metrics.evaluate_tracks`."""
    if len(tracks) != len(events):
        raise ValueError(f"{len(tracks)} clips of tracks but {len(events)} event lists")
    model = classifier or load_classifier()
    out = ClipScores([], [], [], [])
    for samples, evs in zip(tracks, events, strict=True):
        evs = list(evs)
        counts, correct, total, windows = OnsetCounts(0, 0, 0), 0, 0, []
        for audio, rate in samples:
            counts += onset_counts(audio, int(rate), evs, tolerance)
            ok, n = class_counts(audio, int(rate), evs, model)
            correct, total = correct + ok, total + n
            windows.append(window_embeddings(audio, int(rate), model))
        out.onsets.append(counts)
        out.class_correct.append(correct)
        out.class_total.append(total)
        out.windows.append(torch.cat(windows) if windows else torch.zeros(0, 1))
    return out


def reference_windows(
    audio: Sequence[tuple[AudioLike, int]], classifier: TimbreClassifier | None = None
) -> torch.Tensor:
    """Embedding windows ``[W, D]`` of real reference tracks (the fixed reference set of FD/KID)."""
    model = classifier or load_classifier()
    return torch.cat([window_embeddings(a, int(r), model) for a, r in audio])


def pooled(scores: ClipScores, metric: str, reference: torch.Tensor | None = None, idx: Sequence[int] | None = None):
    """``metric`` pooled over the clips ``idx`` (default: all; repeats count again, as in a bootstrap sample)."""
    idx = range(len(scores)) if idx is None else idx
    if metric.startswith("onset_"):
        total = OnsetCounts(0, 0, 0)
        for i in idx:
            total += scores.onsets[i]
        p, r, f = total.prf()
        return {"onset_precision": p, "onset_recall": r, "onset_f1": f}[metric]
    if metric == "class_accuracy":
        n = sum(scores.class_total[i] for i in idx)
        return sum(scores.class_correct[i] for i in idx) / n if n else math.nan
    if metric in ("fd", "kid"):
        if reference is None:
            raise ValueError(f"{metric} needs the reference windows")
        gen = torch.cat([scores.windows[i] for i in idx])
        if metric == "kid":
            return kid(gen, reference)[0]
        return frechet_distance_from_stats(*gaussian_stats(gen), *_reference_stats(reference))
    raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")


_REFERENCE_STATS: dict[int, tuple[torch.Tensor, np.ndarray, np.ndarray]] = {}


def _reference_stats(reference: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian statistics of a reference set, computed once per tensor (bootstraps reuse them)."""
    hit = _REFERENCE_STATS.get(id(reference))
    if hit is None or hit[0] is not reference:
        hit = (reference, *gaussian_stats(reference))
        _REFERENCE_STATS.clear()
        _REFERENCE_STATS[id(reference)] = hit
    return hit[1], hit[2]


@dataclass(frozen=True)
class Comparison:
    """``b - a`` of a pooled metric over paired clips: the estimate, a percentile interval, a two-sided bootstrap
    p-value, and whether the interval excludes 0."""

    metric: str
    a: float
    b: float
    diff: float
    lo: float
    hi: float
    p: float
    clips: int

    @property
    def significant(self) -> bool:
        return self.lo > 0.0 or self.hi < 0.0

    def cell(self, digits: int = 3) -> str:
        """``+0.042 [+0.011, +0.075]*`` (``*``: the interval excludes 0)."""
        star = "*" if self.significant else ""
        return f"{self.diff:+.{digits}g} [{self.lo:+.{digits}g}, {self.hi:+.{digits}g}]{star}"


def paired_bootstrap(
    a: ClipScores,
    b: ClipScores,
    metric: str,
    reference: torch.Tensor | None = None,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
) -> Comparison:
    """``pooled(b) - pooled(a)`` with a bootstrap over clips (the same resampled clips for both methods)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"a paired comparison needs the same clips (>= 2) for both methods, got {len(a)}, {len(b)}")
    stat: Callable[[ClipScores, Sequence[int] | None], float] = lambda s, idx: pooled(s, metric, reference, idx)  # noqa: E731
    va, vb = stat(a, None), stat(b, None)
    rng = np.random.default_rng(seed)
    n = len(a)
    diffs = np.empty(n_boot)
    for k in range(n_boot):
        idx = rng.integers(0, n, n).tolist()
        diffs[k] = stat(b, idx) - stat(a, idx)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(diffs, [tail, 1.0 - tail])
    p = min(1.0, 2.0 * min((diffs <= 0).mean(), (diffs >= 0).mean()))
    return Comparison(metric, va, vb, vb - va, float(lo), float(hi), float(p), n)


def kid(x: torch.Tensor, y: torch.Tensor, blocks: int = KID_BLOCKS) -> tuple[float, float]:
    """Kernel inception distance between embedding sets ``x`` ``[n, d]`` and ``y`` ``[m, d]``: the unbiased MMD²
    estimate with ``k(a, b) = (a·b / d + 1)^3`` on the whole sets, and its standard error from ``blocks`` disjoint
    random blocks (the spread of the per-block estimates / sqrt(blocks))."""
    x64, y64 = x.double(), y.double()
    if x64.ndim != 2 or y64.ndim != 2 or x64.shape[1] != y64.shape[1] or min(len(x64), len(y64)) < 2 * blocks:
        raise ValueError(f"kid needs [n, d] and [m, d] sets with n, m >= {2 * blocks}, got {x.shape}, {y.shape}")
    estimate = _mmd2(x64, y64)
    gen = torch.Generator().manual_seed(0)
    px, py = torch.randperm(len(x64), generator=gen), torch.randperm(len(y64), generator=gen)
    parts = [_mmd2(x64[px[i::blocks]], y64[py[i::blocks]]) for i in range(blocks)]
    se = float(np.std(parts, ddof=1) / math.sqrt(blocks))
    return estimate, se


def _mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    d = x.shape[1]
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    n, m = len(x), len(y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(sxx + syy - 2 * kxy.mean())
