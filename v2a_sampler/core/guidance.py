"""The guidance algebra.

A guided prediction is a linear (almost always affine) combination of *branch* predictions. A branch is one model
role (``good`` or ``bad``) evaluated with a subset of the conditions replaced by their nulls. Every guidance object
compiles to ``{branch: coefficient}``, so the branches to evaluate, and hence the NFE per step, are known exactly.

Formulas (AudioMoG, arXiv 2509.*, eqs. 5, 6, 9, 10, 11, 18, 19; eps stands for any prediction type):

* CFG (eq. 5):   ``eps(null) + w (eps(c) - eps(null))``
* AG (eq. 6):    ``eps_bad(c) + w (eps(c) - eps_bad(c))``
* PG (eq. 10):   ``eps(null) + w1 (eps(c) - eps(null)) + w2 (eps(c) - eps_bad(c))``
* HG, CFG order (eq. 9): ``badCFG + w3 (CFG - badCFG)`` with CFG at ``w1`` on the good model and at ``w2`` on the
  bad model.
* HG, AG order (eq. 11): ``ucAG + w3 (cAG - ucAG)`` with AG at ``w1`` on the conditional and at ``w2`` on the
  unconditional branches.
* Theorem 1: both HG orders span the same family; :func:`hg_reorder` maps weights between them (eqs. 18/19).

Beyond affine combinations: every weight of every preset may vary with the noise level (:func:`linear`,
:func:`cosine`, a Python callable), :func:`window` applies a guidance on a diffusers-style fraction of the steps, and
non-linear operators wrap any guidance expression: :func:`rescale` (Lin et al. 2024), :func:`apg` (Sadat et al.
2025), :func:`zero_star` (CFG-Zero*, Fan et al. 2025) and :func:`mambo` (MAMBO-G, magnitude-aware CFG).

Branch keys read ``"<role>:<cond|null>"``: ``"good:cond"`` keeps every condition, ``"good:null"`` drops them all
(multi-condition CFG drops all together, as in AV-Link), and ``"good:null[text]"`` drops only ``text``.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import re
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .denoisers import ALL, Prediction, normalize_drop, x0_coefficients

ROLES = ("good", "bad")

#: Paper defaults for the presets, from AudioMoG's V2A results (Table 3: CFG-only w=3, PG w1=2.7 w2=0.15,
#: HG w1=2.7 w2=2.5 w3=1.2) and its same-scale comparison (AG-only = HG with w1=w2=1, i.e. AG at w=w3=1.2).
PAPER_DEFAULTS: dict[str, tuple[float, ...]] = {
    "cfg": (3.0,),
    "ag": (1.2,),
    "pg": (2.7, 0.15),
    "hg": (2.7, 2.5, 1.2),
}

#: MGAudio samples AMG-trained models with a small extra CFG at inference.
AMG_DEFAULT_CFG = 1.45
#: Extra CFG strength on an AMG-trained model above which we warn (guidance applied twice).
AMG_WARN_CFG = 2.0

#: Coefficients this small are treated as zero (the branch is not evaluated).
ZERO_TOL = 1e-12
#: Tolerance of the sum-to-one checks of mixtures.
SUM_TOL = 1e-6


# ---------------------------------------------------------------------------------------------------------------
# Branches
# ---------------------------------------------------------------------------------------------------------------

_BRANCH_RE = re.compile(r"^(?P<role>[a-z]+):(?P<kind>cond|null)(?:\[(?P<names>[^\]]*)\])?$")


@dataclass(frozen=True, order=True)
class Branch:
    """One network evaluation: a model ``role`` with the conditions in ``drop`` replaced by their nulls.

    ``drop`` is ``()`` (keep every condition), ``("*",)`` (drop them all) or a sorted tuple of names.
    """

    role: str = "good"
    drop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown model role {self.role!r}; expected one of {ROLES}")

    @classmethod
    def make(cls, role: str = "good", drop: str | Collection[str] | None = None) -> Branch:
        if drop is None or drop == ():
            return cls(role, ())
        if drop == ALL:
            return cls(role, (ALL,))
        names = (drop,) if isinstance(drop, str) else tuple(drop)
        if ALL in names:
            return cls(role, (ALL,))
        return cls(role, tuple(sorted(set(names))))

    @classmethod
    def parse(cls, key: str | Branch) -> Branch:
        if isinstance(key, Branch):
            return key
        m = _BRANCH_RE.match(str(key).strip())
        if not m:
            raise ValueError(
                f"bad branch key {key!r}; expected e.g. 'good:cond', 'bad:null' or 'good:null[text,video]'"
            )
        role, kind, names = m["role"], m["kind"], m["names"]
        if kind == "cond":
            if names is not None:
                raise ValueError(f"bad branch key {key!r}: 'cond' takes no [names]; use 'null[...]' to drop")
            return cls.make(role)
        if names is None:
            return cls.make(role, ALL)
        parts = [p.strip() for p in re.split(r"[,+]", names) if p.strip()]
        if not parts:
            raise ValueError(f"bad branch key {key!r}: empty [names]")
        return cls.make(role, parts)

    @property
    def key(self) -> str:
        if not self.drop:
            return f"{self.role}:cond"
        if self.drop == (ALL,):
            return f"{self.role}:null"
        return f"{self.role}:null[{','.join(self.drop)}]"

    def dropped(self, names: Collection[str], groups: Mapping[str, Collection[str]] | None = None) -> frozenset[str]:
        """The concrete set of condition names this branch drops for a model with ``names``; ``groups`` maps a
        model's group names to their conditions (MMAudio: ``"video"`` = ``clip`` + ``sync``)."""
        if self.drop == (ALL,):
            return normalize_drop(ALL, names)
        groups = groups or {}
        unknown = set(self.drop) - set(names) - set(groups)
        if unknown:
            known = tuple(names) + tuple(f"{g} (= {'+'.join(groups[g])})" for g in groups)
            raise ValueError(
                f"branch {self.key} drops unknown condition(s) {sorted(unknown)}; model conditions: {known}"
            )
        return frozenset(c for n in self.drop for c in (groups[n] if n in groups else (n,)))

    def __str__(self) -> str:
        return self.key


GOOD_COND = Branch.make("good")
GOOD_NULL = Branch.make("good", ALL)
BAD_COND = Branch.make("bad")
BAD_NULL = Branch.make("bad", ALL)


# ---------------------------------------------------------------------------------------------------------------
# Expressions
# ---------------------------------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return repr(float(x)) if not float(x).is_integer() else str(int(x)) if abs(x) < 1e15 else repr(float(x))


def _clean(coeffs: Mapping[Branch, float]) -> dict[Branch, float]:
    return {b: c for b, c in sorted(coeffs.items()) if abs(c) > ZERO_TOL}


@dataclass
class GuidedStep:
    """What a guidance sees at one solver stage: the state ``x``, the model time ``t``, the noise ``level`` (0 =
    data, 1 = noise), the schedule ``terms`` at ``t``, the good model's ``prediction`` type (the space the branch
    predictions are in; :mod:`v2a_sampler.denoisers` converts between spaces) and ``state``, a dict that lives for
    one sampling run (per-sample memory such as momentum; a new run starts empty)."""

    x: Any
    t: float
    level: float
    terms: Any
    prediction: Any
    state: dict[str, Any]


def _weighted(coeffs: Mapping[Branch, float], predictions: Mapping[Branch, Any]) -> Any:
    out = None
    for b, c in _clean(coeffs).items():
        term = c * predictions[b]
        out = term if out is None else out + term
    return out


class Guidance:
    """Base of all guidance expressions. Combine them with ``+``, ``-`` and scalar ``*``."""

    # -- to implement -------------------------------------------------------------------------------------------
    def branch_coefficients(self, level: float | None = None) -> dict[Branch, float]:
        """``{branch: coefficient}`` active at noise level ``level`` (0 = data, 1 = noise; None = main regime)."""
        raise NotImplementedError

    def regimes(self) -> list[dict[Branch, float]]:
        """Every distinct coefficient map this guidance uses over the whole trajectory (probed at the levels where
        it may change, see :meth:`probe_levels`)."""
        points = self.probe_levels()
        if not points:
            return [self.branch_coefficients(None)]
        return [self.branch_coefficients(lv) for lv in _probe_levels(points)]

    def probe_levels(self) -> list[float]:
        """Noise levels at (and between) which the coefficients may change: interval ends, a schedule's probes."""
        return []

    def on_grid(self, levels: Sequence[float]) -> Guidance:
        """This guidance resolved for a sampling grid with noise ``levels`` (``t_0 .. t_N``, decreasing): forms
        defined over steps (:func:`window` fractions, :func:`zero_star`'s first ``k`` steps) bind to it; every other
        form returns itself. :class:`~v2a_sampler.solvers.Sampler` calls it once per run configuration."""
        return self

    @property
    def needs_grid(self) -> bool:
        """True while a form defined over steps is not yet bound to a grid by :meth:`on_grid`."""
        return False

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def spec(self) -> str:
        """A string that :func:`parse` turns back into an equal guidance."""
        raise NotImplementedError

    # -- evaluation -----------------------------------------------------------------------------------------------
    @property
    def is_linear(self) -> bool:
        """True when the guided prediction is ``sum_b coefficient_b * prediction_b`` at every noise level: the
        engine then combines the branches itself (one kernel, fusable with the solver update). Non-linear forms
        (operators such as APG or guidance rescale) override :meth:`combine` and return False; their
        :meth:`branch_coefficients` still name the branches to evaluate."""
        return True

    def combine(self, predictions: Mapping[Branch, Any], step: GuidedStep) -> Any:
        """The guided prediction from the evaluated branch ``predictions`` (tensors in the good model's prediction
        type, combined in at least float32). Linear forms return ``sum_b c_b * predictions[b]``."""
        return _weighted(self.branch_coefficients(step.level), predictions)

    # -- derived ------------------------------------------------------------------------------------------------
    def coefficients(self, level: float | None = None) -> dict[str, float]:
        """``{branch key: coefficient}``, e.g. ``{"good:cond": 4.5, "good:null": -3.5}`` for ``cfg(4.5)``."""
        return {b.key: c for b, c in _clean(self.branch_coefficients(level)).items()}

    def branches(self, level: float | None = None) -> tuple[Branch, ...]:
        """The branches to evaluate at noise ``level`` (None: the main regime; :attr:`all_branches` covers all):
        those with a non-zero coefficient (a scheduled weight that makes a coefficient exactly 0 skips its branch
        at that level, as an interval does)."""
        return tuple(_clean(self.branch_coefficients(level)))

    def branch_sets(self) -> list[tuple[Branch, ...]]:
        """The branches evaluated in each regime of the trajectory (what NFE counts)."""
        return [tuple(_clean(r)) for r in self.regimes()]

    @property
    def all_branches(self) -> tuple[Branch, ...]:
        """Every branch needed at some point of the trajectory."""
        out: set[Branch] = set()
        for bs in self.branch_sets():
            out.update(bs)
        return tuple(sorted(out))

    @property
    def nfe_per_step(self) -> int:
        """Network evaluations per solver stage in the most expensive regime (one batched branch counts one)."""
        return max(len(bs) for bs in self.branch_sets())

    def nfe_at(self, level: float) -> int:
        return len(self.branches(level))

    @property
    def roles(self) -> frozenset[str]:
        return frozenset(b.role for b in self.all_branches)

    @property
    def needs_bad_model(self) -> bool:
        return "bad" in self.roles

    @property
    def is_affine(self) -> bool:
        """True when the coefficients sum to one in every regime (a proper mixture, AudioMoG eq. 8)."""
        return all(abs(sum(r.values()) - 1.0) <= SUM_TOL for r in self.regimes())

    def cond_strength(self, level: float | None = None) -> float:
        """Total weight on branches that keep every condition (the CFG strength of the combination)."""
        return sum(c for b, c in self.branch_coefficients(level).items() if not b.drop)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def __str__(self) -> str:
        return self.spec()

    def __repr__(self) -> str:
        return f"<Guidance {describe(self)} nfe/step={self.nfe_per_step}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Guidance):
            return NotImplemented
        try:
            return self.to_dict() == other.to_dict()
        except SerializationError:  # a Python callable weight: equal only to itself
            return self is other

    def __hash__(self) -> int:
        try:
            return hash(self.to_json())
        except SerializationError:
            return id(self)

    # -- arithmetic ---------------------------------------------------------------------------------------------
    def __add__(self, other: Guidance) -> Guidance:
        if not isinstance(other, Guidance):
            return NotImplemented
        return Linear(((1.0, self), (1.0, other)))

    def __sub__(self, other: Guidance) -> Guidance:
        if not isinstance(other, Guidance):
            return NotImplemented
        return Linear(((1.0, self), (-1.0, other)))

    def __mul__(self, k: float) -> Guidance:
        if isinstance(k, Guidance) or not isinstance(k, (int, float)):
            return NotImplemented
        return Linear(((float(k), self),))

    __rmul__ = __mul__

    def __neg__(self) -> Guidance:
        return Linear(((-1.0, self),))


class Term(Guidance):
    """A single branch prediction."""

    def __init__(self, branch: Branch | str) -> None:
        self.branch = Branch.parse(branch)

    def branch_coefficients(self, level: float | None = None) -> dict[Branch, float]:
        return {self.branch: 1.0}

    def combine(self, predictions: Mapping[Branch, Any], step: GuidedStep) -> Any:
        return predictions[self.branch]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "branch", "key": self.branch.key}

    def spec(self) -> str:
        return self.branch.key


class Linear(Guidance):
    """``sum_i c_i * g_i`` over guidance expressions; ``preset`` names it when it is one of the library forms."""

    def __init__(
        self,
        terms: Sequence[tuple[float, Guidance]],
        preset: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.terms = tuple((float(c), g) for c, g in terms)
        self.preset = preset
        self.params = dict(params or {})

    def branch_coefficients(self, level: float | None = None) -> dict[Branch, float]:
        out: dict[Branch, float] = {}
        for c, g in self.terms:
            for b, v in g.branch_coefficients(level).items():
                out[b] = out.get(b, 0.0) + c * v
        return out

    @property
    def is_linear(self) -> bool:
        return all(g.is_linear for _, g in self.terms)

    def combine(self, predictions: Mapping[Branch, Any], step: GuidedStep) -> Any:
        if self.is_linear:
            return _weighted(self.branch_coefficients(step.level), predictions)
        return sum(c * g.combine(predictions, step) for c, g in self.terms)

    def probe_levels(self) -> list[float]:
        return sorted({lv for _, g in self.terms for lv in g.probe_levels()})

    def branches(self, level: float | None = None) -> tuple[Branch, ...]:
        if self.is_linear:
            return super().branches(level)
        # a non-linear term needs its branches whatever the other terms' coefficients (they may cancel)
        return tuple(sorted({b for _, g in self.terms for b in g.branches(level)}))

    def branch_sets(self) -> list[tuple[Branch, ...]]:
        if self.is_linear:
            return super().branch_sets()
        points = self.probe_levels()
        return [self.branches(lv) for lv in (_probe_levels(points) if points else [None])]

    @property
    def needs_grid(self) -> bool:
        return any(g.needs_grid for _, g in self.terms)

    def on_grid(self, levels: Sequence[float]) -> Guidance:
        terms = [(c, g.on_grid(levels)) for c, g in self.terms]
        if all(new is old for (_, new), (_, old) in zip(terms, self.terms, strict=True)):
            return self
        return Linear(terms, self.preset, self.params)

    def to_dict(self) -> dict[str, Any]:
        if self.preset is not None:
            return {"type": self.preset, **self.params}
        return {"type": "linear", "terms": [[c, g.to_dict()] for c, g in self.terms]}

    def spec(self) -> str:
        if self.preset is not None:
            return PRESETS[self.preset].spec(self.params)
        parts = []
        for i, (c, g) in enumerate(self.terms):
            sign = "-" if c < 0 else "+"
            mag = abs(c)
            atomic = isinstance(g, (Term, Interval, Window, Operation)) or getattr(g, "preset", None)
            body = g.spec() if atomic else f"({g.spec()})"
            txt = body if mag == 1.0 else f"{_fmt(mag)}*{body}"
            parts.append((sign if i or c < 0 else "") + txt)
        return "".join(parts) if parts else "0*good:cond"


class Interval(Guidance):
    """``inner`` where the noise level is in ``[lo, hi]``, ``fallback`` elsewhere (Kynkäänniemi et al., 2024).

    Noise level is ``sigma / (alpha + sigma)``: 0 at data, 1 at pure noise, in every time convention (for flow
    models with noise at t=1 it equals t; with noise at t=0 it equals 1 - t).
    """

    def __init__(self, inner: Guidance, lo: float, hi: float, fallback: Guidance | None = None) -> None:
        if not (0.0 <= lo <= hi <= 1.0):
            raise ValueError(f"guidance interval needs 0 <= lo <= hi <= 1 (noise levels), got [{lo}, {hi}]")
        self.inner = inner
        self.lo, self.hi = float(lo), float(hi)
        self.fallback = fallback if fallback is not None else none()

    def active(self, level: float | None) -> bool:
        return level is None or self.lo <= level <= self.hi

    def branch_coefficients(self, level: float | None = None) -> dict[Branch, float]:
        return (self.inner if self.active(level) else self.fallback).branch_coefficients(level)

    def regimes(self) -> list[dict[Branch, float]]:
        return self.inner.regimes() + self.fallback.regimes()

    def branch_sets(self) -> list[tuple[Branch, ...]]:
        return self.inner.branch_sets() + self.fallback.branch_sets()

    def probe_levels(self) -> list[float]:
        return [self.lo, self.hi, *self.inner.probe_levels(), *self.fallback.probe_levels()]

    @property
    def needs_grid(self) -> bool:
        return self.inner.needs_grid or self.fallback.needs_grid

    def on_grid(self, levels: Sequence[float]) -> Guidance:
        inner, fallback = self.inner.on_grid(levels), self.fallback.on_grid(levels)
        if inner is self.inner and fallback is self.fallback:
            return self
        return Interval(inner, self.lo, self.hi, fallback)

    @property
    def is_linear(self) -> bool:
        return self.inner.is_linear and self.fallback.is_linear

    def combine(self, predictions: Mapping[Branch, Any], step: GuidedStep) -> Any:
        return (self.inner if self.active(step.level) else self.fallback).combine(predictions, step)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "interval",
            "inner": self.inner.to_dict(),
            "lo": self.lo,
            "hi": self.hi,
            "fallback": self.fallback.to_dict(),
        }

    def spec(self) -> str:
        if self.fallback == none():
            return f"{self.inner.spec()}@[{_fmt(self.lo)},{_fmt(self.hi)}]"
        return f"interval({self.inner.spec()},{_fmt(self.lo)},{_fmt(self.hi)},{self.fallback.spec()})"


def _breakpoints(g: Guidance) -> list[float]:
    return g.probe_levels()


def _probe_levels(points: list[float]) -> list[float]:
    """Levels that visit every region between (and at) the breakpoints in [0, 1]."""
    edges = sorted({0.0, 1.0, *points})
    probes = list(edges)
    probes += [(a + b) / 2 for a, b in zip(edges, edges[1:], strict=False)]
    return sorted(set(probes))


# ---------------------------------------------------------------------------------------------------------------
# Weight schedules: weights that vary with the noise level
# ---------------------------------------------------------------------------------------------------------------

#: Noise level at which a scheduled weight is read when no level is given (``coefficients()``,
#: ``cond_strength()``, the AMG checks): mid-trajectory.
NOMINAL_LEVEL = 0.5
#: Noise levels (with the midpoints between them) probed to find every branch a scheduled guidance evaluates and its
#: most expensive stage: 0, 1/32, ..., 1.
SCHEDULE_PROBES = tuple(i / 32 for i in range(33))


class SerializationError(ValueError):
    """A guidance holds something no spec or dict can express (a Python callable weight)."""


class WeightSchedule:
    """A guidance weight ``w(level)`` over the noise level (1 = pure noise, the start of sampling; 0 = data).

    * ``linear(a, b)``: ``w = b + (a - b) * level``: ``a`` at the start of sampling, ``b`` at its end;
    * ``cosine(a, b)``: ``w = b + (a - b) * (1 - cos(pi * level)) / 2``: the same ends, flat at both;
    * a Python callable ``fn(level) -> float`` (Python API only: it has no spec and no dict, so
      :meth:`Guidance.spec` and :meth:`Guidance.to_dict` raise :class:`SerializationError`).

    Monotone schedules over the noise level follow Wang et al. (2024, "Analysis of classifier-free guidance weight
    schedulers"), who find increasing guidance toward the data end (``linear(1, w)``) a robust choice.
    """

    def __init__(self, kind: str, args: Sequence[float] = (), fn: Callable[[float], float] | None = None) -> None:
        if kind == "callable":
            if not callable(fn):
                raise ValueError(f"a callable weight schedule needs a function, got {fn!r}")
        elif kind not in SCHEDULES:
            raise ValueError(f"unknown weight schedule {kind!r}; known: {', '.join(SCHEDULES)}, or a callable")
        else:
            arity = SCHEDULE_ARITY[kind]
            if len(args) != arity:
                raise ValueError(f"{kind}() takes {arity} numbers, got {len(args)}")
            for a in args:
                if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a):
                    raise ValueError(f"{kind}(): {a!r} is not a finite number")
        self.kind = kind
        self.args = tuple(float(a) for a in args)
        self.fn = fn

    def __call__(self, level: float) -> float:
        if self.kind == "linear":
            a, b = self.args
            return b + (a - b) * level
        if self.kind == "cosine":
            a, b = self.args
            return b + (a - b) * 0.5 * (1.0 - math.cos(math.pi * level))
        assert self.fn is not None
        value = self.fn(level)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"weight schedule {self.describe()} returned {value!r} at noise level {level:g}")
        return float(value)

    def describe(self) -> str:
        if self.kind == "callable":
            return f"<callable {getattr(self.fn, '__qualname__', type(self.fn).__name__)}>"
        return f"{self.kind}({','.join(_fmt(a) for a in self.args)})"

    def spec(self) -> str:
        if self.kind == "callable":
            raise SerializationError(
                f"a Python callable weight ({self.describe()}) has no spec or dict form; use linear(a,b) or "
                "cosine(a,b) to record the guidance, or keep it in Python"
            )
        return self.describe()

    def to_dict(self) -> dict[str, Any]:
        self.spec()  # raises for callables
        return {"schedule": self.kind, "args": list(self.args)}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WeightSchedule):
            return NotImplemented
        if self.kind == "callable" or other.kind == "callable":
            return self.fn is other.fn
        return (self.kind, self.args) == (other.kind, other.args)

    def __hash__(self) -> int:
        return hash((self.kind, self.args, id(self.fn)))

    def __repr__(self) -> str:
        return f"WeightSchedule({self.describe()})"


#: A preset weight: a number, a schedule over the noise level, or a Python callable ``fn(level) -> float``.
Weight = float | WeightSchedule | Callable[[float], float]


def constant(w: float) -> float:
    """A constant weight (``constant(3)`` is ``3``)."""
    return Param("w", None, "number").check(w, "constant")


def linear(start: float, end: float) -> WeightSchedule:
    """A weight going linearly in the noise level from ``start`` (pure noise) to ``end`` (data)."""
    return WeightSchedule("linear", (start, end))


def cosine(start: float, end: float) -> WeightSchedule:
    """A weight going from ``start`` (pure noise) to ``end`` (data) along a half cosine in the noise level."""
    return WeightSchedule("cosine", (start, end))


#: Named weight schedules of the spec language (``cfg(linear(1,4))``) and the numbers each takes.
SCHEDULES: dict[str, Callable[..., Any]] = {"constant": constant, "linear": linear, "cosine": cosine}
SCHEDULE_ARITY = {"constant": 1, "linear": 2, "cosine": 2}
SCHEDULE_FORMULAS = {
    "constant": ("constant(w)", "w at every noise level (the same as a plain number)"),
    "linear": ("linear(a,b)", "b + (a - b) level: a at the start of sampling (noise), b at the end (data)"),
    "cosine": ("cosine(a,b)", "b + (a - b) (1 - cos(pi level)) / 2: a at the start, b at the end, flat at both"),
}


def schedule_from_dict(d: Mapping[str, Any]) -> WeightSchedule | float:
    """Inverse of :meth:`WeightSchedule.to_dict`."""
    kind = d.get("schedule")
    if kind not in SCHEDULES:
        raise ValueError(f"unknown weight schedule {kind!r} in {dict(d)}; known: {', '.join(SCHEDULES)}")
    return SCHEDULES[kind](*d.get("args", ()))


def _at(value: Any, level: float) -> Any:
    """``value`` with every weight schedule in it read at ``level``."""
    if isinstance(value, WeightSchedule):
        return value(level)
    if isinstance(value, Mapping):
        return {k: _at(v, level) for k, v in value.items()}
    return value


def _is_scheduled(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(_is_scheduled(v) for v in value.values())
    return isinstance(value, WeightSchedule)


def _fmt_weight(value: Any) -> str:
    return value.spec() if isinstance(value, WeightSchedule) else _fmt(value)


def _weight_record(value: Any) -> Any:
    """A weight as a JSON value: a number, or a schedule's dict."""
    if isinstance(value, WeightSchedule):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _weight_record(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------------------------------
# Library forms: one registry entry per preset
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """A parameter of a preset or an operator: a guidance ``weight`` (a finite number or a weight schedule,
    positional in specs), a ``number`` option (finite, at least ``minimum``, whole if ``integer``), a ``choice``
    among fixed words, or a set of ``conditions`` (names joined by ``+`` in specs)."""

    name: str
    default: Any
    kind: str = "weight"
    choices: tuple[str, ...] = ()
    help: str = ""
    minimum: float | None = None
    integer: bool = False

    def check(self, value: Any, preset: str) -> Any:
        """The normalised value, or ``ValueError`` naming the preset and parameter."""
        if self.kind == "weight":
            if isinstance(value, WeightSchedule):
                return value
            if isinstance(value, Mapping) and "schedule" in value:
                return schedule_from_dict(value)
            if callable(value):
                return WeightSchedule("callable", fn=value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{preset}: {self.name} must be a number or a weight schedule, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{preset}: {self.name}={value!r} is not a finite number")
            return float(value)
        if self.kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{preset}: {self.name} must be a finite number, got {value!r}")
            if self.minimum is not None and value < self.minimum:
                raise ValueError(f"{preset}: {self.name}={value!r} must be >= {_fmt(self.minimum)}")
            if self.integer:
                if value != int(value):
                    raise ValueError(f"{preset}: {self.name} must be a whole number, got {value!r}")
                return int(value)
            return float(value)
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{preset}: {self.name} must be one of {', '.join(self.choices)}, got {value!r}")
            return value
        if self.kind == "conditions":
            if value is None:
                return None
            names = (value,) if isinstance(value, str) else tuple(value)
            if not names or not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"{preset}: {self.name} must name conditions, got {value!r}")
            drop = Branch.make("good", names).drop
            return None if drop == (ALL,) else list(drop)
        raise AssertionError(self.kind)


@dataclass(frozen=True)
class Preset:
    """One named form of the algebra: its parameters (with paper defaults), the branch coefficients it compiles to,
    its formula and source. The constructor functions (:func:`cfg`, :func:`hg`, ...), the parser, :meth:`spec`,
    ``to_dict``/``from_dict`` and :func:`presets` (``--list-guidance``) are all derived from it.

    ``variadic`` names a parameter that collects ``name=weight`` pairs (:func:`multi_cfg`'s condition weights).
    Keyword parameters equal to their default are left out of specs and dicts.
    """

    name: str
    params: tuple[Param, ...]
    build: Callable[..., Mapping[Branch, float]]
    formula: str
    source: str
    variadic: str | None = None
    aliases: tuple[str, ...] = ()
    example: str | None = None  # a spec for presets() when the defaults do not make one

    @property
    def weights(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.kind == "weight")

    def __call__(self, *args: Any, **kwargs: Any) -> Guidance:
        """The guidance for these parameters: weights by position or name (all of them, or none for the paper
        defaults), other parameters by name."""
        weights = self.weights
        if not self.params and self.variadic is None and (args or kwargs):
            raise ValueError(f"{self.name} takes no arguments")
        if len(args) > len(weights):
            raise ValueError(f"{self.name} takes at most {len(weights)} weights, got {len(args)}")
        values: dict[str, Any] = dict(zip((p.name for p in weights), args, strict=False))
        variadic: dict[str, float] = {}
        for key, value in kwargs.items():
            if key in values:
                raise ValueError(f"{self.name}: {key} given twice")
            if any(p.name == key for p in self.params):
                values[key] = value
            elif self.variadic is not None and key == self.variadic and isinstance(value, Mapping):
                variadic.update(value)
            elif self.variadic is not None:
                variadic[key] = value
            else:
                known = ", ".join(p.name for p in self.params) or "no parameters"
                raise ValueError(f"{self.name} takes {known}; got {key}")
        given = [p.name for p in weights if p.name in values]
        if given and len(given) != len(weights):
            names = ", ".join(p.name for p in weights)
            raise ValueError(f"{self.name} takes all {len(weights)} weights ({names}) or none for the paper "
                             f"defaults; got {', '.join(given)}")  # fmt: skip
        params = {p.name: p.check(values[p.name], self.name) if p.name in values else p.default for p in self.params}
        if self.variadic is not None:
            if not variadic:
                raise ValueError(f"{self.name} needs at least one condition weight, e.g. {self.example}")
            if ALL in variadic:
                raise ValueError(f"{self.name} takes condition names; for all conditions at once use cfg(w)")
            params[self.variadic] = {k: Param(k, None).check(v, self.name) for k, v in variadic.items()}
        recorded = {k: v for k, v in params.items() if not self._omitted(k, v)}
        if _is_scheduled(params):
            return Scheduled(self.name, params, recorded)
        coefficients = self.build(**params)
        return Linear([(c, Term(b)) for b, c in coefficients.items()], preset=self.name, params=recorded)

    def _omitted(self, key: str, value: Any) -> bool:
        param = next((p for p in self.params if p.name == key), None)
        return param is not None and param.kind != "weight" and value == param.default

    def spec(self, params: Mapping[str, Any]) -> str:
        """The spec string of a guidance built with ``params`` (as recorded by :meth:`__call__`)."""
        args = [_fmt_weight(params[p.name]) for p in self.weights]
        if self.variadic is not None:
            args += [f"{k}={_fmt_weight(v)}" for k, v in params[self.variadic].items()]
        for p in self.params:
            if p.kind != "weight" and p.name in params:
                v = params[p.name]
                args.append(f"{p.name}={'+'.join(v) if isinstance(v, list) else v}")
        return f"{self.name}({','.join(args)})" if args else self.name

    def signature(self) -> str:
        """``name(w1,w2,...)`` as listed by :func:`presets`."""
        if self.example is not None:
            return self.example
        args = [p.name for p in self.weights]
        return f"{self.name}({','.join(args)})" if args else self.name

    def options(self) -> str:
        """The keyword parameters and their values (``on=cond/null``), default first."""
        return ", ".join(
            f"{p.name}={'/'.join(p.choices)}" if p.kind == "choice" else f"{p.name}=a+b"
            for p in self.params
            if p.kind != "weight"
        )


class Scheduled(Guidance):
    """A preset whose weights include schedules over the noise level (``cfg(linear(1,4))``,
    ``hg(cosine(2.7,1),2.5,1.2)``): at each level the preset's coefficients for the weights read there.

    The branches are the preset's; a branch whose coefficient is exactly zero at a stage's level (``cfg`` at weight
    1 drops ``good:null``) is skipped there and not counted, as outside an interval. Levels are probed at
    :data:`SCHEDULE_PROBES` (and midpoints) for :attr:`nfe_per_step` and :attr:`all_branches`; a run's
    ``Sampler.nfe`` reads every stage's own level, so it stays exact. With no level given the weights are read at
    :data:`NOMINAL_LEVEL`.
    """

    def __init__(self, preset: str, params: Mapping[str, Any], recorded: Mapping[str, Any]) -> None:
        self.preset = preset
        self.params = dict(recorded)
        self._values = dict(params)

    def weights_at(self, level: float | None) -> dict[str, Any]:
        """Every parameter with its schedules read at ``level`` (None: :data:`NOMINAL_LEVEL`)."""
        return {k: _at(v, NOMINAL_LEVEL if level is None else level) for k, v in self._values.items()}

    def branch_coefficients(self, level: float | None = None) -> dict[Branch, float]:
        return dict(PRESETS[self.preset].build(**self.weights_at(level)))

    def probe_levels(self) -> list[float]:
        return list(SCHEDULE_PROBES)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.preset, **{k: _weight_record(v) for k, v in self.params.items()}}

    def spec(self) -> str:
        return PRESETS[self.preset].spec(self.params)


#: Every preset by name (:func:`preset` also resolves the aliases).
PRESETS: dict[str, Preset] = {}
_PRESET_ALIASES: dict[str, str] = {}
#: Every operator (a form that wraps guidance expressions, e.g. ``interval``) by name.
OPERATORS: dict[str, Operator] = {}


def register_preset(p: Preset) -> Preset:
    """Add a preset to :data:`PRESETS` (its name and aliases must be new)."""
    for key in (p.name, *p.aliases):
        if key in _PRESET_ALIASES or key in OPERATORS:
            raise ValueError(f"guidance name {key!r} is already registered")
        _PRESET_ALIASES[key] = p.name
    PRESETS[p.name] = p
    return p


def preset(name: str) -> Preset:
    """The registered preset for a name or alias."""
    try:
        return PRESETS[_PRESET_ALIASES[name]]
    except KeyError:
        raise ValueError(f"unknown guidance {name!r}; known: {', '.join([*PRESETS, *OPERATORS])}") from None


def _weight(name: str, default: float, help: str = "") -> Param:
    return Param(name, default, help=help)


def none_coefficients() -> dict[Branch, float]:
    """The conditional prediction of the good model."""
    return {GOOD_COND: 1.0}


def cfg_coefficients(w: float, drop: Collection[str] | None = None) -> dict[Branch, float]:
    """AudioMoG eq. 5: ``eps(null) + w (eps(c) - eps(null))``; ``drop`` = the conditions nulled (default: all)."""
    return {GOOD_COND: w, Branch.make("good", ALL if drop is None else drop): 1.0 - w}


def ag_coefficients(w: float, on: str = "cond") -> dict[Branch, float]:
    """AudioMoG eq. 6: ``eps_bad(c) + w (eps(c) - eps_bad(c))``; ``on="null"`` uses the null branches."""
    good, bad = (GOOD_COND, BAD_COND) if on == "cond" else (GOOD_NULL, BAD_NULL)
    return {good: w, bad: 1.0 - w}


def pg_coefficients(w1: float, w2: float) -> dict[Branch, float]:
    """AudioMoG eq. 10: ``eps(null) + w1 (eps(c) - eps(null)) + w2 (eps(c) - eps_bad(c))``."""
    return {GOOD_COND: w1 + w2, GOOD_NULL: 1.0 - w1, BAD_COND: -w2}


def hg_coefficients(w1: float, w2: float, w3: float, order: str = "cfg") -> dict[Branch, float]:
    """The four HG coefficients: eq. 15 (``order="cfg"``, eq. 9) or eq. 14 (``order="ag"``, eq. 11)."""
    if order == "cfg":
        return {
            GOOD_COND: w1 * w3,
            GOOD_NULL: w3 * (1.0 - w1),
            BAD_COND: w2 * (1.0 - w3),
            BAD_NULL: (1.0 - w2) * (1.0 - w3),
        }
    if order == "ag":
        return {
            GOOD_COND: w1 * w3,
            GOOD_NULL: w2 * (1.0 - w3),
            BAD_COND: w3 * (1.0 - w1),
            BAD_NULL: (1.0 - w2) * (1.0 - w3),
        }
    raise ValueError(f"HG order must be 'cfg' (eq. 9) or 'ag' (eq. 11), got {order!r}")


def multi_cfg_coefficients(weights: Mapping[str, float], mode: str = "chain") -> dict[Branch, float]:
    """CFG with one scale per condition, chained (InstructPix2Pix) or separate (leave-one-out); see
    :func:`multi_cfg`."""
    names = list(weights)
    coeffs: dict[Branch, float] = {}

    def add(b: Branch, c: float) -> None:
        coeffs[b] = coeffs.get(b, 0.0) + c

    if mode == "chain":
        levels = [Branch.make("good", names[i:]) for i in range(len(names))] + [GOOD_COND]
        add(levels[0], 1.0)
        for i, n in enumerate(names):
            add(levels[i + 1], weights[n])
            add(levels[i], -weights[n])
    else:
        add(GOOD_COND, 1.0)
        for n in names:
            add(GOOD_COND, weights[n] - 1.0)
            add(Branch.make("good", [n]), 1.0 - weights[n])
    return coeffs


register_preset(Preset("none", (), none_coefficients, "eps(c)", "no guidance"))
register_preset(
    Preset(
        "cfg",
        (
            _weight("w", PAPER_DEFAULTS["cfg"][0], "guidance scale"),
            Param("drop", None, "conditions", help="conditions dropped (default: all, AV-Link)"),
        ),
        cfg_coefficients,
        "eps(null) + w (eps(c) - eps(null))",
        "AudioMoG eq. 5",
    )
)
register_preset(
    Preset(
        "ag",
        (
            _weight("w", PAPER_DEFAULTS["ag"][0], "autoguidance scale"),
            Param("on", "cond", "choice", ("cond", "null"), "branches the two models are compared on"),
        ),
        ag_coefficients,
        "eps_bad(c) + w (eps(c) - eps_bad(c))",
        "AudioMoG eq. 6",
    )
)
register_preset(
    Preset(
        "pg",
        (_weight("w1", PAPER_DEFAULTS["pg"][0], "CFG scale"), _weight("w2", PAPER_DEFAULTS["pg"][1], "AG scale")),
        pg_coefficients,
        "eps(null) + w1 (eps(c) - eps(null)) + w2 (eps(c) - eps_bad(c))",
        "AudioMoG eq. 10",
    )
)
register_preset(
    Preset(
        "hg",
        (
            _weight("w1", PAPER_DEFAULTS["hg"][0]),
            _weight("w2", PAPER_DEFAULTS["hg"][1]),
            _weight("w3", PAPER_DEFAULTS["hg"][2]),
            Param("order", "cfg", "choice", ("cfg", "ag"), "cfg: eq. 9, ag: eq. 11"),
        ),
        hg_coefficients,
        "order=cfg: badCFG_w2 + w3 (CFG_w1 - badCFG_w2); order=ag: ucAG_w2 + w3 (cAG_w1 - ucAG_w2)",
        "AudioMoG eqs. 9, 11",
    )
)
register_preset(
    Preset(
        "multi_cfg",
        (Param("mode", "chain", "choice", ("chain", "separate"), "chained or leave-one-out scales"),),
        multi_cfg_coefficients,
        "eps(null[a,b]) + w1 (eps(null[b]) - eps(null[a,b])) + w2 (eps(c) - eps(null[b]))",
        "InstructPix2Pix / AV-Link",
        variadic="weights",
        aliases=("mcfg",),
        example="multi_cfg(a=w1,b=w2)",
    )
)


def none() -> Guidance:
    """No guidance: the conditional prediction of the good model (1 NFE)."""
    return PRESETS["none"]()


def cfg(w: Weight = PAPER_DEFAULTS["cfg"][0], drop: str | Collection[str] | None = None) -> Guidance:
    """Classifier-free guidance (AudioMoG eq. 5): ``eps(null) + w (eps(c) - eps(null))``.

    ``drop`` names the conditions nulled in the unconditional branch; the default drops all of them together
    (joint multi-condition CFG, AV-Link). ``w`` (like every preset weight) may be a schedule over the noise level:
    ``cfg(linear(1, 4))``, ``cfg(lambda level: ...)``.
    """
    return PRESETS["cfg"](w, drop=drop)


def ag(w: Weight = PAPER_DEFAULTS["ag"][0], on: str = "cond") -> Guidance:
    """Autoguidance (AudioMoG eq. 6): ``eps_bad(c) + w (eps(c) - eps_bad(c))``; ``on="null"`` uses the nulls."""
    return PRESETS["ag"](w, on=on)


def pg(w1: Weight = PAPER_DEFAULTS["pg"][0], w2: Weight = PAPER_DEFAULTS["pg"][1]) -> Guidance:
    """Parallel MoG (AudioMoG eq. 10): ``eps(null) + w1 (eps(c) - eps(null)) + w2 (eps(c) - eps_bad(c))``."""
    return PRESETS["pg"](w1, w2)


def hg(
    w1: Weight = PAPER_DEFAULTS["hg"][0],
    w2: Weight = PAPER_DEFAULTS["hg"][1],
    w3: Weight = PAPER_DEFAULTS["hg"][2],
    order: str = "cfg",
) -> Guidance:
    """Hierarchical MoG.

    ``order="cfg"`` (AudioMoG eq. 9): CFG at ``w1`` on the good model and at ``w2`` on the bad model, then AG
    between them at ``w3``. ``order="ag"`` (eq. 11): AG at ``w1`` on the conditional and ``w2`` on the
    unconditional branches, then CFG between them at ``w3``.
    """
    return PRESETS["hg"](w1, w2, w3, order=order)


def multi_cfg(weights: Mapping[str, Weight], mode: str = "chain") -> Guidance:
    """CFG with one scale per named condition.

    ``mode="chain"`` (InstructPix2Pix style), conditions in the given order ``c1..cn``::

        eps(null[c1..cn]) + w1 (eps(null[c2..cn]) - eps(null[c1..cn])) + ... + wn (eps(cond) - eps(null[cn]))

    ``mode="separate"`` (leave-one-out)::

        eps(cond) + sum_i (w_i - 1) (eps(cond) - eps(null[c_i]))

    Both use ``n + 1`` branches and reduce to :func:`cfg` for one condition. Conditions not named are never dropped.
    For one scale on all conditions dropped together use ``cfg(w)``.
    """
    return PRESETS["multi_cfg"](weights=dict(weights), mode=mode)


def hg_reorder(w1: float, w2: float, w3: float, order: str = "cfg") -> tuple[float, float, float]:
    """Weights of the HG in the other order that gives the same guided prediction (AudioMoG Theorem 1).

    From ``order="cfg"`` (eq. 9 weights) this applies eq. 18 and returns eq. 11 weights; from ``order="ag"`` it
    applies eq. 19 and returns eq. 9 weights. Theorem 1 needs ``w3`` not in {0, 1} on both sides (there HG
    degenerates to a single guidance and the map divides by zero).
    """
    if order not in ("cfg", "ag"):
        raise ValueError(f"HG order must be 'cfg' or 'ag', got {order!r}")
    other = "ag" if order == "cfg" else "cfg"
    for bad in (0.0, 1.0):
        if math.isclose(w3, bad, abs_tol=1e-12):
            single = {
                ("cfg", 1.0): "CFG on the good model",
                ("cfg", 0.0): "CFG on the bad model",
                ("ag", 1.0): "AG on the conditional branches",
                ("ag", 0.0): "AG on the unconditional branches",
            }[(order, bad)]
            raise ValueError(
                f"hg_reorder: w3={w3:g} is excluded by Theorem 1 (w3 must not be 0 or 1): HG in {order!r} order "
                f"degenerates to {single} and has no unique {other!r}-order equivalent"
            )
    new_w3 = w1 * w3 + w2 * (1.0 - w3)
    for bad in (0.0, 1.0):
        if math.isclose(new_w3, bad, abs_tol=1e-12):
            raise ValueError(
                f"hg_reorder: the {other!r}-order equivalent of hg({w1:g},{w2:g},{w3:g},order={order}) would need "
                f"w3={new_w3:g}, which Theorem 1 excludes (w3 must not be 0 or 1)"
            )
    new_w1 = w1 * w3 / new_w3
    new_w2 = w3 * (1.0 - w1) / (1.0 - new_w3)
    return new_w1, new_w2, new_w3


def mixture(
    weights: Mapping[str | Branch, float] | Iterable[tuple[float, Guidance | str | Branch]],
    check_sum: bool = True,
) -> Guidance:
    """General mixture ``sum_i w_i eps_i`` (AudioMoG eq. 8) over branches or guidance expressions.

    ``weights`` is ``{"good:cond": 1.6, "good:null": -0.4, "bad:cond": -0.2}`` or ``[(w, guidance), ...]``. The
    weights must sum to one (an affine combination) unless ``check_sum=False``.
    """
    if isinstance(weights, Mapping):
        pairs = [(float(w), Term(Branch.parse(k))) for k, w in weights.items()]
    else:
        pairs = []
        for w, g in weights:
            pairs.append((float(w), g if isinstance(g, Guidance) else Term(Branch.parse(g))))
    if not pairs:
        raise ValueError("mixture() needs at least one component")
    total = sum(w for w, _ in pairs)
    if check_sum and abs(total - 1.0) > SUM_TOL:
        raise ValueError(
            f"mixture weights sum to {total:.6g}, not 1 (AudioMoG eq. 8); pass check_sum=False to allow this"
        )
    if check_sum:
        off = [g.spec() for _, g in pairs if not g.is_affine]
        if off:
            raise ValueError(f"mixture components are not affine: {off}; pass check_sum=False to allow this")
    return Linear(pairs)


def interval(inner: Guidance | str, lo: float, hi: float, fallback: Guidance | str | None = None) -> Guidance:
    """Apply ``inner`` only for noise levels in ``[lo, hi]``; ``fallback`` (default: no guidance) elsewhere."""
    inner_g = parse(inner) if isinstance(inner, str) else inner
    fb = parse(fallback) if isinstance(fallback, str) else fallback
    return Interval(inner_g, lo, hi, fb)


def branch(key: str | Branch) -> Guidance:
    """A single branch as a guidance expression, e.g. ``branch("bad:cond")``."""
    return Term(key)


# ---------------------------------------------------------------------------------------------------------------
# Operators: forms that wrap guidance expressions
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operator:
    """A form of the spec language whose arguments include guidance expressions (``args``: ``"guidance"`` or
    ``"number"`` per position; a trailing ``?`` makes it optional) and keyword ``options`` (``apg(G,eta=0.5)``).
    ``build(*args, **options)`` makes the guidance, which serialises itself; ``to_dict`` gives ``{"type": name,
    "inner": ..., **options}`` (``interval`` keeps its own fields)."""

    name: str
    args: tuple[str, ...]
    build: Callable[..., Guidance]
    signature: str
    formula: str
    nfe: str
    options: tuple[Param, ...] = ()
    source: str = ""

    def options_text(self) -> str:
        """The keyword options and their defaults (``eta=0, space=x0/eps/...``)."""
        out = []
        for p in self.options:
            if p.kind == "choice":
                out.append(f"{p.name}={'/'.join(p.choices)}")
            else:
                out.append(f"{p.name}={_fmt(p.default)}")
        return ", ".join(out)


def register_operator(op: Operator) -> Operator:
    """Add an operator to :data:`OPERATORS` (its name must be new)."""
    if op.name in OPERATORS or op.name in _PRESET_ALIASES:
        raise ValueError(f"guidance name {op.name!r} is already registered")
    OPERATORS[op.name] = op
    return op


register_operator(
    Operator(
        "interval",
        ("guidance", "number", "number", "guidance?"),
        interval,
        "G@[lo,hi] or interval(G,lo,hi,F)",
        "G for noise levels in [lo, hi], F (G@: none) elsewhere (Kynkaanniemi et al. 2024)",
        "<= nfe(G)",
    )
)


# ---------------------------------------------------------------------------------------------------------------
# Forms over the sampling grid's steps: window (diffusers' start/stop)
# ---------------------------------------------------------------------------------------------------------------


def _step_starts(levels: Sequence[float]) -> tuple[float, ...]:
    """The noise levels at which the steps of a grid with noise ``levels`` (``t_0 .. t_N``) start, ascending."""
    if len(levels) < 2:
        raise ValueError("a sampling grid needs at least two noise levels")
    return tuple(sorted(float(v) for v in levels[:-1]))


def step_index(starts: Sequence[float], level: float) -> int:
    """The step ``i`` whose interval ``(level_{i+1}, level_i]`` holds a stage at noise ``level`` (``starts`` from
    :func:`_step_starts`): a stage at ``t_i`` belongs to step ``i``, so Heun's corrector at ``t_{i+1}`` counts for
    step ``i + 1``, as the next step's first stage does."""
    return max(len(starts) - bisect.bisect_left(starts, level) - 1, 0)


class Window(Guidance):
    """``inner`` on the steps ``int(start N) <= i < int(stop N)`` of an ``N``-step run and the conditional prediction
    elsewhere: diffusers' ``start``/``stop`` fractions of the denoising steps (``_is_cfg_enabled``).

    It is sugar over noise levels for the chosen grid: on a grid with noise levels ``l_0 > ... > l_N`` it applies
    ``inner`` to stages whose level is in ``(l_{int(stop N)}, l_{int(start N)}]`` (so for single-stage solvers
    exactly diffusers' steps; a multi-stage solver's stage at ``t_{i+1}`` counts for step ``i + 1``). The grid
    binds when sampling (:meth:`Guidance.on_grid`, called by the Sampler); before that, counting questions treat it
    as ``inner`` and :class:`~v2a_sampler.core.engine.GuidedDenoiser` refuses it.
    """

    def __init__(
        self, inner: Guidance, start: float = 0.0, stop: float = 1.0, levels: Sequence[float] | None = None
    ) -> None:
        start = Param("start", 0.0, "number").check(start, "window")
        stop = Param("stop", 1.0, "number").check(stop, "window")
        if not (0.0 <= start < 1.0 and start <= stop <= 1.0):
            raise ValueError(f"window needs 0 <= start < 1 and start <= stop <= 1 (fractions of the steps), "
                             f"got start={_fmt(start)}, stop={_fmt(stop)}")  # fmt: skip
        self.inner = inner
        self.start, self.stop = start, stop
        self.levels = None if levels is None else tuple(float(v) for v in levels)
        if self.levels is not None:
            n = len(self.levels) - 1
            self.hi = self.levels[int(start * n)]  # the first guided step starts here
            self.lo = self.levels[int(stop * n)]  # the first unguided step after the window starts here

    def active(self, level: float | None) -> bool:
        if level is None or self.levels is None:
            return True
        return self.lo < level <= self.hi

    def branch_coefficients(self, level: float | None = None) -> dict[Branch, float]:
        return (self.inner if self.active(level) else none()).branch_coefficients(level)

    def regimes(self) -> list[dict[Branch, float]]:
        return self.inner.regimes() + none().regimes()

    def branch_sets(self) -> list[tuple[Branch, ...]]:
        return self.inner.branch_sets() + none().branch_sets()

    def probe_levels(self) -> list[float]:
        edges = [] if self.levels is None else [self.lo, self.hi]
        return edges + self.inner.probe_levels()

    @property
    def is_linear(self) -> bool:
        return self.inner.is_linear

    @property
    def needs_grid(self) -> bool:
        return self.levels is None or self.inner.needs_grid

    def on_grid(self, levels: Sequence[float]) -> Guidance:
        return Window(self.inner.on_grid(levels), self.start, self.stop, levels)

    def combine(self, predictions: Mapping[Branch, Any], step: GuidedStep) -> Any:
        return (self.inner if self.active(step.level) else none()).combine(predictions, step)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "window", "inner": self.inner.to_dict(), "start": self.start, "stop": self.stop}

    def spec(self) -> str:
        opts = ("" if self.start == 0.0 else f",start={_fmt(self.start)}") + (
            "" if self.stop == 1.0 else f",stop={_fmt(self.stop)}"
        )
        return f"window({self.inner.spec()}{opts})"


def window(inner: Guidance | str, start: float = 0.0, stop: float = 1.0) -> Guidance:
    """``inner`` on the steps ``int(start N) <= i < int(stop N)`` of an ``N``-step run, no guidance elsewhere
    (diffusers' ``start``/``stop``); spec ``window(G,start=0.2,stop=0.8)`` or ``cfg(4.5,start=0.2,stop=0.8)``."""
    return Window(parse(inner) if isinstance(inner, str) else inner, start, stop)


register_operator(
    Operator(
        "window",
        ("guidance", "number?", "number?"),
        window,
        "window(G,start,stop) or P(...,start=a,stop=b)",
        "G on the steps int(start N) <= i < int(stop N) of N, none elsewhere: noise levels (l_stop, l_start] of the "
        "grid",
        "<= nfe(G)",
        (
            Param("start", 0.0, "number", help="fraction of the steps before guidance starts"),
            Param("stop", 1.0, "number", help="fraction of the steps after which guidance stops"),
        ),  # fmt: skip
        "diffusers guiders' start/stop",
    )
)


# ---------------------------------------------------------------------------------------------------------------
# Non-linear operators: rescale, APG, CFG-Zero*, MAMBO-G
# ---------------------------------------------------------------------------------------------------------------

#: Prediction spaces an operator can act in; ``native`` is the good model's own prediction type.
SPACES = ("native", "x0", "eps", "v", "velocity")
#: Smallest norm APG divides by when it normalises the conditional prediction (torch's ``F.normalize``).
APG_NORM_EPS = 1e-12
#: Added to ``|p_b|^2`` in CFG-Zero*'s optimal scale (as the reference implementation).
ZERO_STAR_EPS = 1e-8


def space_map(native: Prediction | str, space: Prediction | str, terms: Any) -> tuple[float, float]:
    """``(A, B)`` such that a prediction ``p`` of type ``native`` is ``q = A x + B p`` as type ``space``, at a state
    ``x`` with schedule ``terms`` (``x = alpha x0 + sigma eps``; every such conversion is affine).

    From ``x0 = a x + b p`` (:func:`~v2a_sampler.core.denoisers.x0_coefficients`) and ``q = c_x x + c_0 x0`` with
    ``(c_x, c_0)`` = ``(0, 1)`` for x0, ``(1/sigma, -alpha/sigma)`` for eps, ``(alpha/sigma, -(alpha^2 + sigma^2)
    /sigma)`` for v and ``(dsigma/sigma, dalpha - dsigma alpha/sigma)`` for velocity. Needs ``sigma > 0``; eps is
    not a usable space where ``alpha = 0`` (every eps there is ``x / sigma``)."""
    native, space = Prediction.parse(native), Prediction.parse(space)
    if native is space:
        return 0.0, 1.0
    al, si = terms.alpha, terms.sigma
    if si <= 0.0:
        raise ValueError("prediction spaces cannot be converted at sigma = 0 (the data end)")
    c = {
        Prediction.X0: (0.0, 1.0),
        Prediction.EPS: (1.0 / si, -al / si),
        Prediction.V: (al / si, -(al * al + si * si) / si),
        Prediction.VELOCITY: (terms.d_sigma / si, terms.d_alpha - terms.d_sigma * al / si),
    }[space]
    a, b = x0_coefficients(native, terms)
    big_a, big_b = c[0] + c[1] * a, c[1] * b
    if big_b == 0.0 or not math.isfinite(big_b):
        raise ValueError(f"space={space.value} is undefined at this noise level (alpha = {al:g}): a guidance operator "
                         "cannot act on eps where alpha = 0 (pure noise); use space=x0, v or velocity")  # fmt: skip
    return big_a, big_b


def _row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-row values ``(B,)`` shaped to broadcast against ``like`` ``(B, ...)``."""
    return values.view(-1, *([1] * (like.ndim - 1)))


def _row_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(dim=1)


def _space_param(default: str, why: str) -> Param:
    return Param("space", default, "choice", (default, *(s for s in SPACES if s != default)), why)


class Operation(Guidance):
    """A non-linear operator wrapping one guidance expression ``inner``: ``name(inner, option=value, ...)``.

    It evaluates exactly ``inner``'s branches (its :meth:`branch_coefficients` are ``inner``'s, so NFE and batching
    are unchanged), receives them as predictions by branch and returns the guided prediction. Subclasses implement
    :meth:`apply` in their prediction ``space`` (option ``space``; ``native`` = the good model's prediction type):
    the branch predictions are converted there with :func:`space_map` and the result converted back. Rows of a batch
    are independent samples: every norm, dot product and standard deviation is taken per row, and per-run state
    (APG's momentum) lives in ``step.state`` per row. Operators need ``good:cond`` among ``inner``'s branches; at a
    level where ``inner`` does not evaluate it (a coefficient of 0) the operator passes ``inner`` through.
    """

    name: ClassVar[str] = ""
    OPTIONS: ClassVar[tuple[Param, ...]] = ()

    def __init__(self, inner: Guidance | str, **options: Any) -> None:
        inner = parse(inner) if isinstance(inner, str) else inner
        if not isinstance(inner, Guidance):
            raise TypeError(f"{self.name}() wraps a guidance expression, got {inner!r}")
        known = {p.name: p for p in self.OPTIONS}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"{self.name} takes options {', '.join(known)}; got {', '.join(unknown)}")
        self.inner = inner
        self.options: dict[str, Any] = {
            n: p.check(options[n], self.name) if n in options else p.default for n, p in known.items()
        }
        if GOOD_COND not in inner.all_branches:
            have = ", ".join(b.key for b in inner.all_branches)
            raise ValueError(f"{self.name}() needs the conditional branch good:cond in its guidance; "
                             f"{describe(inner)} evaluates {have}")  # fmt: skip

    # -- the algebra: inner's branches --------------------------------------------------------------------------
    def branch_coefficients(self, level: float | None = None) -> dict[Branch, float]:
        return self.inner.branch_coefficients(level)

    def regimes(self) -> list[dict[Branch, float]]:
        return self.inner.regimes()

    def branch_sets(self) -> list[tuple[Branch, ...]]:
        return self.inner.branch_sets()

    def probe_levels(self) -> list[float]:
        return self.inner.probe_levels()

    @property
    def needs_grid(self) -> bool:
        return self.inner.needs_grid

    def on_grid(self, levels: Sequence[float]) -> Guidance:
        inner = self.inner.on_grid(levels)
        return self if inner is self.inner else type(self)(inner, **self.options)

    @property
    def is_identity(self) -> bool:
        """True when these options make the operator return ``inner`` unchanged (e.g. ``rescale(G, phi=0)``)."""
        return False

    @property
    def is_linear(self) -> bool:
        return self.is_identity and self.inner.is_linear

    # -- evaluation ---------------------------------------------------------------------------------------------
    def strength(self, level: float | None) -> float:
        """``c - 1`` with ``c`` the coefficient of ``good:cond`` in ``inner`` at ``level``: the guidance strength
        that turns ``inner``'s update ``p_G - p_c`` into a direction ``(p_G - p_c) / (c - 1)`` (for ``cfg(w)``:
        ``w - 1`` and ``p_c - p_null``; ``ag``: ``w - 1``; ``pg``: ``w1 + w2 - 1``; ``hg``: ``w1 w3 - 1``)."""
        return self.inner.branch_coefficients(level).get(GOOD_COND, 0.0) - 1.0

    def combine(self, predictions: Mapping[Branch, Any], step: GuidedStep) -> Any:
        if self.is_identity or GOOD_COND not in predictions:
            return self.inner.combine(predictions, step)
        native = Prediction.parse(step.prediction)
        space = self.options.get("space", "native")
        target = native if space == "native" else Prediction.parse(space)
        if target is native:
            return self.apply(predictions, step)
        a, b = space_map(native, target, step.terms)
        x = step.x.to(predictions[GOOD_COND].dtype)
        q = {br: a * x + b * p for br, p in predictions.items()}
        out = self.apply(q, dataclasses.replace(step, prediction=target))
        return (out - a * x) / b

    def apply(self, q: Mapping[Branch, torch.Tensor], step: GuidedStep) -> torch.Tensor:
        """The guided prediction from branch predictions ``q`` in the operator's space (``step.prediction``)."""
        raise NotImplementedError

    # -- serialisation ------------------------------------------------------------------------------------------
    def _changed(self) -> dict[str, Any]:
        return {p.name: self.options[p.name] for p in self.OPTIONS if self.options[p.name] != p.default}

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.name, "inner": self.inner.to_dict(), **self._changed()}

    def spec(self) -> str:
        opts = "".join(f",{k}={v if isinstance(v, str) else _fmt(v)}" for k, v in self._changed().items())
        return f"{self.name}({self.inner.spec()}{opts})"


class Rescale(Operation):
    """Guidance rescale (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed", arXiv
    2305.08891, sec. 3.4): with ``p_G`` the guided and ``p_c`` the conditional prediction,

        p_rescaled = p_G * std(p_c) / std(p_G)          (per sample)
        p = phi * p_rescaled + (1 - phi) * p_G

    The paper rescales the output of its v-prediction model (``space=v``, the default here); diffusers'
    ``guidance_rescale`` acts on whatever the model predicts (``space=native``). ``phi = 0.7`` is the paper's value.
    """

    name = "rescale"
    OPTIONS = (
        Param("phi", 0.7, "number", help="share of the rescaled prediction (0: plain G)"),
        _space_param("v", "Lin et al. rescale v predictions"),
    )

    @property
    def is_identity(self) -> bool:
        return self.options["phi"] == 0.0

    def apply(self, q: Mapping[Branch, torch.Tensor], step: GuidedStep) -> torch.Tensor:
        guided = self.inner.combine(q, step)
        std_c, std_g = q[GOOD_COND].flatten(1).std(dim=1), guided.flatten(1).std(dim=1)
        ratio = torch.where(std_g > 0, std_c / std_g, torch.ones_like(std_g))
        phi = self.options["phi"]
        return phi * (guided * _row(ratio, guided)) + (1.0 - phi) * guided


class APG(Operation):
    """Adaptive projected guidance (Sadat et al., "Eliminating oversaturation and artifacts of high guidance
    scales in diffusion models", arXiv 2410.02416, ICLR 2025). With ``s = c - 1`` (:meth:`strength`) and the
    direction ``d = (p_G - p_c) / s`` (for ``cfg(w)``: ``p_c - p_null``):

        d <- d + beta * d_prev                       (momentum, state per sample and run; once per model stage)
        d <- d * min(1, r / |d|)                     (norm cap; r = 0: none)
        d_par = (<d, p_c> / |p_c|^2) p_c,  d_orth = d - d_par
        p = p_c + s * (d_orth + eta * d_par)

    The paper applies it to the denoised (x0) prediction (``space=x0``, the default). ``eta = 1``, ``r = 0``,
    ``beta = 0`` give ``G`` back (then the linear fast path runs). Equals diffusers' ``AdaptiveProjectedGuidance(
    guidance_scale=w - 1, use_original_formulation=True, eta, adaptive_projected_guidance_rescale=r,
    adaptive_projected_guidance_momentum=beta)`` on ``space=native`` predictions. Where ``s = 0`` there is no
    direction: ``G`` passes unchanged.
    """

    name = "apg"
    OPTIONS = (
        Param("eta", 0.0, "number", help="scale of the part parallel to p_c (paper: 0)"),
        Param("r", 0.0, "number", help="cap on the direction's norm per sample (0: none)", minimum=0.0),
        Param("beta", 0.0, "number", help="momentum of the direction (paper: negative, e.g. -0.5; 0: none)"),
        _space_param("x0", "APG acts on denoised predictions"),
    )

    @property
    def is_identity(self) -> bool:
        o = self.options
        return o["eta"] == 1.0 and o["r"] == 0.0 and o["beta"] == 0.0

    def apply(self, q: Mapping[Branch, torch.Tensor], step: GuidedStep) -> torch.Tensor:
        guided = self.inner.combine(q, step)
        s = self.strength(step.level)
        if abs(s) <= ZERO_TOL:
            return guided
        pc = q[GOOD_COND]
        d = (guided - pc) / s
        beta, r, eta = self.options["beta"], self.options["r"], self.options["eta"]
        if beta != 0.0:
            key = ("apg", id(self))
            previous = step.state.get(key)
            if previous is not None:
                d = d + beta * previous
            step.state[key] = d
        if r > 0.0:
            d = d * _row(torch.clamp(r / _row_norm(d), max=1.0), d)
        unit = pc / _row(_row_norm(pc).clamp_min(APG_NORM_EPS), pc)
        parallel = _row(_row_dot(d, unit), d) * unit
        return pc + s * ((d - parallel) + eta * parallel)


class ZeroStar(Operation):
    """CFG-Zero* (Fan et al. 2025, "CFG-Zero*: improved classifier-free guidance for flow matching models", arXiv
    2503.18886): the unconditional velocity is scaled by the per-sample optimal ``s* = <v_c, v_u> / |v_u|^2``
    (the least-squares fit of ``v_c`` by ``s v_u``) before CFG,

        v = s* v_u + w (v_c - s* v_u),

    and the first ``k`` steps output zero velocity (zero-init; diffusers' ``zero_init_steps``, default 1). Applied
    to ``G`` by scaling every branch ``b`` other than ``good:cond`` by ``s*_b = <p_c, p_b> / (|p_b|^2 + 1e-8)`` and
    combining as ``G`` does (for ``cfg(w)`` exactly the paper). Defined on the flow velocity (``space=velocity``,
    the default). Equals diffusers' ``ClassifierFreeZeroStarGuidance(guidance_scale=w, zero_init_steps=k)``. The
    zero-init steps still evaluate (and count) ``G``'s branches, as diffusers does; they bind to the sampling grid
    like :func:`window` (step ``i`` = stages at levels in ``(l_{i+1}, l_i]``).
    """

    name = "zero_star"
    OPTIONS = (
        Param("k", 1, "number", help="steps with zero output at the start (zero-init)", minimum=0, integer=True),
        _space_param("velocity", "CFG-Zero* scales flow velocities"),
    )

    def __init__(self, inner: Guidance | str, levels: Sequence[float] | None = None, **options: Any) -> None:
        super().__init__(inner, **options)
        self.levels = None if levels is None else tuple(float(v) for v in levels)
        self._starts = None if levels is None else _step_starts(self.levels)

    @property
    def needs_grid(self) -> bool:
        return (self.options["k"] > 0 and self._starts is None) or self.inner.needs_grid

    def on_grid(self, levels: Sequence[float]) -> Guidance:
        return ZeroStar(self.inner.on_grid(levels), levels, **self.options)

    def apply(self, q: Mapping[Branch, torch.Tensor], step: GuidedStep) -> torch.Tensor:
        pc = q[GOOD_COND]
        k = self.options["k"]
        if k > 0:
            if self._starts is None:
                raise ValueError("zero_star(k>0) needs the sampling grid: sample through Sampler/sample()")
            if step_index(self._starts, step.level) < k:
                return torch.zeros_like(pc)
        scaled = {}
        for b, p in q.items():
            scaled[b] = p if b == GOOD_COND else _row(_row_dot(pc, p) / (_row_dot(p, p) + ZERO_STAR_EPS), p) * p
        return self.inner.combine(scaled, step)


class Mambo(Operation):
    """MAMBO-G, magnitude-aware guidance (arXiv 2508.03442; diffusers' ``MagnitudeAwareGuidance``): the guidance
    update is damped where it is large relative to the unconditional prediction. With ``s = c - 1``, the direction
    ``d = (p_G - p_c) / s`` and the implied unconditional prediction ``p_u = p_c - d`` (for ``cfg(w)``: ``p_null``):

        ratio = |d| / |p_u|                          (per sample)
        p = p_c + exp(-alpha * ratio) * (p_G - p_c)

    i.e. CFG at the scale ``1 + (w - 1) exp(-alpha ratio)``. Acts on the model's own prediction (``space=native``,
    as diffusers). Equals ``MagnitudeAwareGuidance(guidance_scale=w, alpha)``; ``alpha = 0`` gives ``G`` back.
    """

    name = "mambo"
    OPTIONS = (
        Param("alpha", 8.0, "number", help="damping: larger suppresses large updates more", minimum=0.0),
        _space_param("native", "diffusers applies it to the model output"),
    )

    @property
    def is_identity(self) -> bool:
        return self.options["alpha"] == 0.0

    def apply(self, q: Mapping[Branch, torch.Tensor], step: GuidedStep) -> torch.Tensor:
        guided = self.inner.combine(q, step)
        s = self.strength(step.level)
        if abs(s) <= ZERO_TOL:
            return guided
        pc = q[GOOD_COND]
        update = guided - pc
        d = update / s
        ratio = _row_norm(d) / _row_norm(pc - d)
        return pc + _row(torch.exp(-self.options["alpha"] * ratio), update) * update


def rescale(inner: Guidance | str, phi: float = 0.7, space: str = "v") -> Guidance:
    """Guidance rescale (Lin et al. 2024) around ``inner``: see :class:`Rescale`."""
    return Rescale(inner, phi=phi, space=space)


def apg(inner: Guidance | str, eta: float = 0.0, r: float = 0.0, beta: float = 0.0, space: str = "x0") -> Guidance:
    """Adaptive projected guidance (Sadat et al. 2025) around ``inner``: see :class:`APG`."""
    return APG(inner, eta=eta, r=r, beta=beta, space=space)


def zero_star(inner: Guidance | str, k: int = 1, space: str = "velocity") -> Guidance:
    """CFG-Zero* (Fan et al. 2025) around ``inner``: see :class:`ZeroStar`."""
    return ZeroStar(inner, k=k, space=space)


def mambo(inner: Guidance | str, alpha: float = 8.0, space: str = "native") -> Guidance:
    """MAMBO-G magnitude-aware guidance around ``inner``: see :class:`Mambo`."""
    return Mambo(inner, alpha=alpha, space=space)


for _op, _build, _formula, _source in (
    (Rescale, rescale, "phi G std(p_c)/std(G) + (1 - phi) G, per sample", "Lin et al. 2024 (arXiv 2305.08891)"),
    (APG, apg, "p_c + s (d_orth + eta d_par), d = (G - p_c)/s with momentum beta and norm cap r, split along p_c",
     "Sadat et al. 2025 (APG, arXiv 2410.02416)"),
    (ZeroStar, zero_star, "G with every other branch p_b scaled by dot(p_c,p_b)/dot(p_b,p_b); 0 for the first k steps",
     "Fan et al. 2025 (CFG-Zero*, arXiv 2503.18886)"),
    (Mambo, mambo, "p_c + exp(-alpha norm(d)/norm(p_c - d)) (G - p_c), d = (G - p_c)/s", "MAMBO-G, arXiv 2508.03442"),
):  # fmt: skip
    register_operator(
        Operator(_op.name, ("guidance",), _build, f"{_op.name}(G)", _formula, "nfe(G)", _op.OPTIONS, _source)
    )


def step_table(g: Guidance, levels: Sequence[float]) -> list[dict[str, Any]]:
    """What ``g`` does on each step of a grid with noise ``levels`` (``t_0 .. t_N``), read at each step's first
    stage: ``{"step", "level", "nfe", "coefficients" (branch key -> coefficient), "notes"}`` (``--explain``).
    Non-linear operators list the coefficients of the branches they combine; ``notes`` names steps where an
    operator does something the coefficients do not show (``zero_star``'s zero output)."""
    bound = g.on_grid(levels)
    rows = []
    for i, level in enumerate(levels[:-1]):
        rows.append({
            "step": i,
            "level": float(level),
            "nfe": bound.nfe_at(level),
            "coefficients": bound.coefficients(level),
            "notes": _notes(bound, level),
        })  # fmt: skip
    return rows


def _notes(g: Guidance, level: float) -> list[str]:
    if isinstance(g, ZeroStar) and g._starts is not None and step_index(g._starts, level) < g.options["k"]:
        return [f"{g.name}: zero output (first {g.options['k']} steps)", *_notes(g.inner, level)]
    if isinstance(g, Operation):
        return _notes(g.inner, level)
    if isinstance(g, Window):
        return _notes(g.inner, level) if g.active(level) else []
    if isinstance(g, Interval):
        return _notes(g.inner if g.active(level) else g.fallback, level)
    if isinstance(g, Linear):
        return [n for _, sub in g.terms for n in _notes(sub, level)]
    return []


def describe(g: Guidance) -> str:
    """``g.spec()``, or a readable stand-in where no spec exists (a Python callable weight)."""
    try:
        return g.spec()
    except SerializationError as e:
        return f"<{type(g).__name__}: {e}>"


def record(g: Guidance) -> dict[str, Any]:
    """``g.to_dict()`` for run records (``SampleInfo.guidance``); a guidance with a Python callable weight, which has
    no dict form, is recorded as ``{"type": "unserialisable", "reason": ...}`` (``from_dict`` rejects it)."""
    try:
        return g.to_dict()
    except SerializationError as e:
        return {"type": "unserialisable", "reason": str(e)}


# ---------------------------------------------------------------------------------------------------------------
# Serialization
# ---------------------------------------------------------------------------------------------------------------


def from_dict(d: Mapping[str, Any]) -> Guidance:
    """Inverse of :meth:`Guidance.to_dict`."""
    kind = d.get("type")
    if kind == "branch":
        return Term(d["key"])
    if kind == "linear":
        return Linear([(float(c), from_dict(g)) for c, g in d["terms"]])
    if kind == "interval":
        return Interval(from_dict(d["inner"]), d["lo"], d["hi"], from_dict(d["fallback"]))
    if kind in OPERATORS:
        return OPERATORS[kind].build(
            from_dict(d["inner"]), **{k: v for k, v in d.items() if k not in ("type", "inner")}
        )
    if kind == "unserialisable":
        raise ValueError(f"this guidance was not recorded (it had no dict form): {d.get('reason', '')}")
    if kind in PRESETS:
        return PRESETS[kind](**{k: v for k, v in d.items() if k != "type"})
    raise ValueError(f"unknown guidance type {kind!r} in {dict(d)}")


def from_json(text: str) -> Guidance:
    return from_dict(json.loads(text))


# ---------------------------------------------------------------------------------------------------------------
# Parsing spec strings
# ---------------------------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"\s*(?:(?P<branch>[a-z]+:(?:cond|null)(?:\[[^\]]*\])?)"
    r"|(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>[()\[\],=+\-*@]))"
)
#: Longest spec quoted whole in an error message; longer ones are cut (``...``).
SHOWN_CHARS = 80


def _shown(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


#: Deepest nesting of parentheses and calls a spec may use.
MAX_DEPTH = 64


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks: list[tuple[str, str]] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            m = _TOKEN_RE.match(text, pos)
            if not m or m.end() == pos:
                raise self.error(f"unexpected character {text[pos]!r} at position {pos}")
            kind = m.lastgroup or ""
            self.toks.append((kind, m.group(kind)))
            pos = m.end()
            while pos < len(text) and text[pos].isspace():
                pos += 1
        self.i = 0
        self.depth = 0

    def error(self, msg: str) -> ValueError:
        return ValueError(f"cannot parse guidance {_shown(self.text)!r}: {msg}")

    def peek(self, value: str | None = None, kind: str | None = None) -> bool:
        if self.i >= len(self.toks):
            return False
        k, v = self.toks[self.i]
        return (value is None or v == value) and (kind is None or k == kind)

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        if not self.peek(value, kind):
            got = self.toks[self.i][1] if self.i < len(self.toks) else "end of input"
            raise self.error(f"expected {value or kind}, got {got!r}")
        self.i += 1
        return self.toks[self.i - 1][1]

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"nested deeper than {MAX_DEPTH} levels")

    def parse(self) -> Guidance:
        g = self.expr()
        if self.i != len(self.toks):
            raise self.error(f"unexpected {self.toks[self.i][1]!r}")
        return g

    def expr(self) -> Guidance:
        terms = [self.term(1.0)]
        while self.peek("+") or self.peek("-"):
            sign = 1.0 if self.take() == "+" else -1.0
            terms.append(self.term(sign))
        if len(terms) == 1 and terms[0][0] == 1.0:
            return terms[0][1]
        return Linear(terms)

    def term(self, sign: float) -> tuple[float, Guidance]:
        coef = sign
        while self.peek("-") or self.peek("+"):  # unary signs, as in "a+-0.2*b"
            coef = -coef if self.take() == "-" else coef
        g: Guidance | None = None
        while True:
            if self.peek(kind="num"):
                coef *= self.finite(self.take())
            else:
                if g is not None:
                    raise self.error("a product may hold only one guidance factor")
                g = self.factor()
            if not self.peek("*"):
                break
            self.take("*")
        if g is None:
            raise self.error("a number alone is not a guidance; write e.g. '0.5*cfg(3)'")
        return coef, g

    def finite(self, text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise self.error(f"number {text} is not finite")
        return value

    def factor(self) -> Guidance:
        self.enter()
        if self.peek("("):
            self.take("(")
            g = self.expr()
            self.take(")")
        elif self.peek(kind="branch"):
            g = Term(self.take())
        elif self.peek(kind="name"):
            g = self.call()
        else:
            got = self.toks[self.i][1] if self.i < len(self.toks) else "end of input"
            raise self.error(f"expected a guidance, got {got!r}")
        if self.peek("@"):
            self.take("@")
            self.take("[")
            lo = self.number()
            self.take(",")
            hi = self.number()
            self.take("]")
            try:
                g = Interval(g, lo, hi)
            except ValueError as e:
                raise self.error(str(e)) from None
        self.depth -= 1
        return g

    def number(self) -> float:
        sign = -1.0 if self.peek("-") else 1.0
        if self.peek("-"):
            self.take("-")
        return sign * self.finite(self.take(kind="num"))

    def call(self) -> Guidance:
        name = self.take(kind="name").lower()
        op = OPERATORS.get(name)
        if op is None and name not in _PRESET_ALIASES:
            if name in SCHEDULES:
                raise self.error(f"{name}(...) is a weight schedule; use it as a weight, e.g. cfg({name}(1,4))")
            raise self.error(f"unknown guidance {name!r}; known: {', '.join([*PRESETS, *OPERATORS])}")
        pos: list[Any] = []
        kw: dict[str, Any] = {}
        if self.peek("("):
            self.take("(")
            while not self.peek(")"):
                if self.peek(kind="name") and self.i + 1 < len(self.toks) and self.toks[self.i + 1][1] == "=":
                    key = self.take()
                    self.take("=")
                    if self.peek(kind="num") or self.peek("-"):
                        kw[key] = self.number()
                    elif self.at_schedule():
                        kw[key] = self.schedule()
                    else:
                        vals = [self.take(kind="name")]
                        while self.peek("+"):
                            self.take("+")
                            vals.append(self.take(kind="name"))
                        kw[key] = vals if len(vals) > 1 or key == "drop" else vals[0]
                elif op is not None and len(pos) < len(op.args) and op.args[len(pos)].startswith("guidance"):
                    pos.append(self.expr())
                elif op is None and self.at_schedule():
                    pos.append(self.schedule())
                else:
                    pos.append(self.number())
                if not self.peek(")"):
                    self.take(",")
            self.take(")")
        try:
            # diffusers-style start/stop on any preset or operator: sugar for window(...)
            steps = {k: kw.pop(k) for k in ("start", "stop") if k in kw} if name != "window" else {}
            if op is not None:
                required = sum(not a.endswith("?") for a in op.args)
                options = {p.name for p in op.options}
                if not required <= len(pos) <= len(op.args) or set(kw) - options:
                    extra = f" and options {', '.join(sorted(options))}" if options else ""
                    raise ValueError(f"{name} takes ({', '.join(op.args)}) arguments{extra}")
                g = op.build(*pos, **kw)
            else:
                g = preset(name)(*pos, **kw)
            return Window(g, **steps) if steps else g
        except (TypeError, ValueError) as e:
            raise self.error(str(e)) from None

    def at_schedule(self) -> bool:
        """Whether a weight schedule call (``linear(1,4)``) starts here."""
        return (
            self.peek(kind="name")
            and self.toks[self.i][1].lower() in SCHEDULES
            and self.i + 1 < len(self.toks)
            and self.toks[self.i + 1][1] == "("
        )

    def schedule(self) -> Any:
        """A weight schedule call: ``name(number, ...)``."""
        name = self.take(kind="name").lower()
        self.take("(")
        args = []
        while not self.peek(")"):
            args.append(self.number())
            if not self.peek(")"):
                self.take(",")
        self.take(")")
        if len(args) != SCHEDULE_ARITY[name]:
            raise self.error(f"{name}() takes {SCHEDULE_ARITY[name]} numbers, got {len(args)}")
        return SCHEDULES[name](*args)


def parse(spec: str | Guidance | Mapping[str, Any] | None) -> Guidance:
    """Turn a spec into a guidance object.

    Accepts ``"none"``, ``"cfg(4.5)"``, ``"cfg(4.5,drop=text)"``, ``"ag(2)"``, ``"pg(2.7,0.15)"``,
    ``"hg(2.7,2.5,1.2)"``, ``"hg(1.5,1.5,2,order=ag)"``, bare names (``"hg"`` = paper defaults),
    ``"multi_cfg(video=3,text=2)"``, intervals ``"cfg(4.5)@[0.2,0.8]"``, step windows ``"cfg(4.5,start=0.2)"`` /
    ``"window(hg,stop=0.8)"``, scheduled weights ``"cfg(linear(1,4))"``, operators ``"apg(cfg(7),eta=0)"``,
    ``"rescale(hg,phi=0.7)"``, ``"zero_star(cfg(4))"``, ``"mambo(cfg(10))"``, branch keys (``"bad:cond"``), linear
    combinations ``"0.5*cfg(3)+0.5*ag(2)"``, a dict from :meth:`Guidance.to_dict` (or its JSON text), or a
    guidance object. Every weight and every branch coefficient must be finite, and the result must evaluate at
    least one branch; anything else is a one-line ``ValueError``.
    """
    if isinstance(spec, Guidance):
        return spec
    if spec is None:
        return none()
    if isinstance(spec, Mapping):
        return check_branches(_from_data(spec, None))
    text = str(spec).strip()
    if not text:
        raise ValueError("empty guidance spec")
    if text.startswith("{"):
        return check_branches(_from_data(text, text), text)
    return check_branches(_Parser(text).parse(), text)


def _from_data(data: Mapping[str, Any] | str, text: str | None) -> Guidance:
    """:func:`from_dict` / :func:`from_json` with every malformed input as one ``ValueError``."""
    try:
        return from_json(data) if isinstance(data, str) else from_dict(data)
    except json.JSONDecodeError as e:
        raise ValueError(f"cannot parse guidance {_shown(text or '')!r}: invalid JSON ({e.msg} at column {e.colno})"
                         ) from None  # fmt: skip
    except ValueError:
        raise
    except (TypeError, KeyError, AttributeError, IndexError, RecursionError) as e:
        what = f"guidance {_shown(text)!r}" if text is not None else "guidance dict"
        reason = _shown(f"{type(e).__name__}: {e}")
        raise ValueError(f"cannot read {what}: not a guidance dict ({reason})") from None


def check_branches(g: Guidance, text: str | None = None) -> Guidance:
    """``g``, or ``ValueError`` when every branch coefficient cancels (``0*cfg(3)``, ``cfg(3)-cfg(3)``) or a
    coefficient overflows (``1e308*cfg(1e308)``: finite weights, infinite coefficients)."""
    label = _shown(text or describe(g))
    for regime in g.regimes():
        for branch, c in regime.items():
            if not math.isfinite(c):
                raise ValueError(f"guidance {label!r} gives branch {branch.key} the coefficient {c}: the weights "
                                 "overflow")  # fmt: skip
    if not g.all_branches:
        raise ValueError(f"guidance {label!r} evaluates no branch: every coefficient is zero")
    return g


def presets() -> list[tuple[str, str, str]]:
    """``(spec, formula [source; options], NFE per step)`` of every registered preset and operator
    (``--list-guidance``)."""
    rows = []
    for p in PRESETS.values():
        example = p(**{"a": 2.0, "b": 3.0}) if p.variadic else p()
        note = p.source + (f"; {p.options()}" if p.options() else "")
        rows.append((p.signature(), f"{p.formula}   [{note}]", str(example.nfe_per_step)))
    for op in OPERATORS.values():
        note = "; ".join(x for x in (op.source, op.options_text()) if x)
        rows.append((op.signature, op.formula + (f"   [{note}]" if note else ""), op.nfe))
    rows += [(sig, f"{formula}   [a weight schedule: any preset weight]", "-")
             for sig, formula in SCHEDULE_FORMULAS.values()]  # fmt: skip
    return rows


def markdown_table() -> str:
    """The README's table of presets and operators, generated from the registries (a test keeps them equal)."""
    lines = ["| spec | options | formula | source | NFE per step |", "|---|---|---|---|---|"]
    for p in PRESETS.values():
        example = p(**{"a": 2.0, "b": 3.0}) if p.variadic else p()
        options = f"`{p.options()}`" if p.options() else ""
        lines.append(f"| `{p.signature()}` | {options} | {p.formula} | {p.source} | {example.nfe_per_step} |")
    for op in OPERATORS.values():
        options = f"`{op.options_text()}`" if op.options else ""
        lines.append(f"| `{op.signature}` | {options} | {op.formula} | {op.source} | {op.nfe} |")
    for sig, formula in SCHEDULE_FORMULAS.values():
        lines.append(f"| `{sig}` | | {formula} | weight schedule (any preset weight) | - |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Model-aware resolution (AMG)
# ---------------------------------------------------------------------------------------------------------------


def amg_effective_strength(guidance: Guidance, amg_weight: float, level: float | None = None) -> float:
    """Effective CFG strength of ``guidance`` on a model trained with AMG weight ``w`` (MGAudio).

    The AMG target ``u + w sg(u(c) - u(null))`` has the fixed point ``u(c) = u(null) + (u*(c) - u(null)) / (1 - w)``,
    so sampling with conditional strength ``s`` acts like CFG at ``s / (1 - w)`` on the underlying flow.
    """
    if not amg_weight < 1.0:
        raise ValueError(f"AMG weight must be < 1, got {amg_weight}")
    return guidance.cond_strength(level) / (1.0 - amg_weight)


def resolve(spec: str | Guidance | Mapping[str, Any] | None, model: Any = None, bad: Any = None) -> Guidance:
    """The guidance to use for ``model``: parse ``spec`` and apply model-aware defaults and checks.

    ``spec=None`` picks the default: ``cfg(1.45)`` for AMG-trained models (MGAudio), ``hg`` when a bad model is
    given, otherwise ``cfg`` at the paper default. Warns when a large CFG is stacked on an AMG-trained model.
    """
    amg = getattr(model, "amg_weight", None)
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "default"):
        if amg is not None:
            g = cfg(AMG_DEFAULT_CFG)
        elif bad is not None:
            g = hg()
        else:
            g = cfg()
    else:
        g = parse(spec)
    if g.needs_bad_model and bad is None:
        keys = ", ".join(b.key for b in g.all_branches if b.role == "bad")
        raise ValueError(f"guidance {describe(g)} needs a bad model (branches {keys}); pass a bad model")
    if amg is not None:
        strength = g.cond_strength()
        if strength > AMG_WARN_CFG:
            warnings.warn(
                f"model was trained with AMG (w={amg:g}); stacking guidance of strength {strength:g} on it gives an "
                f"effective strength of {amg_effective_strength(g, amg):.3g}. MGAudio samples AMG models with a "
                f"small extra CFG ({AMG_DEFAULT_CFG}).",
                stacklevel=2,
            )
    return g
