"""Noise sources of the stochastic solvers: seeded Gaussian draws, or increments of a Brownian motion.

A stochastic solver asks its source for standard normal noise shaped like the state, once per noise term, naming the
interval of the step it belongs to by its two noise levels ``u = sigma / (alpha + sigma)`` (1 at pure noise, 0 at
data, the same on every schedule and time convention). Two sources answer:

* :class:`GeneratorNoise` ignores the interval and draws fresh noise from a ``torch.Generator`` (or one generator
  per row), in float32 whatever the state's dtype, so a seed gives the same samples in every precision. This is what
  ``generator=`` has always meant.
* :class:`BrownianTreeNoise` returns the normalised increment ``(W(u) - W(u_next)) / sqrt(u - u_next)`` of one seeded
  Brownian motion ``W`` per row on ``u`` in ``[0, 1]`` (k-diffusion's ``BrownianTreeNoiseSampler``, which wraps
  torchsde's ``BrownianTree``; this is our own construction). ``W`` is a function of the seed alone, so the same seed
  drives the same sample path at any step count: an SDE solver's samples converge as the steps grow, and the noise of
  a coarse step is exactly the sum of the noise of the fine steps that split it (scaled by the square roots of the
  interval lengths).

The tree is a seeded binary subdivision (Lévy's construction of the Brownian bridge): ``W(0) = 0``, ``W(1) ~ N(0, 1)``
and, on a dyadic interval ``[a, b]`` of level ``l``, ``W((a + b) / 2) = (W(a) + W(b)) / 2 + sqrt(b - a) / 2 * z``
with ``z`` a standard normal that is a hash of (row seed, level, interval index, element). A query descends
:data:`BROWNIAN_DEPTH` levels and interpolates linearly inside the last interval (width ``2**-BROWNIAN_DEPTH``, far
below any solver step). Nothing is stored but the last few queried points, and rows never share draws, so a batch
equals its rows sampled one by one with their seeds.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch

#: Levels of binary subdivision a Brownian-tree query descends (last interval: ``2**-24``, 6e-8 in noise level).
BROWNIAN_DEPTH = 24
#: Queried points a :class:`BrownianTreeNoise` remembers (a step's end is the next step's start).
BROWNIAN_CACHE = 8
#: Largest seed (seeds are 63-bit, as ``torch.Generator.manual_seed`` takes them).
MAX_SEED = 2**63 - 1

# SplitMix64 (Steele, Lea & Flood 2014): the increment and the two multipliers of its finaliser.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TWO_PI = 2.0 * math.pi
_U32 = 2.0**-32
_LOW32 = np.uint64(0xFFFFFFFF)

Generators = torch.Generator | Sequence[torch.Generator] | None


@runtime_checkable
class NoiseSource(Protocol):
    """Standard normal noise like ``like`` for the step from noise level ``level`` down to ``level_next``."""

    def __call__(self, like: torch.Tensor, level: float, level_next: float) -> torch.Tensor: ...


def randn_like(x: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Standard normal noise like ``x``, drawn in float32 whatever the state's dtype (so a seed gives the same path
    in every precision); a list of generators draws row ``i`` from generator ``i``."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != x.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
        rows = [torch.randn(x.shape[1:], generator=g, device=x.device, dtype=torch.float32) for g in generator]
        return torch.stack(rows).to(x.dtype)
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32).to(x.dtype)


class GeneratorNoise:
    """Fresh Gaussian noise from a ``torch.Generator``, a list of them (row ``i`` from generator ``i``) or torch's
    global generator (``None``); the interval is ignored."""

    def __init__(self, generator: Generators = None) -> None:
        self.generator = generator

    def __call__(self, like: torch.Tensor, level: float, level_next: float) -> torch.Tensor:
        return randn_like(like, self.generator)


def _mix(z: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _normals(keys: np.ndarray, count: int) -> np.ndarray:
    """``[rows, count]`` standard normals, a pure function of each row's 64-bit key: Box-Muller on the two 32-bit
    halves of one hash per pair of elements."""
    pairs = (count + 1) // 2
    with np.errstate(over="ignore"):
        h = _mix(keys[:, None] ^ (np.arange(pairs, dtype=np.uint64)[None, :] * _MIX2))
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 1.0) * _U32  # (0, 1]
    angle = (h & _LOW32).astype(np.float64) * (_U32 * _TWO_PI)
    radius = np.sqrt(-2.0 * np.log(u1))
    out = np.empty((keys.shape[0], 2 * pairs))
    out[:, 0::2] = radius * np.cos(angle)
    out[:, 1::2] = radius * np.sin(angle)
    return out[:, :count]


class BrownianTreeNoise:
    """Increments of one seeded Brownian motion per row on noise level ``u`` in ``[0, 1]`` (see the module docstring).

    Args:
        seed: one integer (row ``i`` of a batch uses ``seed + i``, as the pipelines' item seeds do) or one seed per
            row; seeds are integers in ``[0, 2**63 - 1]``.
        depth: levels of binary subdivision per query.
    """

    def __init__(self, seed: int | Sequence[int], depth: int = BROWNIAN_DEPTH) -> None:
        seeds = [seed] if isinstance(seed, int) else list(seed)
        for s in seeds:
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED:
                raise ValueError(f"Brownian tree seeds must be integers from 0 to 2**63 - 1, got {s!r}")
        if not 1 <= depth <= 60:
            raise ValueError(f"depth must be from 1 to 60, got {depth}")
        self.seed = seed if isinstance(seed, int) else tuple(seeds)
        self.depth = depth
        self._cache: OrderedDict[tuple[float, tuple[int, ...]], np.ndarray] = OrderedDict()

    @classmethod
    def from_generators(cls, generator: Generators) -> BrownianTreeNoise:
        """A tree seeded from generators: one seed drawn from each generator of a list (one per row), or one seed
        from a single generator (or torch's global one) for ``seed + i`` per row."""
        if isinstance(generator, (list, tuple)):
            return cls([int(torch.randint(0, MAX_SEED, (), generator=g)) for g in generator])
        return cls(int(torch.randint(0, MAX_SEED, (), generator=generator)))

    def _row_seeds(self, rows: int) -> list[int]:
        if isinstance(self.seed, int):
            return [(self.seed + i) % (MAX_SEED + 1) for i in range(rows)]
        if len(self.seed) != rows:
            raise ValueError(f"got {len(self.seed)} Brownian tree seeds for a batch of {rows}")
        return list(self.seed)

    def path(self, level: float, rows: int, elements: int) -> np.ndarray:
        """``W(level)``: ``[rows, elements]`` float64 values of the rows' Brownian motions at one noise level."""
        u = min(max(float(level), 0.0), 1.0)
        key = (u, (rows, elements))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        row_keys = _mix(np.array(self._row_seeds(rows), dtype=np.uint64))
        # the dyadic intervals containing u, level by level (heap numbering: level l holds 2**l + index), and the
        # normals of their midpoints, drawn in one go
        nodes, index = [], 0
        lo, hi = 0.0, 1.0
        for lev in range(self.depth):
            nodes.append((1 << lev) + index)
            mid = 0.5 * (lo + hi)
            lo, hi, index = (lo, mid, 2 * index) if u < mid else (mid, hi, 2 * index + 1)
        with np.errstate(over="ignore"):
            node_keys = _mix(row_keys[None, :] ^ (np.array(nodes, dtype=np.uint64)[:, None] * _GOLDEN))
        z = _normals(node_keys.reshape(-1), elements).reshape(self.depth, rows, elements)
        w_lo = np.zeros((rows, elements))
        w_hi = _normals(_mix(row_keys), elements)  # W(1)
        lo, hi = 0.0, 1.0
        for lev in range(self.depth):
            mid = 0.5 * (lo + hi)
            w_mid = 0.5 * (w_lo + w_hi) + (0.5 * math.sqrt(hi - lo)) * z[lev]
            if u < mid:
                hi, w_hi = mid, w_mid
            else:
                lo, w_lo = mid, w_mid
        w = w_lo + (u - lo) / (hi - lo) * (w_hi - w_lo)
        self._cache[key] = w
        if len(self._cache) > BROWNIAN_CACHE:
            self._cache.popitem(last=False)
        return w

    def increment(self, like: torch.Tensor, level: float, level_next: float, normalise: bool = False) -> torch.Tensor:
        """``W(level) - W(level_next)`` shaped like ``like`` (computed in float64, then cast to its dtype and device);
        with ``normalise`` divided by ``sqrt(level - level_next)``."""
        rows, elements = like.shape[0], like[0].numel()
        w = self.path(level, rows, elements) - self.path(level_next, rows, elements)
        if normalise:
            w = w / math.sqrt(abs(level - level_next))
        return torch.from_numpy(w).reshape(like.shape).to(device=like.device, dtype=like.dtype)

    def __call__(self, like: torch.Tensor, level: float, level_next: float) -> torch.Tensor:
        if not level > level_next:
            raise ValueError(f"a Brownian increment needs a decreasing noise level, got {level} -> {level_next}")
        return self.increment(like, level, level_next, normalise=True)


def noise_source(generator: Generators | NoiseSource, brownian: bool = False) -> NoiseSource:
    """The noise source of a run: a :class:`NoiseSource` as given, otherwise :class:`GeneratorNoise` over the
    generator(s), or with ``brownian=True`` a :class:`BrownianTreeNoise` seeded from them."""
    if generator is not None and not isinstance(generator, (torch.Generator, list, tuple)):
        if not isinstance(generator, NoiseSource):
            raise TypeError(f"generator must be a torch.Generator, a list of them or a noise source, got {generator!r}")
        if brownian:
            raise ValueError("brownian=True seeds a Brownian tree from generators; a noise source was given")
        return generator
    if brownian:
        return BrownianTreeNoise.from_generators(generator)
    return GeneratorNoise(generator)
