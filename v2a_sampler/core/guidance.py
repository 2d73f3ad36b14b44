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

Branch keys read ``"<role>:<cond|null>"``: ``"good:cond"`` keeps every condition, ``"good:null"`` drops them all
(multi-condition CFG drops all together, as in AV-Link), and ``"good:null[text]"`` drops only ``text``.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .denoisers import ALL, normalize_drop

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
        """Every distinct coefficient map this guidance uses over the whole trajectory."""
        return [self.branch_coefficients(None)]

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
        """The branches to evaluate at noise ``level`` (None: the main regime; :attr:`all_branches` covers all)."""
        return tuple(_clean(self.branch_coefficients(level)))

    @property
    def all_branches(self) -> tuple[Branch, ...]:
        """Every branch needed at some point of the trajectory."""
        out: set[Branch] = set()
        for reg in self.regimes():
            out.update(_clean(reg))
        return tuple(sorted(out))

    @property
    def nfe_per_step(self) -> int:
        """Network evaluations per solver stage in the most expensive regime (one batched branch counts one)."""
        return max(len(_clean(r)) for r in self.regimes())

    def nfe_at(self, level: float) -> int:
        return len(_clean(self.branch_coefficients(level)))

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
        return f"<Guidance {self.spec()} nfe/step={self.nfe_per_step}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Guidance):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.to_json())

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

    def regimes(self) -> list[dict[Branch, float]]:
        levels = sorted({lv for _, g in self.terms for lv in _breakpoints(g)})
        if not levels:
            return [self.branch_coefficients(None)]
        return [self.branch_coefficients(lv) for lv in _probe_levels(levels)]

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
            body = g.spec() if isinstance(g, (Term, Interval)) or getattr(g, "preset", None) else f"({g.spec()})"
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
    if isinstance(g, Interval):
        return [g.lo, g.hi] + _breakpoints(g.inner) + _breakpoints(g.fallback)
    if isinstance(g, Linear):
        return [lv for _, sub in g.terms for lv in _breakpoints(sub)]
    return []


def _probe_levels(points: list[float]) -> list[float]:
    """Levels that visit every region between (and at) the breakpoints in [0, 1]."""
    edges = sorted({0.0, 1.0, *points})
    probes = list(edges)
    probes += [(a + b) / 2 for a, b in zip(edges, edges[1:], strict=False)]
    return sorted(set(probes))


# ---------------------------------------------------------------------------------------------------------------
# Library forms: one registry entry per preset
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """A parameter of a preset: a guidance ``weight`` (a finite number, positional in specs), a ``choice`` among
    fixed words, or a set of ``conditions`` (names joined by ``+`` in specs)."""

    name: str
    default: Any
    kind: str = "weight"
    choices: tuple[str, ...] = ()
    help: str = ""

    def check(self, value: Any, preset: str) -> Any:
        """The normalised value, or ``ValueError`` naming the preset and parameter."""
        if self.kind == "weight":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{preset}: {self.name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{preset}: {self.name}={value!r} is not a finite number")
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

    def __call__(self, *args: Any, **kwargs: Any) -> Linear:
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
        coefficients = self.build(**params)
        return Linear([(c, Term(b)) for b, c in coefficients.items()], preset=self.name, params=recorded)

    def _omitted(self, key: str, value: Any) -> bool:
        param = next((p for p in self.params if p.name == key), None)
        return param is not None and param.kind != "weight" and value == param.default

    def spec(self, params: Mapping[str, Any]) -> str:
        """The spec string of a guidance built with ``params`` (as recorded by :meth:`__call__`)."""
        args = [_fmt(params[p.name]) for p in self.weights]
        if self.variadic is not None:
            args += [f"{k}={_fmt(v)}" for k, v in params[self.variadic].items()]
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


def cfg(w: float = PAPER_DEFAULTS["cfg"][0], drop: str | Collection[str] | None = None) -> Guidance:
    """Classifier-free guidance (AudioMoG eq. 5): ``eps(null) + w (eps(c) - eps(null))``.

    ``drop`` names the conditions nulled in the unconditional branch; the default drops all of them together
    (joint multi-condition CFG, AV-Link).
    """
    return PRESETS["cfg"](w, drop=drop)


def ag(w: float = PAPER_DEFAULTS["ag"][0], on: str = "cond") -> Guidance:
    """Autoguidance (AudioMoG eq. 6): ``eps_bad(c) + w (eps(c) - eps_bad(c))``; ``on="null"`` uses the nulls."""
    return PRESETS["ag"](w, on=on)


def pg(w1: float = PAPER_DEFAULTS["pg"][0], w2: float = PAPER_DEFAULTS["pg"][1]) -> Guidance:
    """Parallel MoG (AudioMoG eq. 10): ``eps(null) + w1 (eps(c) - eps(null)) + w2 (eps(c) - eps_bad(c))``."""
    return PRESETS["pg"](w1, w2)


def hg(
    w1: float = PAPER_DEFAULTS["hg"][0],
    w2: float = PAPER_DEFAULTS["hg"][1],
    w3: float = PAPER_DEFAULTS["hg"][2],
    order: str = "cfg",
) -> Guidance:
    """Hierarchical MoG.

    ``order="cfg"`` (AudioMoG eq. 9): CFG at ``w1`` on the good model and at ``w2`` on the bad model, then AG
    between them at ``w3``. ``order="ag"`` (eq. 11): AG at ``w1`` on the conditional and ``w2`` on the
    unconditional branches, then CFG between them at ``w3``.
    """
    return PRESETS["hg"](w1, w2, w3, order=order)


def multi_cfg(weights: Mapping[str, float], mode: str = "chain") -> Guidance:
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
    ``"number"`` per position; a trailing ``?`` makes it optional). Its guidance serialises itself."""

    name: str
    args: tuple[str, ...]
    build: Callable[..., Guidance]
    signature: str
    formula: str
    nfe: str


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
                    else:
                        vals = [self.take(kind="name")]
                        while self.peek("+"):
                            self.take("+")
                            vals.append(self.take(kind="name"))
                        kw[key] = vals if len(vals) > 1 or key == "drop" else vals[0]
                elif op is not None and len(pos) < len(op.args) and op.args[len(pos)].startswith("guidance"):
                    pos.append(self.expr())
                else:
                    pos.append(self.number())
                if not self.peek(")"):
                    self.take(",")
            self.take(")")
        try:
            if op is not None:
                required = sum(not a.endswith("?") for a in op.args)
                if not required <= len(pos) <= len(op.args) or kw:
                    raise ValueError(f"{name} takes ({', '.join(op.args)}) arguments")
                return op.build(*pos)
            return preset(name)(*pos, **kw)
        except (TypeError, ValueError) as e:
            raise self.error(str(e)) from None


def parse(spec: str | Guidance | Mapping[str, Any] | None) -> Guidance:
    """Turn a spec into a guidance object.

    Accepts ``"none"``, ``"cfg(4.5)"``, ``"cfg(4.5,drop=text)"``, ``"ag(2)"``, ``"pg(2.7,0.15)"``,
    ``"hg(2.7,2.5,1.2)"``, ``"hg(1.5,1.5,2,order=ag)"``, bare names (``"hg"`` = paper defaults),
    ``"multi_cfg(video=3,text=2)"``, intervals ``"cfg(4.5)@[0.2,0.8]"``, branch keys (``"bad:cond"``), linear
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
    label = _shown(text or g.spec())
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
    rows += [(op.signature, op.formula, op.nfe) for op in OPERATORS.values()]
    return rows


def markdown_table() -> str:
    """The README's table of presets and operators, generated from the registries (a test keeps them equal)."""
    lines = ["| spec | options | formula | source | NFE per step |", "|---|---|---|---|---|"]
    for p in PRESETS.values():
        example = p(**{"a": 2.0, "b": 3.0}) if p.variadic else p()
        options = f"`{p.options()}`" if p.options() else ""
        lines.append(f"| `{p.signature()}` | {options} | {p.formula} | {p.source} | {example.nfe_per_step} |")
    for op in OPERATORS.values():
        lines.append(f"| `{op.signature}` | | {op.formula} | | {op.nfe} |")
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
        raise ValueError(f"guidance {g.spec()} needs a bad model (branches {keys}); pass a bad model")
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
