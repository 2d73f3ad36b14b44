"""The model-agnostic denoiser protocol.

Every network plugs in as a :class:`Denoiser`: a callable ``model(x, t, cond) -> prediction`` plus the two facts a
sampler needs to interpret it:

* its **prediction type** (:class:`Prediction`): flow ``velocity`` (dx/dt in the model's own time), ``eps``
  (noise), ``v`` (v = alpha * eps - sigma * x0) or ``x0`` (clean data);
* its **noise schedule** (:class:`Schedule`): how the noisy state is built from data and noise,
  ``x_t = alpha(t) * x0 + sigma(t) * eps``, in the model's own time variable. Flow models use either convention
  (:class:`FlowSchedule` with ``noise_at=1.0`` as in MGAudio, or ``noise_at=0.0`` as in MMAudio); EDM-style models
  use sigma as time (:class:`EDMSchedule`); VP diffusion models use :class:`VPSchedule`.

Since every conversion between prediction types at a fixed ``(x, t)`` is affine in the prediction,
``x0 = a(t) * x + b(t) * prediction``, solvers and guidance work in one space without caring where a model
comes from.

Conditioning is a named mapping (``{"video": ..., "text": ...}``). Each model defines what dropping a condition
means (learned empty tokens, zeros, removal) through :meth:`Denoiser.drop`; several conditions can be dropped at
once (multi-condition CFG drops all together) or one at a time.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

Cond = Mapping[str, Any]
"""Named conditions: condition name -> encoded value (tensor, list of strings, ...)."""

ALL = "*"
"""Marker for "drop every condition" (the fully unconditional branch)."""


class Prediction(str, enum.Enum):
    """What the network outputs."""

    VELOCITY = "velocity"  # dx/dt in the model's own time convention
    EPS = "eps"  # the noise eps in x = alpha * x0 + sigma * eps
    V = "v"  # v = alpha * eps - sigma * x0 (Salimans & Ho), generalised to any alpha, sigma
    X0 = "x0"  # the clean sample

    @classmethod
    def parse(cls, value: str | Prediction) -> Prediction:
        if isinstance(value, Prediction):
            return value
        aliases = {"flow": "velocity", "vel": "velocity", "epsilon": "eps", "noise": "eps", "sample": "x0"}
        key = aliases.get(str(value).lower(), str(value).lower())
        try:
            return cls(key)
        except ValueError:
            names = ", ".join(p.value for p in cls)
            raise ValueError(f"unknown prediction type {value!r}; expected one of: {names}") from None


# ---------------------------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleTerms:
    """alpha, sigma and their derivatives with respect to the model's time, at one time."""

    alpha: float
    sigma: float
    d_alpha: float
    d_sigma: float

    @property
    def ratio(self) -> float:
        """sigma / alpha, the EDM noise level (infinite where alpha = 0)."""
        return math.inf if self.alpha == 0.0 else self.sigma / self.alpha

    @property
    def noise_level(self) -> float:
        """sigma / (alpha + sigma) in [0, 1]: 0 at data, 1 at pure noise, whatever the convention."""
        return self.sigma / (self.alpha + self.sigma)

    @property
    def log_snr(self) -> float:
        """lambda = log(alpha / sigma); -inf at pure noise, +inf at data."""
        if self.sigma == 0.0:
            return math.inf
        if self.alpha == 0.0:
            return -math.inf
        return math.log(self.alpha) - math.log(self.sigma)


class Schedule:
    """How a noisy state is made: ``x_t = alpha(t) * x0 + sigma(t) * eps``, in the model's own time."""

    #: model time at the pure-noise end and the data end of sampling
    noise_end: float
    data_end: float

    def terms(self, t: float) -> ScheduleTerms:
        raise NotImplementedError

    def t_from_ratio(self, ratio: float) -> float:
        """The model time at which ``sigma / alpha == ratio`` (inverse of :attr:`ScheduleTerms.ratio`)."""
        raise NotImplementedError

    def t_from_noise_level(self, level: float) -> float:
        """The model time at which ``sigma / (alpha + sigma) == level``."""
        if level >= 1.0:
            return self.noise_end
        if level <= 0.0:
            return self.data_end
        return self.t_from_ratio(level / (1.0 - level))

    @property
    def default_grid(self) -> str:
        return "uniform"

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Schedule:
        kind = d.get("type")
        if kind == "flow":
            return FlowSchedule(noise_at=float(d.get("noise_at", 1.0)))
        if kind == "edm":
            return EDMSchedule(sigma_max=float(d.get("sigma_max", 80.0)), sigma_min=float(d.get("sigma_min", 0.002)))
        if kind == "vp":
            return VPSchedule(beta_min=float(d.get("beta_min", 0.1)), beta_max=float(d.get("beta_max", 20.0)))
        raise ValueError(f"unknown schedule type {kind!r}; expected 'flow', 'edm' or 'vp'")


@dataclass(frozen=True)
class FlowSchedule(Schedule):
    """Rectified flow / linear interpolation between data and noise.

    ``noise_at=1.0`` (MGAudio, SD3): ``x_t = (1 - t) * x0 + t * eps``, sampling runs t: 1 -> 0.
    ``noise_at=0.0`` (MMAudio):      ``x_t = t * x0 + (1 - t) * eps``, sampling runs t: 0 -> 1.
    """

    noise_at: float = 1.0

    def __post_init__(self) -> None:
        if self.noise_at not in (0.0, 1.0):
            raise ValueError(f"FlowSchedule.noise_at must be 0.0 or 1.0, got {self.noise_at!r}")

    @property
    def noise_end(self) -> float:  # type: ignore[override]
        return self.noise_at

    @property
    def data_end(self) -> float:  # type: ignore[override]
        return 1.0 - self.noise_at

    def _tau(self, t: float) -> float:
        return t if self.noise_at == 1.0 else 1.0 - t

    def terms(self, t: float) -> ScheduleTerms:
        tau = self._tau(float(t))
        sign = 1.0 if self.noise_at == 1.0 else -1.0  # d tau / d t
        return ScheduleTerms(alpha=1.0 - tau, sigma=tau, d_alpha=-sign, d_sigma=sign)

    def t_from_ratio(self, ratio: float) -> float:
        tau = 1.0 if math.isinf(ratio) else ratio / (1.0 + ratio)
        return self._tau(tau)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "flow", "noise_at": self.noise_at}


@dataclass(frozen=True)
class EDMSchedule(Schedule):
    """Variance-exploding / EDM: time is sigma, ``x = x0 + sigma * eps``."""

    sigma_max: float = 80.0
    sigma_min: float = 0.002

    @property
    def noise_end(self) -> float:  # type: ignore[override]
        return self.sigma_max

    @property
    def data_end(self) -> float:  # type: ignore[override]
        return 0.0

    @property
    def default_grid(self) -> str:
        return "karras"

    def terms(self, t: float) -> ScheduleTerms:
        return ScheduleTerms(alpha=1.0, sigma=float(t), d_alpha=0.0, d_sigma=1.0)

    def t_from_ratio(self, ratio: float) -> float:
        return float(ratio)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "edm", "sigma_max": self.sigma_max, "sigma_min": self.sigma_min}


@dataclass(frozen=True)
class VPSchedule(Schedule):
    """Continuous variance-preserving schedule with linear beta (Song et al. 2021), t in [0, 1], noise at 1.

    ``log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2`` and ``sigma = sqrt(1 - alpha^2)``.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0

    noise_end = 1.0
    data_end = 0.0

    @property
    def default_grid(self) -> str:
        return "karras"

    def _log_alpha(self, t: float) -> tuple[float, float]:
        log_a = -0.25 * t * t * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        d_log_a = -0.5 * t * (self.beta_max - self.beta_min) - 0.5 * self.beta_min
        return log_a, d_log_a

    def terms(self, t: float) -> ScheduleTerms:
        log_a, d_log_a = self._log_alpha(float(t))
        alpha = math.exp(log_a)
        sigma = math.sqrt(max(0.0, -math.expm1(2.0 * log_a)))
        d_alpha = alpha * d_log_a
        d_sigma = -alpha * d_alpha / sigma if sigma > 0 else math.inf
        return ScheduleTerms(alpha=alpha, sigma=sigma, d_alpha=d_alpha, d_sigma=d_sigma)

    def t_from_ratio(self, ratio: float) -> float:
        # alpha^2 = 1 / (1 + ratio^2)  =>  log alpha = -0.5 * log1p(ratio^2); solve the quadratic in t.
        target = -0.5 * math.log1p(ratio * ratio)
        a = 0.25 * (self.beta_max - self.beta_min)
        b = 0.5 * self.beta_min
        if a == 0.0:
            return -target / b
        return (-b + math.sqrt(b * b - 4.0 * a * target)) / (2.0 * a)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "vp", "beta_min": self.beta_min, "beta_max": self.beta_max}


# ---------------------------------------------------------------------------------------------------------------
# Conversions between prediction types
# ---------------------------------------------------------------------------------------------------------------


def x0_coefficients(prediction: Prediction | str, terms: ScheduleTerms) -> tuple[float, float]:
    """``(a, b)`` with ``x0 = a * x + b * prediction`` at a state with the given schedule terms."""
    p = Prediction.parse(prediction)
    al, si = terms.alpha, terms.sigma
    if p is Prediction.X0:
        return 0.0, 1.0
    if p is Prediction.EPS:
        if al == 0.0:
            raise ValueError("an eps prediction carries no information about x0 where alpha = 0 (pure noise)")
        return 1.0 / al, -si / al
    if p is Prediction.V:
        norm = al * al + si * si
        return al / norm, -si / norm
    det = al * terms.d_sigma - si * terms.d_alpha
    if det == 0.0 or not math.isfinite(det):
        raise ValueError("velocity prediction is degenerate at this time (alpha * dsigma - sigma * dalpha = 0)")
    return terms.d_sigma / det, -si / det


def from_x0_eps(prediction: Prediction | str, x0: torch.Tensor, eps: torch.Tensor, terms: ScheduleTerms):
    """The prediction of the given type that corresponds to ``(x0, eps)``."""
    p = Prediction.parse(prediction)
    if p is Prediction.X0:
        return x0
    if p is Prediction.EPS:
        return eps
    if p is Prediction.V:
        return terms.alpha * eps - terms.sigma * x0
    return terms.d_alpha * x0 + terms.d_sigma * eps


def to_x0(prediction: Prediction | str, x: torch.Tensor, pred: torch.Tensor, terms: ScheduleTerms) -> torch.Tensor:
    """Convert a prediction at state ``x`` to the clean-data estimate ``x0``."""
    a, b = x0_coefficients(prediction, terms)
    return b * pred if a == 0.0 else a * x + b * pred


def eps_from_x0(x: torch.Tensor, x0: torch.Tensor, terms: ScheduleTerms) -> torch.Tensor:
    """The noise estimate implied by ``x0`` at state ``x`` (needs sigma > 0)."""
    if terms.sigma == 0.0:
        raise ValueError("eps is undefined at sigma = 0 (the data end)")
    return (x - terms.alpha * x0) / terms.sigma


def convert(
    pred: torch.Tensor,
    x: torch.Tensor,
    t: float,
    schedule: Schedule,
    src: Prediction | str,
    dst: Prediction | str,
) -> torch.Tensor:
    """Convert a prediction of type ``src`` to type ``dst`` at the same ``(x, t)``."""
    src, dst = Prediction.parse(src), Prediction.parse(dst)
    if src is dst:
        return pred
    terms = schedule.terms(t)
    x0 = to_x0(src, x, pred, terms)
    if dst is Prediction.X0:
        return x0
    return from_x0_eps(dst, x0, eps_from_x0(x, x0, terms), terms)


# ---------------------------------------------------------------------------------------------------------------
# The protocol
# ---------------------------------------------------------------------------------------------------------------


def normalize_drop(drop: str | Collection[str] | None, names: Collection[str]) -> frozenset[str]:
    """Resolve a drop specification (``None``, ``ALL`` or names) against a model's condition names."""
    if drop is None:
        return frozenset()
    if drop == ALL:
        return frozenset(names)
    if isinstance(drop, str):
        drop = (drop,)
    return frozenset(drop)


def check_drop(names: Collection[str], condition_names: Collection[str]) -> frozenset[str]:
    """``names`` as a frozenset; raises if any is not one of the model's ``condition_names``."""
    names = frozenset(names)
    unknown = names - set(condition_names)
    if unknown:
        raise ValueError(f"cannot drop unknown condition(s) {sorted(unknown)}; model has {tuple(condition_names)}")
    return names


@runtime_checkable
class Denoiser(Protocol):
    """Any network the SDK can sample from.

    Attributes:
        prediction: what :meth:`__call__` returns.
        schedule: the noise schedule and time convention of ``t``.
        condition_names: the named conditions the model accepts (may be empty).
        condition_groups: optional ``{group: condition names}`` a guidance may drop by one name (MMAudio:
            ``{"video": ("clip", "sync")}``), read with ``getattr`` by the engine.
        amg_weight: the AMG training weight ``w`` if the model was trained with MGAudio's AMG objective, else None.
    """

    prediction: Prediction
    schedule: Schedule
    condition_names: tuple[str, ...]
    amg_weight: float | None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Cond | None) -> torch.Tensor:
        """Raw prediction at state ``x`` (batch-first) and model times ``t`` (shape ``[batch]``)."""
        ...

    def drop(self, cond: Cond | None, names: Collection[str]) -> Cond | None:
        """``cond`` with the named conditions replaced by this model's null for them."""
        ...


class FnDenoiser:
    """A :class:`Denoiser` around a plain callable ``fn(x, t, cond)``.

    Dropping conditions follows ``nulls``: for each condition name, either a value (tensor, string, ...) that
    replaces it, or a callable ``null(value) -> value``. Conditions without an entry are removed from the mapping
    (the callable sees the key mapped to ``None``). When every condition is dropped and no nulls are defined, the
    callable receives ``cond=None``. ``condition_groups`` (``{group: names}``) lets guidance drop several
    conditions by one name.
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor, Cond | None], torch.Tensor],
        prediction: Prediction | str = Prediction.VELOCITY,
        schedule: Schedule | None = None,
        condition_names: Collection[str] = ("cond",),
        nulls: Mapping[str, Any] | None = None,
        amg_weight: float | None = None,
        name: str | None = None,
        condition_groups: Mapping[str, Collection[str]] | None = None,
    ) -> None:
        self.fn = fn
        self.prediction = Prediction.parse(prediction)
        self.schedule = schedule if schedule is not None else FlowSchedule(1.0)
        self.condition_names = tuple(condition_names)
        self.nulls = dict(nulls or {})
        unknown = set(self.nulls) - set(self.condition_names)
        if unknown:
            raise ValueError(f"nulls given for unknown conditions {sorted(unknown)}; known: {self.condition_names}")
        self.condition_groups = {g: tuple(ns) for g, ns in (condition_groups or {}).items()}
        for g, ns in self.condition_groups.items():
            if g in self.condition_names or not ns or set(ns) - set(self.condition_names):
                raise ValueError(f"condition group {g!r} must be a new name for some of {self.condition_names}")
        self.amg_weight = amg_weight
        self.name = name or getattr(fn, "__name__", "fn")

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Cond | None) -> torch.Tensor:
        return self.fn(x, t, cond)

    def drop(self, cond: Cond | None, names: Collection[str]) -> Cond | None:
        names = check_drop(names, self.condition_names)
        if not names:
            return cond
        if cond is None:
            return None
        if not isinstance(cond, Mapping):
            # A single unnamed condition: dropping it means the null condition.
            return self._null_value(self.condition_names[0], cond) if self.condition_names else None
        if names >= set(self.condition_names) and not self.nulls:
            return None
        out = dict(cond)
        for n in names:
            out[n] = self._null_value(n, cond.get(n))
        return out

    def batch_conditions(self, conds: Sequence[Cond | None], batch: int) -> Cond | None:
        """One condition for ``len(conds)`` stacked blocks of ``batch`` rows, or ``NotImplemented``.

        Works when every block is a mapping with the same keys whose values are tensors with ``batch`` rows (as when
        ``nulls`` are tensors or tensor-valued callables); otherwise the engine evaluates the branches one by one.
        """
        return concat_conditions(conds, batch)

    def _null_value(self, name: str, value: Any) -> Any:
        if name not in self.nulls:
            return None
        null = self.nulls[name]
        return null(value) if callable(null) else null

    def __repr__(self) -> str:
        return (
            f"FnDenoiser({self.name}, prediction={self.prediction.value}, schedule={self.schedule}, "
            f"conditions={self.condition_names})"
        )


def concat_conditions(conds: Sequence[Cond | None], batch: int) -> Cond | None:
    """Concatenate tensor-valued condition mappings along the batch, or return ``NotImplemented``."""
    if not conds or any(not isinstance(c, Mapping) for c in conds):
        return NotImplemented
    keys = set(conds[0])
    if any(set(c) != keys for c in conds):
        return NotImplemented
    out: dict[str, Any] = {}
    for k in keys:
        vals = [c[k] for c in conds]
        if not all(isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == batch for v in vals):
            return NotImplemented
        out[k] = torch.cat(vals, dim=0)
    return out


def from_fn(
    fn: Callable[[torch.Tensor, torch.Tensor, Cond | None], torch.Tensor],
    prediction: Prediction | str = "velocity",
    noise_at: float | None = 1.0,
    *,
    schedule: Schedule | None = None,
    condition_names: Collection[str] = ("cond",),
    nulls: Mapping[str, Any] | None = None,
    amg_weight: float | None = None,
    name: str | None = None,
    condition_groups: Mapping[str, Collection[str]] | None = None,
) -> FnDenoiser:
    """Wrap a plain callable ``fn(x, t, cond)`` as a :class:`Denoiser`.

    ``fn`` receives ``cond=None`` for the null condition (unless ``nulls`` define per-condition nulls). Give either
    ``noise_at`` (flow models: 1.0 for noise at t=1, 0.0 for noise at t=0) or an explicit ``schedule``.
    """
    if schedule is None:
        if noise_at is None:
            raise ValueError("from_fn needs either noise_at (flow models) or an explicit schedule")
        schedule = FlowSchedule(float(noise_at))
    return FnDenoiser(
        fn,
        prediction=prediction,
        schedule=schedule,
        condition_names=condition_names,
        nulls=nulls,
        amg_weight=amg_weight,
        name=name,
        condition_groups=condition_groups,
    )


def check_compatible(good: Denoiser, bad: Denoiser) -> None:
    """Raise if a bad (guiding) model cannot be evaluated on the good model's states."""
    if good.schedule != bad.schedule:
        raise ValueError(
            f"the bad model's schedule {bad.schedule} differs from the good model's {good.schedule}; "
            "autoguidance needs both models on the same noise schedule and time convention"
        )
