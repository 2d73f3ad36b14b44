"""ODE/SDE solvers over the denoiser protocol, one registry entry each, and ``sample()``.

A solver integrates from the noise end to the data end of a time grid, given ``denoise(x, t) -> x0`` (the guided
clean-data estimate at model time ``t``) and the model's ``schedule`` (``x_t = alpha * x0 + sigma * eps``). Solvers
step the state in the model's own space, so any prediction type and time convention works and both flow
conventions give identical samples.

Every solver is one :class:`Solver` in :data:`SOLVERS`: its name and aliases, the model stages it runs per step, its
options (defaults and checks) and its update. Single-stage solvers are a *linear rule*: per step, the coefficients
of ``x_next = c_x x + c_0 x0 + c_d (x0 - x0_prev) + c_n noise``. The plain loop (:func:`run_rule`) and the fused loop
(:func:`fused_sample`: guidance combination and update in one kernel per step) both execute that one rule.
``sample()``, the NFE and budget arithmetic, the CLI and the README's solver table all read the registry, so adding a
solver is one :func:`register` call (plus its tests).

* ``euler``: first order; the DDIM update ``x_s = (sigma_s / sigma_t) x_t + (alpha_s - sigma_s alpha_t / sigma_t) x0``,
  which for flow models is exactly ``x + (s - t) * velocity``.
* ``heun``: second order trapezoidal rule on the probability-flow ODE in flow-normalised coordinates
  ``(x / (alpha + sigma), sigma / (alpha + sigma))`` (for flow models: plain Heun in t); the last step to the data
  end is an Euler step, as in EDM.
* ``dpmpp_2m``: DPM-Solver++(2M) (Lu et al., 2022), multistep second order in ``lambda = log(alpha / sigma)``.
* k-diffusion's samplers (Crowson; Karras et al. 2022): ``euler_a``, ``euler_edm`` / ``heun_edm`` (EDM's Algorithm 2
  with churn), ``dpmpp_2m_sde`` (and its Heun form), ``dpmpp_3m_sde``, ``dpmpp_sde``, ``dpmpp_2s_ancestral``; and
  diffusers' UniPC (``unipc``, bh2). k-diffusion writes them for EDM models; here they run in the variance-exploding
  coordinates ``y = x / alpha``, ``r = sigma / alpha`` of any schedule (the model evaluated at the time whose ratio is
  the stage's ``r``), which on an EDM model is k-diffusion's sampler exactly (``tests/test_solver_parity.py``).

Stochastic solvers draw their noise from a :class:`~v2a_sampler.core.noise.NoiseSource`: ``generator=`` (one
``torch.Generator`` or one per row) or a Brownian tree (:class:`~v2a_sampler.core.noise.BrownianTreeNoise`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import kernels
from . import guidance as G
from .denoisers import Cond, Denoiser, Schedule, ScheduleTerms, x0_coefficients
from .engine import GraphBackend, GuidedDenoiser
from .noise import BrownianTreeNoise as BrownianTreeNoise  # re-exported: solvers.BrownianTreeNoise(seed)
from .noise import GeneratorNoise as GeneratorNoise
from .noise import Generators, NoiseSource, noise_source

Denoise = Callable[[torch.Tensor, float], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]
#: ``progress(stages_done, stages_total)``, called after every denoiser stage.
Progress = Callable[[int, int], None]
Noise = Generators | NoiseSource

#: Default flow shift of the "shifted" grid (SD3 uses 3.0 for its largest model).
DEFAULT_SHIFT = 3.0
#: Karras et al. (2022) grid exponent.
KARRAS_RHO = 7.0
#: The solver and step count ``sample()`` uses when none is given.
DEFAULT_SOLVER = "euler"
DEFAULT_STEPS = 25


def _emit(callback: Callback | None, **kw: Any) -> None:
    if callback is not None:
        callback(kw)


def _k_diffusion_events(callback: Callback | None, schedule: Schedule) -> Callback | None:
    """Our per-step events as k-diffusion's callback dict (``x, i, sigma, sigma_hat, denoised``)."""
    if callback is None:
        return None

    def events(kw: dict[str, Any]) -> None:
        callback({"x": kw["x_hat"], "i": kw["i"], "sigma": schedule.terms(kw["t"]).ratio,
                  "sigma_hat": schedule.terms(kw["t_hat"]).ratio, "denoised": kw["denoised"]})  # fmt: skip

    return events


def _with_progress(callback: Callback | None, progress: Progress, total: int) -> Callback:
    """A per-step callback that also reports one stage per step to ``progress``."""

    def events(kw: dict[str, Any]) -> None:
        progress(kw["i"] + 1, total)
        if callback is not None:
            callback(kw)

    return events


#: Styles of the per-step ``callback`` dictionary: ours, or k-diffusion's.
CALLBACK_STYLES = ("v2a", "k-diffusion")
#: The largest churn EDM allows per step: ``gamma = min(s_churn / steps, sqrt(2) - 1)`` (Karras et al. 2022, Alg. 2).
CHURN_MAX = math.sqrt(2.0) - 1.0


# ---------------------------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """A solver option: name, default, accepted range and a one-line description."""

    name: str
    default: float
    help: str
    minimum: float | None = None
    maximum: float | None = None
    integer: bool = False  # only whole numbers (e.g. an order)
    infinite: bool = False  # +inf is a value (e.g. an open upper end), within the range checks

    def check(self, value: Any, solver: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"solver {solver!r}: option {self.name} must be a number, got {value!r}")
        v = float(value)
        if self.integer and math.isfinite(v) and v != int(v):
            raise ValueError(f"solver {solver!r}: option {self.name} must be a whole number, got {value!r}")
        if (
            not (math.isfinite(v) or (self.infinite and v == math.inf))
            or (self.minimum is not None and v < self.minimum)
            or (self.maximum is not None and v > self.maximum)
        ):
            lo = "-inf" if self.minimum is None else f"{self.minimum:g}"
            hi = "inf" if self.maximum is None else f"{self.maximum:g}"
            raise ValueError(f"solver {solver!r}: option {self.name}={value!r} is outside [{lo}, {hi}]")
        return v


@dataclass(frozen=True)
class Update:
    """One step of a linear rule: ``x_next = x * x + x0 * x0 + diff * (x0 - x0_prev) + noise * noise``.

    ``h`` is the step's log-SNR increment, handed to the next step of a multistep rule (as ``h_last``).
    """

    x: float
    x0: float
    diff: float = 0.0
    noise: float = 0.0
    h: float | None = None


#: ``rule(now, nxt, h_last, **options) -> Update`` for one step from ``schedule.terms(t)`` to ``terms(s)``;
#: ``h_last`` is the previous step's ``Update.h`` (``inf`` on the first step).
LinearRule = Callable[..., Update]
#: The plain loop of a solver that is not a linear rule: ``fn(denoise, x, timesteps, schedule, callback, generator,
#: **options) -> x``; ``generator`` is anything :func:`~v2a_sampler.core.noise.noise_source` takes.
Loop = Callable[..., torch.Tensor]
#: ``times(t, s, schedule, steps, **options) -> [model time of each stage]`` of one step, for solvers whose stages do
#: not sit at ``t`` (first) and ``s`` (the others): EDM's churn raises the first, DPM++ SDE's second is a midpoint.
StageTimes = Callable[..., list[float]]


@dataclass(frozen=True)
class Solver:
    """One solver: what it is called, what a step costs, which options it takes, and how it steps.

    Exactly one of ``rule`` (a single-stage linear update, run by both the plain and the fused loop) and ``loop`` (a
    plain loop for anything else) is given. ``stages_per_step`` model evaluations make one step, except a final
    step to ``sigma = 0``, which runs ``final_stages`` (Heun's last step is an Euler step). ``times`` gives the model
    times of a step's stages where they are not ``t`` then ``s`` (guidance intervals count the NFE there).
    """

    name: str
    summary: str
    source: str
    rule: LinearRule | None = None
    loop: Loop | None = None
    stages_per_step: int = 1
    final_stages: int | None = None
    options: tuple[Option, ...] = ()
    aliases: tuple[str, ...] = ()
    stochastic: bool = False
    times: StageTimes | None = None

    def __post_init__(self) -> None:
        if (self.rule is None) == (self.loop is None):
            raise ValueError(f"solver {self.name!r}: give exactly one of rule= and loop=")

    @property
    def fusable(self) -> bool:
        """Whether the fused guided-step kernel can run it (single-stage linear rules)."""
        return self.rule is not None

    # -- options ------------------------------------------------------------------------------------------------
    def check_options(self, options: Mapping[str, Any]) -> dict[str, float]:
        """Every option with its default filled in; unknown or out-of-range options raise ``ValueError``."""
        known = {o.name: o for o in self.options}
        unknown = sorted(set(options) - set(known))
        if unknown:
            takes = f"takes {', '.join(known)}" if known else "takes no options"
            raise ValueError(f"solver {self.name!r} {takes}; got {', '.join(unknown)}")
        return {name: o.check(options[name], self.name) if name in options else o.default for name, o in known.items()}

    # -- cost -----------------------------------------------------------------------------------------------------
    def stages(self, steps: int, final_sigma_zero: bool = True) -> int:
        """Model stages (denoiser evaluations per branch) of ``steps`` steps."""
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        last = self.final_stages if (final_sigma_zero and self.final_stages is not None) else self.stages_per_step
        return self.stages_per_step * (steps - 1) + last

    def steps_for_budget(self, budget: int, per_stage: int, final_sigma_zero: bool = True) -> int | None:
        """The most steps whose cost ``per_stage * stages(steps)`` fits in ``budget``; None if one step does not."""
        if per_stage < 1:
            raise ValueError(f"per_stage must be >= 1, got {per_stage}")
        affordable = budget // per_stage  # whole stages the budget pays for
        last = self.final_stages if (final_sigma_zero and self.final_stages is not None) else self.stages_per_step
        if affordable < last:
            return None
        return 1 + (affordable - last) // self.stages_per_step

    def stage_times(
        self, t: float, s: float, schedule: Schedule, steps: int = 1, options: Mapping[str, float] | None = None
    ) -> list[float]:
        """Model times of the stages of one step from ``t`` to ``s`` of a ``steps``-step run with ``options``
        (defaults filled in): ``t`` then ``s`` for the extra stages, unless the solver's ``times`` says otherwise."""
        if self.times is not None:
            return self.times(t, s, schedule, steps, **self.check_options(options or {}))
        n = self.final_stages if (self.final_stages is not None and schedule.terms(s).sigma == 0.0) else None
        return [t] + [s] * ((self.stages_per_step if n is None else n) - 1)

    # -- running --------------------------------------------------------------------------------------------------
    def __call__(
        self,
        denoise: Denoise,
        x: torch.Tensor,
        timesteps: Sequence[float],
        schedule: Schedule,
        callback: Callback | None = None,
        generator: Noise = None,
        **options: Any,
    ) -> torch.Tensor:
        """Integrate ``x`` over ``timesteps`` with the plain loop (options checked, defaults filled in); noise comes
        from ``generator`` (a ``torch.Generator``, one per row, or a :class:`~v2a_sampler.core.noise.NoiseSource`)."""
        opts = self.check_options(options)
        noise = noise_source(generator)
        if self.rule is not None:
            return run_rule(self.rule, denoise, x, timesteps, schedule, callback, noise, **opts)
        assert self.loop is not None
        return self.loop(denoise, x, timesteps, schedule, callback, noise, **opts)


#: Every solver by canonical name (``solver_name`` also resolves the aliases).
SOLVERS: dict[str, Solver] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.lower().replace("-", "_").replace(" ", "")


def register(solver: Solver) -> Solver:
    """Add a solver to :data:`SOLVERS` (its name and aliases must be new)."""
    for key in (solver.name, *solver.aliases):
        k = _key(key)
        if k in SOLVERS or k in _ALIASES:
            raise ValueError(f"solver name {key!r} is already registered")
        _ALIASES[k] = solver.name
    SOLVERS[solver.name] = solver
    return solver


def get_solver(name: str | Solver) -> Solver:
    """The registered solver for a name or alias (case, ``-`` and spaces ignored)."""
    if isinstance(name, Solver):
        return name
    canonical = _ALIASES.get(_key(str(name)))
    if canonical is None:
        raise ValueError(f"unknown solver {name!r}; expected one of: {', '.join(SOLVERS)}")
    return SOLVERS[canonical]


def solver_name(name: str) -> str:
    """Canonical name of a solver name or alias."""
    return get_solver(name).name


def stages_per_sample(
    solver: str | Solver, timesteps: Sequence[float], schedule: Schedule, options: Mapping[str, float] | None = None
) -> int:
    """Number of denoiser stages a solver runs on this grid with these options (Heun skips its corrector on a final
    sigma=0 step)."""
    spec = get_solver(solver)
    ts = [float(t) for t in timesteps]
    if spec.times is not None:
        return sum(
            len(spec.stage_times(t, s, schedule, len(ts) - 1, options)) for t, s in zip(ts, ts[1:], strict=False)
        )
    return spec.stages(len(ts) - 1, schedule.terms(ts[-1]).sigma == 0.0)


def markdown_table() -> str:
    """The README's solver table, generated from the registry (a test keeps the README equal to it)."""
    rows = ["| solver | stages per step | options | what it is |", "|---|---|---|---|"]
    for s in SOLVERS.values():
        stages = str(s.stages_per_step)
        if s.final_stages is not None and s.final_stages != s.stages_per_step:
            stages += f" ({s.final_stages} on a last step to sigma = 0)"
        opts = ", ".join(f"`{o.name}={o.default:g}`" for o in s.options) or "-"
        names = f"`{s.name}`" + "".join(f", `{a}`" for a in s.aliases)
        rows.append(f"| {names} | {stages} | {opts} | {s.summary} ({s.source}) |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------------------------
# Linear rules and the loops that run them
# ---------------------------------------------------------------------------------------------------------------


def run_rule(
    rule: LinearRule,
    denoise: Denoise,
    x: torch.Tensor,
    timesteps: Sequence[float],
    schedule: Schedule,
    callback: Callback | None = None,
    generator: Noise = None,
    **options: float,
) -> torch.Tensor:
    """The plain loop of a linear rule: one ``denoise`` call and one :class:`Update` per step (zero terms skipped)."""
    noise = noise_source(generator)
    old_x0: torch.Tensor | None = None
    h_last = math.inf
    for i in range(len(timesteps) - 1):
        t, s = float(timesteps[i]), float(timesteps[i + 1])
        x_in = x
        x0 = denoise(x, t)
        now, nxt = schedule.terms(t), schedule.terms(s)
        u = rule(now, nxt, h_last, **options)
        x = u.x * x + u.x0 * x0 if u.x else u.x0 * x0
        if u.diff:
            assert old_x0 is not None
            x = x + u.diff * (x0 - old_x0)
        if u.noise:
            x = x + u.noise * noise(x, now.noise_level, nxt.noise_level)
        if u.h is not None:
            h_last = u.h
        old_x0 = x0
        _emit(callback, i=i, t=t, t_next=s, x=x, denoised=x0, t_hat=t, x_hat=x_in)
    return x


def fused_sample(
    engine: GuidedDenoiser,
    x: torch.Tensor,
    timesteps: Sequence[float],
    solver: str | Solver = DEFAULT_SOLVER,
    callback: Callback | None = None,
    generator: Noise = None,
    **options: Any,
) -> torch.Tensor:
    """A linear-rule solver with the guidance combination and the update fused in one kernel per step.

    The same :class:`Update` as the plain loop, written as ``x_next = u_x x + u_0 x0 + u_old x0_prev + u_noise
    noise`` with ``u_0 = c_0 + c_d`` and ``u_old = -c_d``, where ``x0 = a x + b sum_i c_i p_i``
    (:func:`v2a_sampler.kernels.guided_step`: Triton on CUDA, the torch reference elsewhere).
    """
    spec = get_solver(solver)
    if spec.rule is None:
        raise ValueError(f"solver {spec.name!r} has no fused path; fused solvers: {', '.join(fused_solvers())}")
    opts = spec.check_options(options)
    source = noise_source(generator)
    schedule, prediction = engine.model.schedule, engine.model.prediction
    old_x0: torch.Tensor | None = None
    h_last = math.inf
    for i in range(len(timesteps) - 1):
        t, s = float(timesteps[i]), float(timesteps[i + 1])
        now, nxt = schedule.terms(t), schedule.terms(s)
        u = spec.rule(now, nxt, h_last, **opts)
        preds, coeffs = engine.branch_predictions(x, t)
        a, b = x0_coefficients(prediction, now)
        noise = source(x, now.noise_level, nxt.noise_level) if u.noise else None
        x_in = x
        x0, x = kernels.guided_step(
            x, preds, coeffs, a, b, u.x, u.x0 + u.diff, -u.diff, old_x0 if u.diff else None, u.noise, noise
        )
        if u.h is not None:
            h_last = u.h
        old_x0 = x0
        _emit(callback, i=i, t=t, t_next=s, x=x, denoised=x0, t_hat=t, x_hat=x_in)
    return x


def fused_solvers() -> tuple[str, ...]:
    """Solvers with a fused combine-and-update path."""
    return tuple(name for name, s in SOLVERS.items() if s.fusable)


def _euler_rule(now: ScheduleTerms, nxt: ScheduleTerms, h_last: float) -> Update:
    """DDIM / flow Euler: ``x_s = (sigma_s / sigma_t) x_t + (alpha_s - sigma_s alpha_t / sigma_t) x0``."""
    return Update(nxt.sigma / now.sigma, nxt.alpha - nxt.sigma * now.alpha / now.sigma)


def _euler_ancestral_rule(
    now: ScheduleTerms, nxt: ScheduleTerms, h_last: float, eta: float = 1.0, s_noise: float = 1.0
) -> Update:
    """Euler ancestral in VE coordinates ``y = x / alpha``, ``r = sigma / alpha`` (k-diffusion's ancestral step):
    ``r_up = min(r_s, eta sqrt(r_s^2 (r_t^2 - r_s^2) / r_t^2))``, ``r_down = sqrt(r_s^2 - r_up^2)``, then
    ``y_s = y_t + (r_down - r_t) (y_t - x0) / r_t + s_noise r_up noise``. Multiplied out by ``alpha_s`` and written
    with ``r_t alpha_t = sigma_t`` it stays finite at the pure-noise end (``alpha_t = 0``)."""
    r_t, r_s = now.ratio, nxt.ratio
    r_up = min(r_s, eta * r_s * math.sqrt(max(0.0, 1.0 - (r_s / r_t) ** 2)))
    r_down = math.sqrt(max(0.0, r_s**2 - r_up**2))
    keep = r_down / r_t  # the share of (y_t - x0) the deterministic part keeps
    return Update(nxt.alpha * r_down / now.sigma, nxt.alpha * (1.0 - keep), noise=nxt.alpha * r_up * s_noise)


def _dpmpp_2m_sde_rule(
    now: ScheduleTerms, nxt: ScheduleTerms, h_last: float, eta: float = 1.0, s_noise: float = 1.0
) -> Update:
    """DPM-Solver++(2M) SDE, midpoint form (``eta = 0``: DPM-Solver++(2M)). With ``h = lambda_s - lambda_t``,
    ``g = -expm1(-h - eta h)`` and ``r = h_last / h``::

        x_s = (sigma_s / sigma_t) e^(-eta h) x_t + alpha_s g x0 + (alpha_s g / 2r) (x0 - x0_prev)
              + sigma_s sqrt(-expm1(-2 eta h)) s_noise noise

    first order on the first step (``h_last = inf``) and ``x_s = alpha_s x0`` on a last step to ``sigma = 0``.
    """
    if nxt.sigma == 0.0:
        return Update(0.0, nxt.alpha)
    h = nxt.log_snr - now.log_snr
    eta_h = eta * h if eta else 0.0  # (0 * inf is nan on the first step from pure noise)
    keep = math.exp(-eta_h)  # 0 when starting from pure noise (h = inf)
    gain = -math.expm1(-h - eta_h)
    diff = 0.0 if math.isinf(h_last) else nxt.alpha * 0.5 * gain / (h_last / h)  # r = h_last / h
    noise = nxt.sigma * math.sqrt(-math.expm1(-2.0 * eta_h)) * s_noise if eta else 0.0
    return Update(nxt.sigma / now.sigma * keep, nxt.alpha * gain, diff, noise, h)


def _dpmpp_2m_sde_heun_rule(
    now: ScheduleTerms, nxt: ScheduleTerms, h_last: float, eta: float = 1.0, s_noise: float = 1.0
) -> Update:
    """DPM-Solver++(2M) SDE, Heun form (k-diffusion's ``solver_type='heun'``): :func:`_dpmpp_2m_sde_rule` with the
    multistep correction ``alpha_s (g / (-h - eta h) + 1) / r (x0 - x0_prev)`` instead of the midpoint's."""
    u = _dpmpp_2m_sde_rule(now, nxt, h_last, eta, s_noise)
    if not u.diff:
        return u
    h = nxt.log_snr - now.log_snr
    h_eta = h + (eta * h if eta else 0.0)
    gain = -math.expm1(-h_eta)
    return Update(u.x, u.x0, nxt.alpha * (gain / -h_eta + 1.0) / (h_last / h), u.noise, u.h)


def _dpmpp_2m_rule(now: ScheduleTerms, nxt: ScheduleTerms, h_last: float) -> Update:
    """DPM-Solver++(2M): the ``eta = 0`` case of :func:`_dpmpp_2m_sde_rule`."""
    return _dpmpp_2m_sde_rule(now, nxt, h_last, eta=0.0)


# -- shared pieces of the plain loops -------------------------------------------------------------------------------
# k-diffusion writes its samplers for EDM models (x = x0 + sigma eps, time = sigma). On any schedule we run the same
# algorithm in the VE coordinates y = x / alpha, r = sigma / alpha (lambda = -log r), evaluate the model at the time
# whose sigma / alpha is the stage's r, and multiply back by alpha; on an EDM schedule (alpha = 1) that is
# k-diffusion's sampler exactly. Coefficients are multiplied out (r_t alpha_t = sigma_t) so that they stay finite
# where a flow model starts from pure noise (alpha = 0, r = inf).


def _heun_flow_step(
    denoise: Denoise, x: torch.Tensor, t: float, s: float, now: ScheduleTerms, nxt: ScheduleTerms
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of ``heun`` (trapezoid in flow-normalised coordinates); returns ``(x_next, x0 at t)``."""
    scale_t, scale_s = now.alpha + now.sigma, nxt.alpha + nxt.sigma
    tau_t, tau_s = now.noise_level, nxt.noise_level
    xf = x / scale_t  # xf = (1 - tau) x0 + tau eps
    x0 = denoise(x, t)
    d = (xf - x0) / tau_t  # d xf / d tau
    xf_next = xf + (tau_s - tau_t) * d
    if nxt.sigma > 0:
        x0_next = denoise(xf_next * scale_s, s)
        d_next = (xf_next - x0_next) / tau_s
        xf_next = xf + (tau_s - tau_t) * 0.5 * (d + d_next)
    return xf_next * scale_s, x0


def _churn_gamma(now: ScheduleTerms, steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """EDM's churn of one step (Karras et al. 2022, Alg. 2): ``min(s_churn / steps, sqrt(2) - 1)`` where
    ``s_tmin <= sigma / alpha <= s_tmax``, else 0; none at pure noise (there is no noise level above it)."""
    r = now.ratio
    if not s_churn or not math.isfinite(r) or not s_tmin <= r <= s_tmax:
        return 0.0
    return min(s_churn / steps, CHURN_MAX)


def _churn_time(t: float, now: ScheduleTerms, gamma: float, schedule: Schedule) -> tuple[float, ScheduleTerms]:
    """The model time (and terms) whose ``sigma / alpha`` is ``(1 + gamma)`` times that of ``t``."""
    if not gamma:
        return t, now
    t_hat = schedule.t_from_ratio(now.ratio * (1.0 + gamma))
    return t_hat, schedule.terms(t_hat)


def _churn(
    x: torch.Tensor, now: ScheduleTerms, hat: ScheduleTerms, s_noise: float, noise: NoiseSource, level_next: float
) -> torch.Tensor:
    """``x`` moved up to the noise level of ``hat``: ``y = x / alpha`` gains variance ``r_hat^2 - r^2`` (times
    ``s_noise^2``); the noise is the source's for the step's interval."""
    if hat is now:
        return x
    z = noise(x, now.noise_level, level_next)
    return hat.alpha * (x / now.alpha + (s_noise * math.sqrt(hat.ratio**2 - now.ratio**2)) * z)


def _ancestral_split(r_from: float, r_to: float, eta: float) -> tuple[float, float]:
    """k-diffusion's ``get_ancestral_step``: ``(r_down, r_up)`` with ``r_down^2 + r_up^2 = r_to^2``."""
    if not eta:
        return r_to, 0.0
    r_up = min(r_to, eta * r_to * math.sqrt(max(0.0, 1.0 - (r_to / r_from) ** 2)))
    return math.sqrt(max(0.0, r_to**2 - r_up**2)), r_up


def _ancestral_step(
    x: torch.Tensor,
    x0: torch.Tensor,
    now: ScheduleTerms,
    to: ScheduleTerms,
    r_down: float,
    r_up: float,
    s_noise: float,
    z: torch.Tensor | None,
) -> torch.Tensor:
    """DDIM to ``r_down`` in VE coordinates, then noise ``z`` of scale ``r_up``, landing at the model time of
    ``to``: ``y = (r_down / r_t) y_t + (1 - r_down / r_t) x0 + s_noise r_up z``, ``x = alpha_to y``."""
    keep = r_down * now.alpha / now.sigma  # r_down / r_t: 0 at pure noise
    out = (to.alpha * r_down / now.sigma) * x + (to.alpha * (1.0 - keep)) * x0
    if r_up:
        assert z is not None
        out = out + (to.alpha * r_up * s_noise) * z
    return out


def _log_snr_point(now: ScheduleTerms, r_to: float, frac: float) -> float:
    """The ``sigma / alpha`` a fraction ``frac`` of the way from ``now`` to ``r_to`` in log-SNR (k-diffusion's
    ``t + r h``); from pure noise (log-SNR = -inf, no such point) the same fraction of the way in noise level."""
    if math.isfinite(now.ratio):
        lam_t, lam_s = -math.log(now.ratio), -math.log(r_to)
        return math.exp(-(lam_t + frac * (lam_s - lam_t)))
    level = 1.0 + frac * (r_to / (1.0 + r_to) - 1.0)
    return level / (1.0 - level)


def heun(
    denoise: Denoise,
    x: torch.Tensor,
    timesteps: Sequence[float],
    schedule: Schedule,
    callback: Callback | None = None,
    generator: Noise = None,
) -> torch.Tensor:
    """Second-order Heun (trapezoidal) in flow-normalised coordinates; Euler on the last step to sigma = 0."""
    for i in range(len(timesteps) - 1):
        t, s = float(timesteps[i]), float(timesteps[i + 1])
        x_in = x
        x, x0 = _heun_flow_step(denoise, x, t, s, schedule.terms(t), schedule.terms(s))
        _emit(callback, i=i, t=t, t_next=s, x=x, denoised=x0, t_hat=t, x_hat=x_in)
    return x


def euler_edm(
    denoise: Denoise,
    x: torch.Tensor,
    timesteps: Sequence[float],
    schedule: Schedule,
    callback: Callback | None = None,
    generator: Noise = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """k-diffusion's ``sample_euler`` (EDM Alg. 2 with Euler steps): churn up to ``sigma_hat``, evaluate there, then
    an Euler (DDIM) step from ``sigma_hat``; without churn exactly ``euler``."""
    noise, steps = noise_source(generator), len(timesteps) - 1
    for i in range(steps):
        t, s = float(timesteps[i]), float(timesteps[i + 1])
        now, nxt = schedule.terms(t), schedule.terms(s)
        t_hat, hat = _churn_time(t, now, _churn_gamma(now, steps, s_churn, s_tmin, s_tmax), schedule)
        x = _churn(x, now, hat, s_noise, noise, nxt.noise_level)
        x0 = denoise(x, t_hat)
        u = _euler_rule(hat, nxt, math.inf)
        x_hat, x = x, (u.x * x + u.x0 * x0 if u.x else u.x0 * x0)
        _emit(callback, i=i, t=t, t_next=s, x=x, denoised=x0, t_hat=t_hat, x_hat=x_hat)
    return x


def heun_edm(
    denoise: Denoise,
    x: torch.Tensor,
    timesteps: Sequence[float],
    schedule: Schedule,
    callback: Callback | None = None,
    generator: Noise = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """EDM's Heun (Karras et al. 2022, Alg. 2; k-diffusion's ``sample_heun``): churn, then the trapezoidal rule on
    ``dy/dr = (y - x0) / r`` in VE coordinates; Euler on a last step to sigma = 0. A step from pure noise (``r``
    infinite, where the VE trapezoid is undefined) is ``heun``'s flow-normalised step."""
    noise, steps = noise_source(generator), len(timesteps) - 1
    for i in range(steps):
        t, s = float(timesteps[i]), float(timesteps[i + 1])
        now, nxt = schedule.terms(t), schedule.terms(s)
        if math.isinf(now.ratio):
            x_hat = x
            x, x0 = _heun_flow_step(denoise, x, t, s, now, nxt)
            _emit(callback, i=i, t=t, t_next=s, x=x, denoised=x0, t_hat=t, x_hat=x_hat)
            continue
        t_hat, hat = _churn_time(t, now, _churn_gamma(now, steps, s_churn, s_tmin, s_tmax), schedule)
        x_hat = _churn(x, now, hat, s_noise, noise, nxt.noise_level)
        x0 = denoise(x_hat, t_hat)
        y = x_hat / hat.alpha
        d = (y - x0) / hat.ratio
        dr = nxt.ratio - hat.ratio
        y_next = y + d * dr
        if nxt.sigma > 0:
            x0_2 = denoise(nxt.alpha * y_next, s)
            d_2 = (y_next - x0_2) / nxt.ratio
            y_next = y + (d + d_2) * (0.5 * dr)
        x = nxt.alpha * y_next
        _emit(callback, i=i, t=t, t_next=s, x=x, denoised=x0, t_hat=t_hat, x_hat=x_hat)
    return x


def _edm_times(
    t: float,
    s: float,
    schedule: Schedule,
    steps: int,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
    corrector: bool = False,
) -> list[float]:
    """Stage times of ``euler_edm`` / ``heun_edm`` (``corrector``): the churned time, then ``s`` for Heun's
    corrector (none on a last step to sigma = 0)."""
    now = schedule.terms(t)
    t_hat, _ = _churn_time(t, now, _churn_gamma(now, steps, s_churn, s_tmin, s_tmax), schedule)
    return [t_hat, s] if corrector and schedule.terms(s).sigma > 0 else [t_hat]


def _heun_edm_times(t: float, s: float, schedule: Schedule, steps: int, **options: float) -> list[float]:
    return _edm_times(t, s, schedule, steps, corrector=True, **options)


def dpmpp_sde(
    denoise: Denoise,
    x: torch.Tensor,
    timesteps: Sequence[float],
    schedule: Schedule,
    callback: Callback | None = None,
    generator: Noise = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
) -> torch.Tensor:
    """DPM-Solver++ (stochastic), k-diffusion's ``sample_dpmpp_sde``: an ancestral DPM-Solver step to the point a
    fraction ``r`` of the way in log-SNR, a second evaluation there, then an ancestral step from ``t`` to ``s`` with
    ``x0 = (1 - 1/2r) x0_t + (1/2r) x0_mid``; Euler on a last step to sigma = 0.

    The two noises are increments of one Brownian path, over ``[t, mid]`` and over ``[t, s]`` (k-diffusion draws
    them from its Brownian tree; independent draws make the samples' variance too small): we draw the increments
    over ``[t, mid]`` and ``[mid, s]`` from the noise source and add them, which is that path for a
    :class:`~v2a_sampler.core.noise.BrownianTreeNoise` and a valid one for fresh draws."""
    noise = noise_source(generator)
    fac = 0.5 / r
    for i in range(len(timesteps) - 1):
        t, s = float(timesteps[i]), float(timesteps[i + 1])
        now, nxt = schedule.terms(t), schedule.terms(s)
        x0 = denoise(x, t)
        x_in = x
        if nxt.sigma == 0.0:
            u = _euler_rule(now, nxt, math.inf)
            x = u.x * x + u.x0 * x0 if u.x else u.x0 * x0
        else:
            r_mid = _log_snr_point(now, nxt.ratio, r)
            t_mid = schedule.t_from_ratio(r_mid)
            mid = schedule.terms(t_mid)
            z_1 = z_2 = None
            if eta:
                width_1, width_2 = now.noise_level - mid.noise_level, mid.noise_level - nxt.noise_level
                w_1 = noise(x, now.noise_level, mid.noise_level) * math.sqrt(width_1)
                w_2 = noise(x, mid.noise_level, nxt.noise_level) * math.sqrt(width_2)
                z_1, z_2 = w_1 / math.sqrt(width_1), (w_1 + w_2) / math.sqrt(width_1 + width_2)
            x_2 = _ancestral_step(x, x0, now, mid, *_ancestral_split(now.ratio, r_mid, eta), s_noise, z_1)
            x0_2 = denoise(x_2, t_mid)
            x0_d = (1.0 - fac) * x0 + fac * x0_2
            x = _ancestral_step(x, x0_d, now, nxt, *_ancestral_split(now.ratio, nxt.ratio, eta), s_noise, z_2)
        _emit(callback, i=i, t=t, t_next=s, x=x, denoised=x0, t_hat=t, x_hat=x_in)
    return x


def _dpmpp_sde_times(
    t: float, s: float, schedule: Schedule, steps: int, eta: float, s_noise: float, r: float
) -> list[float]:
    now, nxt = schedule.terms(t), schedule.terms(s)
    if nxt.sigma == 0.0:
        return [t]
    return [t, schedule.t_from_ratio(_log_snr_point(now, nxt.ratio, r))]


def dpmpp_2s_ancestral(
    denoise: Denoise,
    x: torch.Tensor,
    timesteps: Sequence[float],
    schedule: Schedule,
    callback: Callback | None = None,
    generator: Noise = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver++(2S) ancestral, k-diffusion's ``sample_dpmpp_2s_ancestral``: a DDIM step to the log-SNR midpoint
    between ``t`` and ``sigma_down``, a second evaluation there, a DDIM step to ``sigma_down`` with that ``x0``,
    then fresh noise of scale ``sigma_up``; Euler on a last step to sigma = 0. From pure noise at ``eta = 1``
    ``sigma_down`` is 0 (k-diffusion would take an Euler step, whose ``x0`` at pure noise is only the data mean): the
    second stage then sits halfway in noise level and its ``x0`` makes the step, so every step but a last one to
    sigma = 0 costs two stages."""
    noise = noise_source(generator)
    for i in range(len(timesteps) - 1):
        t, s = float(timesteps[i]), float(timesteps[i + 1])
        now, nxt = schedule.terms(t), schedule.terms(s)
        x0 = denoise(x, t)
        x_in = x
        r_down, r_up = _ancestral_split(now.ratio, nxt.ratio, eta)
        if _two_stages(now, nxt, r_down):
            t_mid = schedule.t_from_ratio(_log_snr_point(now, r_down, 0.5))
            u = _euler_rule(now, schedule.terms(t_mid), math.inf)
            x0_step = denoise(u.x * x + u.x0 * x0, t_mid)
        else:
            x0_step = x0
        z = noise(x, now.noise_level, nxt.noise_level) if r_up else None
        x = _ancestral_step(x, x0_step, now, nxt, r_down, r_up, s_noise, z)
        _emit(callback, i=i, t=t, t_next=s, x=x, denoised=x0, t_hat=t, x_hat=x_in)
    return x


def _two_stages(now: ScheduleTerms, nxt: ScheduleTerms, r_down: float) -> bool:
    """Whether a DPM++ 2S ancestral step runs its second stage: unless it lands on sigma = 0."""
    return r_down > 0 or (math.isinf(now.ratio) and nxt.sigma > 0)


def _dpmpp_2s_times(t: float, s: float, schedule: Schedule, steps: int, eta: float, s_noise: float) -> list[float]:
    now, nxt = schedule.terms(t), schedule.terms(s)
    r_down, _ = _ancestral_split(now.ratio, nxt.ratio, eta)
    return [t, schedule.t_from_ratio(_log_snr_point(now, r_down, 0.5))] if _two_stages(now, nxt, r_down) else [t]


def dpmpp_3m_sde(
    denoise: Denoise,
    x: torch.Tensor,
    timesteps: Sequence[float],
    schedule: Schedule,
    callback: Callback | None = None,
    generator: Noise = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver++(3M) SDE, k-diffusion's ``sample_dpmpp_3m_sde``: with ``h_eta = (1 + eta) h``::

        x_s = (sigma_s / sigma_t) e^(-eta h) x_t + alpha_s (-expm1(-h_eta) x0 + phi_2 D1 - phi_3 D2)
              + sigma_s sqrt(-expm1(-2 eta h)) s_noise noise

    ``D1``, ``D2`` the first and second divided differences of the last three ``x0`` in log-SNR (second order on the
    second step, first order on the first; a point at pure noise, where log-SNR is -inf, counts as absent);
    ``x_s = alpha_s x0`` on a last step to sigma = 0."""
    noise = noise_source(generator)
    x0_1 = x0_2 = None
    h_1 = h_2 = math.inf
    for i in range(len(timesteps) - 1):
        t, s = float(timesteps[i]), float(timesteps[i + 1])
        now, nxt = schedule.terms(t), schedule.terms(s)
        x0 = denoise(x, t)
        x_in = x
        h = math.inf
        if nxt.sigma == 0.0:
            x = nxt.alpha * x0
        else:
            h = nxt.log_snr - now.log_snr
            eta_h = eta * h if eta else 0.0
            h_eta = h + eta_h
            phi_1 = -math.expm1(-h_eta)
            x = (nxt.sigma / now.sigma * math.exp(-eta_h)) * x + (nxt.alpha * phi_1) * x0
            if math.isfinite(h_1):
                assert x0_1 is not None
                phi_2 = -phi_1 / h_eta + 1.0
                r0 = h_1 / h
                d1_0 = (x0 - x0_1) / r0
                if math.isfinite(h_2):
                    assert x0_2 is not None
                    r1 = h_2 / h
                    d1_1 = (x0_1 - x0_2) / r1
                    d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
                    d2 = (d1_0 - d1_1) / (r0 + r1)
                    phi_3 = phi_2 / h_eta - 0.5
                    x = x + (nxt.alpha * phi_2) * d1 - (nxt.alpha * phi_3) * d2
                else:
                    x = x + (nxt.alpha * phi_2) * d1_0
            if eta:
                scale = nxt.sigma * math.sqrt(-math.expm1(-2.0 * eta_h)) * s_noise
                x = x + scale * noise(x_in, now.noise_level, nxt.noise_level)
        x0_1, x0_2 = x0, x0_1
        h_1, h_2 = h, h_1
        _emit(callback, i=i, t=t, t_next=s, x=x, denoised=x0, t_hat=t, x_hat=x_in)
    return x


def _unipc_rhos(h: float, rks: Sequence[float], order: int, corrector: bool) -> list[float]:
    """UniPC's coefficients ``rho`` (B(h) = expm1(-h), the bh2 variant; data prediction), as diffusers'
    ``UniPCMultistepScheduler``: the predictor solves the first ``order - 1`` rows of ``R rho = b`` (0.5 at order 2),
    the corrector all ``order`` rows (0.5 at order 1); ``R[p][k] = rk[k]^p`` with ``rk = [r_1 .. r_{order-1}, 1]``."""
    if corrector and order == 1:
        return [0.5]
    if not corrector and order <= 2:
        return [0.5] * (order - 1)
    hh = -h
    b_h = math.expm1(hh)
    h_phi_k = math.expm1(hh) / hh - 1.0
    factorial = 1
    rows, rhs = [], []
    ks = [*rks, 1.0]
    for p in range(1, order + 1):
        rows.append([k ** (p - 1) for k in ks])
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= p + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    n = order if corrector else order - 1
    sol = np.linalg.solve(np.array(rows)[:n, :n], np.array(rhs)[:n])
    return [float(v) for v in sol]


def _unipc_update(
    x: torch.Tensor,
    outs: Sequence[torch.Tensor],
    lam: Sequence[float],
    terms: Sequence[ScheduleTerms],
    start: int,
    order: int,
    x0_end: torch.Tensor | None = None,
) -> torch.Tensor:
    """UniP from grid point ``start`` to ``start + 1`` (``x0_end`` None), or UniC: the same step redone with the
    model's ``x0_end`` at ``start + 1`` (diffusers' ``multistep_uni_p_bh_update`` / ``multistep_uni_c_bh_update``)."""
    s0, tt = terms[start], terms[start + 1]
    h = lam[start + 1] - lam[start]
    m0 = outs[start]
    rks = [(lam[start - k] - lam[start]) / h for k in range(1, order)]
    d1s = [(outs[start - k] - m0) / rk for k, rk in zip(range(1, order), rks, strict=True)]
    rhos = _unipc_rhos(h, rks, order, corrector=x0_end is not None)
    b_h = h_phi_1 = math.expm1(-h)  # bh2: B(h) = e^(-h) - 1
    out = (tt.sigma / s0.sigma) * x - (tt.alpha * h_phi_1) * m0
    terms_ = [rho * d for rho, d in zip(rhos, d1s, strict=False)]
    if x0_end is not None:
        terms_.append(rhos[-1] * (x0_end - m0))
    if terms_:
        out = out - (tt.alpha * b_h) * sum(terms_[1:], terms_[0])
    return out


def unipc(
    denoise: Denoise,
    x: torch.Tensor,
    timesteps: Sequence[float],
    schedule: Schedule,
    callback: Callback | None = None,
    generator: Noise = None,
    order: float = 2,
) -> torch.Tensor:
    """UniPC (Zhao et al. 2023), bh2, data prediction, as diffusers' ``UniPCMultistepScheduler`` (``solver_order =
    order``, ``lower_order_final``): each step corrects the current point with the model's ``x0`` there (UniC, at the
    order of the step that reached it), then predicts the next one (UniP of order ``min(order, steps left, points so
    far)``); one evaluation per step, no correction after the last. A point at pure noise (log-SNR -inf) is never
    history for a higher order."""
    order = int(order)
    n = len(timesteps) - 1
    terms = [schedule.terms(float(t)) for t in timesteps]
    lam = [tm.log_snr for tm in terms]
    outs: list[torch.Tensor] = []
    last_x, last_order = x, 1
    for i in range(n):
        t, s = float(timesteps[i]), float(timesteps[i + 1])
        x_in = x
        x0 = denoise(x, t)
        if i > 0:
            x = _unipc_update(last_x, outs, lam, terms, i - 1, last_order, x0)
        outs.append(x0)
        points = i + 1 if math.isfinite(lam[0]) else max(i, 1)  # usable points: this one and those before it
        last_x, last_order = x, min(order, n - i, points)
        x = _unipc_update(x, outs, lam, terms, i, last_order)
        _emit(callback, i=i, t=t, t_next=s, x=x, denoised=x0, t_hat=t, x_hat=x_in)
    return x


_NOISE_OPTIONS = (
    Option("eta", 1.0, "noise scale: 0 is deterministic, 1 the full reverse SDE", minimum=0.0),
    Option("s_noise", 1.0, "extra multiplier of the injected noise", minimum=0.0),
)
_CHURN_OPTIONS = (
    Option("s_churn", 0.0, "EDM churn: gamma = min(s_churn / steps, sqrt(2) - 1) per step", minimum=0.0),
    Option("s_tmin", 0.0, "churn only where sigma / alpha >= s_tmin", minimum=0.0),
    Option("s_tmax", math.inf, "churn only where sigma / alpha <= s_tmax", minimum=0.0, infinite=True),
    Option("s_noise", 1.0, "multiplier of the churn noise", minimum=0.0),
)
#: Range of DPM++ SDE's ``r`` (where its second stage sits, as a fraction of the step in log-SNR).
SDE_R_RANGE = (0.1, 1.0)
_SDE_R = Option("r", 0.5, "position of the second stage in log-SNR (fraction of the step)", *SDE_R_RANGE)
#: DPM++ 2S ancestral's eta stops at 1: beyond, sigma_down can reach 0 and a step would skip its second stage.
_ETA_TO_ONE = Option("eta", 1.0, "noise scale: 0 is deterministic, 1 the full ancestral step", 0.0, 1.0)

register(Solver("euler", "first order; DDIM form, flow Euler", "Song et al. 2021", rule=_euler_rule))
register(
    Solver(
        "euler_a",
        "Euler ancestral: Euler to sigma_down, then fresh noise",
        "k-diffusion sample_euler_ancestral",
        rule=_euler_ancestral_rule,
        options=_NOISE_OPTIONS,
        aliases=("euler_ancestral",),
        stochastic=True,
    )
)
register(
    Solver(
        "euler_edm",
        "k-diffusion's Euler with EDM's churn (raise the noise, evaluate, Euler step); without churn exactly `euler`",
        "Karras et al. 2022, Alg. 2; k-diffusion sample_euler",
        loop=euler_edm,
        options=_CHURN_OPTIONS,
        aliases=("euler_churn",),
        stochastic=True,
        times=_edm_times,
    )
)
register(
    Solver(
        "heun",
        "second order trapezoidal rule in flow-normalised coordinates x / (alpha + sigma) (plain Heun in t on flow "
        "models; on EDM models not EDM's Heun: see heun_edm); Euler on a last step to sigma = 0",
        "Karras et al. 2022",
        loop=heun,
        stages_per_step=2,
        final_stages=1,
    )
)
register(
    Solver(
        "heun_edm",
        "EDM's / k-diffusion's Heun: trapezoidal rule in VE coordinates (sigma / alpha) with EDM's churn; Euler on a "
        "last step to sigma = 0",
        "Karras et al. 2022, Alg. 2; k-diffusion sample_heun",
        loop=heun_edm,
        stages_per_step=2,
        final_stages=1,
        options=_CHURN_OPTIONS,
        stochastic=True,
        times=_heun_edm_times,
    )
)
register(
    Solver(
        "dpmpp_2m",
        "DPM-Solver++(2M), multistep second order in log-SNR",
        "Lu et al. 2022; k-diffusion sample_dpmpp_2m",
        rule=_dpmpp_2m_rule,
        aliases=("dpm++2m", "dpm++_2m"),
    )
)
register(
    Solver(
        "dpmpp_2m_sde",
        "DPM-Solver++(2M) SDE, midpoint form",
        "Lu et al. 2022; k-diffusion sample_dpmpp_2m_sde",
        rule=_dpmpp_2m_sde_rule,
        options=_NOISE_OPTIONS,
        aliases=("dpm++2msde", "dpm++_2m_sde"),
        stochastic=True,
    )
)
register(
    Solver(
        "dpmpp_2m_sde_heun",
        "DPM-Solver++(2M) SDE, Heun form",
        "Lu et al. 2022; k-diffusion sample_dpmpp_2m_sde, solver_type='heun'",
        rule=_dpmpp_2m_sde_heun_rule,
        options=_NOISE_OPTIONS,
        aliases=("dpm++2msdeheun",),
        stochastic=True,
    )
)
register(
    Solver(
        "dpmpp_3m_sde",
        "DPM-Solver++(3M) SDE, multistep third order in log-SNR",
        "Lu et al. 2022; k-diffusion sample_dpmpp_3m_sde",
        loop=dpmpp_3m_sde,
        options=_NOISE_OPTIONS,
        aliases=("dpm++3msde",),
        stochastic=True,
    )
)
register(
    Solver(
        "dpmpp_sde",
        "DPM-Solver++ SDE: two ancestral stages per step (the second at fraction r in log-SNR); Euler on a last step "
        "to sigma = 0",
        "Lu et al. 2022; k-diffusion sample_dpmpp_sde",
        loop=dpmpp_sde,
        stages_per_step=2,
        final_stages=1,
        options=(*_NOISE_OPTIONS, _SDE_R),
        aliases=("dpm++sde",),
        stochastic=True,
        times=_dpmpp_sde_times,
    )
)
register(
    Solver(
        "dpmpp_2s_ancestral",
        "DPM-Solver++(2S) ancestral: single-step second order to sigma_down, then fresh noise; Euler on a last step "
        "to sigma = 0",
        "Lu et al. 2022; k-diffusion sample_dpmpp_2s_ancestral",
        loop=dpmpp_2s_ancestral,
        stages_per_step=2,
        final_stages=1,
        options=(_ETA_TO_ONE, _NOISE_OPTIONS[1]),
        aliases=("dpmpp_2s_a", "dpm++2sa"),
        stochastic=True,
        times=_dpmpp_2s_times,
    )
)
register(
    Solver(
        "unipc",
        "UniPC, bh2: multistep predictor-corrector in log-SNR, one evaluation per step",
        "Zhao et al. 2023; diffusers UniPCMultistepScheduler",
        loop=unipc,
        options=(Option("order", 2, "predictor order (the corrector adds one)", minimum=1, maximum=3, integer=True),),
        aliases=("uni_pc", "uni_pc_bh2", "unipc_bh2"),
    )
)


def euler(denoise: Denoise, x: torch.Tensor, timesteps: Sequence[float], schedule: Schedule,
          callback: Callback | None = None) -> torch.Tensor:  # fmt: skip
    """First-order solver (DDIM form; flow Euler): the plain loop of ``SOLVERS["euler"]``."""
    return SOLVERS["euler"](denoise, x, timesteps, schedule, callback)


def dpmpp_2m(denoise: Denoise, x: torch.Tensor, timesteps: Sequence[float], schedule: Schedule,
             callback: Callback | None = None) -> torch.Tensor:  # fmt: skip
    """DPM-Solver++(2M): the plain loop of ``SOLVERS["dpmpp_2m"]``."""
    return SOLVERS["dpmpp_2m"](denoise, x, timesteps, schedule, callback)


def dpmpp_2m_sde(denoise: Denoise, x: torch.Tensor, timesteps: Sequence[float], schedule: Schedule,
                 callback: Callback | None = None, eta: float = 1.0, s_noise: float = 1.0,
                 generator: Noise = None) -> torch.Tensor:  # fmt: skip
    """DPM-Solver++(2M) SDE: the plain loop of ``SOLVERS["dpmpp_2m_sde"]``."""
    return SOLVERS["dpmpp_2m_sde"](denoise, x, timesteps, schedule, callback, generator, eta=eta, s_noise=s_noise)


# ---------------------------------------------------------------------------------------------------------------
# Time grids
# ---------------------------------------------------------------------------------------------------------------


def get_timesteps(
    schedule: Schedule,
    steps: int,
    grid: str | None = None,
    shift: float = DEFAULT_SHIFT,
    rho: float = KARRAS_RHO,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> torch.Tensor:
    """``steps + 1`` model times from the noise end to the data end (float64).

    Grids: ``"uniform"`` (evenly spaced in model time), ``"shifted"`` (flow shift: noise level
    ``shift * u / (1 + (shift - 1) * u)`` for uniform ``u``), ``"karras"`` (Karras et al. sigmas with ``rho``,
    for models whose noise end has finite sigma/alpha, then 0).
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    grid = grid or schedule.default_grid
    if grid == "uniform":
        return torch.linspace(schedule.noise_end, schedule.data_end, steps + 1, dtype=torch.float64)
    if grid == "shifted":
        if shift <= 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        levels = shift * u / (1.0 + (shift - 1.0) * u)
        return torch.tensor([schedule.t_from_noise_level(float(v)) for v in levels], dtype=torch.float64)
    if grid == "karras":
        if not (math.isfinite(rho) and rho > 0):
            raise ValueError(f"rho must be a positive number, got {rho}")
        r_max = schedule.terms(schedule.noise_end).ratio if sigma_max is None else sigma_max
        if not math.isfinite(r_max):
            raise ValueError(
                "the 'karras' grid needs a finite sigma/alpha at the noise end (EDM/VP models); "
                "use 'uniform' or 'shifted' for flow models"
            )
        r_min = sigma_min if sigma_min is not None else getattr(schedule, "sigma_min", 0.002)
        ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
        lo, hi = r_min ** (1.0 / rho), r_max ** (1.0 / rho)
        ratios = (hi + ramp * (lo - hi)) ** rho
        ts = [schedule.t_from_ratio(float(r)) for r in ratios] + [schedule.data_end]
        return torch.tensor(ts, dtype=torch.float64)
    raise ValueError(f"unknown time grid {grid!r}; expected 'uniform', 'shifted' or 'karras'")


def _check_grid(timesteps: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    ts = torch.as_tensor(timesteps, dtype=torch.float64).flatten()
    if ts.numel() < 2:
        raise ValueError("timesteps need at least two entries (start and end)")
    levels = [schedule.terms(float(t)).noise_level for t in ts]
    if any(not math.isfinite(v) for v in levels):
        raise ValueError("timesteps contain a time where the schedule is undefined")
    if any(b >= a for a, b in zip(levels, levels[1:], strict=False)):
        raise ValueError(
            f"timesteps must run from the noise end ({schedule.noise_end}) toward the data end "
            f"({schedule.data_end}) with strictly decreasing noise; got {ts.tolist()}"
        )
    if schedule.terms(float(ts[0])).sigma == 0.0:
        raise ValueError("timesteps cannot start at the data end (sigma = 0)")
    return ts


# ---------------------------------------------------------------------------------------------------------------
# Sampler and sample()
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class SampleInfo:
    """What a sampling run did."""

    nfe: int  # network evaluations per sample (a batched forward of k branches counts k)
    steps: int
    solver: str
    guidance: dict[str, Any]
    timesteps: list[float]
    nfe_by_role: dict[str, int] = field(default_factory=dict)
    forwards: int = 0  # network calls actually made (batched branches share one)
    effective_strength: float | None = None  # on AMG-trained models, the effective CFG strength
    options: dict[str, float] = field(default_factory=dict)  # the solver's options, defaults filled in

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Sampler:
    """A sampling configuration resolved once for a model (and bad model), then run on any number of batches.

    Resolution checks everything that does not depend on the data: the guidance (model-aware default, AMG warning,
    bad model present), the solver and its options, and the time grid. ``sampler(noise, cond, ...)`` then draws
    samples; :func:`sample` is ``Sampler(...)(...)`` in one call, and takes the same arguments.

    Args:
        denoiser: the (good) model.
        guidance: a guidance object or spec (``"cfg(4.5)"``, ``"hg"``, ...); None picks the model-aware default.
        bad: the bad model for autoguidance-type guidance.
        solver: a name or alias in :data:`SOLVERS` (default ``"euler"``).
        steps: number of steps on a named ``grid`` (default 25).
        timesteps: explicit grid in the model's own time convention, from the noise end toward the data end; used
            exactly as given (excludes ``steps``/``grid``).
        grid, shift: the named grid (``uniform``, ``shifted``, ``karras``) and the flow shift of ``shifted``.
        rho, sigma_min, sigma_max: the ``karras`` grid's exponent (default 7) and its end points in ``sigma / alpha``
            (defaults: the schedule's noise end and its ``sigma_min``, else 0.002); only with that grid.
        brownian: drive stochastic solvers with a :class:`~v2a_sampler.core.noise.BrownianTreeNoise` seeded from
            the run's generator(s) (one seed per generator) instead of fresh draws: the same seed then gives the same
            sample path at any step count.
        batch_branches: evaluate all branches of a model in one forward where its conditions stack.
        fused: combine the branches and update the state in one kernel per step (linear-rule solvers, linear
            guidance); ``None`` fuses where it can on CUDA and runs the plain loops otherwise.
        stack_models: evaluate a same-architecture bad model together with the good one over stacked weights.
        streams: on CUDA, run the good and bad models' forwards on two streams.
        cuda_graph: capture the branch forwards of a stage as a CUDA graph (once per distinct set of active
            branches) and replay it at the other stages; fixed shapes, CUDA only.
        **options: the solver's options (e.g. ``eta=0.5`` for ``dpmpp_2m_sde``); see :data:`SOLVERS`.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        guidance: str | G.Guidance | Mapping[str, Any] | None = None,
        bad: Denoiser | None = None,
        solver: str | Solver = DEFAULT_SOLVER,
        steps: int | None = None,
        timesteps: Sequence[float] | torch.Tensor | None = None,
        grid: str | None = None,
        shift: float = DEFAULT_SHIFT,
        *,
        rho: float | None = None,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        brownian: bool = False,
        batch_branches: bool = True,
        fused: bool | None = None,
        stack_models: bool = False,
        streams: bool = False,
        cuda_graph: bool | GraphBackend = False,
        **options: Any,
    ) -> None:
        self.solver = get_solver(solver)
        self.options = self.solver.check_options(options)
        if fused and not self.solver.fusable:
            raise ValueError(f"solver {self.solver.name!r} has no fused path; fused solvers: "
                             f"{', '.join(fused_solvers())}")  # fmt: skip
        self.denoiser, self.bad = denoiser, bad
        self.guidance = G.resolve(guidance, denoiser, bad)
        if fused and not self.guidance.is_linear:
            raise ValueError(f"guidance {G.describe(self.guidance)} is not linear: the fused kernel cannot run it")
        karras = {k: v for k, v in (("rho", rho), ("sigma_min", sigma_min), ("sigma_max", sigma_max)) if v is not None}
        if timesteps is not None:
            if steps is not None or grid is not None or karras:
                raise ValueError(f"give either timesteps or steps/grid{'/' + '/'.join(karras) if karras else ''}, "
                                 "not both")  # fmt: skip
            ts = torch.as_tensor(timesteps)
        else:
            resolved = grid or denoiser.schedule.default_grid
            if karras and resolved != "karras":
                raise ValueError(f"{', '.join(karras)} shape the 'karras' grid; this run uses the {resolved!r} grid "
                                 "(pass grid='karras')")  # fmt: skip
            for name, value in karras.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                    raise ValueError(f"{name} must be a positive number, got {value!r}")
            ts = get_timesteps(denoiser.schedule, DEFAULT_STEPS if steps is None else steps, grid, shift,
                               **{k: float(v) for k, v in karras.items()})  # fmt: skip
        self.timesteps: list[float] = _check_grid(ts, denoiser.schedule).tolist()
        if brownian not in (True, False, 0, 1):
            raise ValueError(f"brownian must be true or false (1 or 0), got {brownian!r}")
        self.brownian = bool(brownian)
        # guidance hook (issue #16): forms defined over steps (window fractions, zero_star's zero-init steps) bind
        # to this grid's noise levels once; every other guidance returns itself unchanged
        self.guidance = self.guidance.on_grid([denoiser.schedule.terms(t).noise_level for t in self.timesteps])
        self.fused = fused
        self.engine_options = dict(batch_branches=batch_branches, stack_models=stack_models, streams=streams,
                                   cuda_graph=cuda_graph)  # fmt: skip

    @property
    def steps(self) -> int:
        return len(self.timesteps) - 1

    @property
    def stages(self) -> int:
        """Denoiser stages per sample (each costs the guidance's branches at that noise level)."""
        return stages_per_sample(self.solver, self.timesteps, self.denoiser.schedule, self.options)

    @property
    def nfe(self) -> int:
        """Network evaluations per sample: the guidance's branches at every stage's noise level (intervals
        included). A run reports fewer only where two branches coincide for the model's conditions."""
        schedule = self.denoiser.schedule
        return sum(
            self.guidance.nfe_at(schedule.terms(u).noise_level)
            for t, s in zip(self.timesteps, self.timesteps[1:], strict=False)
            for u in self.solver.stage_times(t, s, schedule, self.steps, self.options)
        )

    def __call__(
        self,
        noise: torch.Tensor,
        cond: Cond | None = None,
        *,
        bad_cond: Cond | None = None,
        negative: Cond | None = None,
        bad_negative: Cond | None = None,
        generator: Noise = None,
        callback: Callback | None = None,
        progress: Progress | None = None,
        callback_style: str = "v2a",
    ) -> tuple[torch.Tensor, SampleInfo]:
        """Draw samples from ``noise`` (standard normal, batch first; the start state is ``sigma(t_start) *
        noise``) with conditions ``cond``; see :func:`sample` for the other arguments."""
        if not torch.is_floating_point(noise):
            raise TypeError(f"noise must be a floating tensor, got {noise.dtype}")
        if callback_style not in CALLBACK_STYLES:
            raise ValueError(f"unknown callback_style {callback_style!r}; expected {' or '.join(CALLBACK_STYLES)}")
        source = noise_source(generator, self.brownian)
        denoiser, schedule = self.denoiser, self.denoiser.schedule
        work_dtype = torch.promote_types(noise.dtype, torch.float32)
        engine = GuidedDenoiser(denoiser, self.guidance, cond=cond, bad=self.bad, bad_cond=bad_cond,
                                model_dtype=noise.dtype, negative=negative, bad_negative=bad_negative,
                                **self.engine_options)  # fmt: skip

        total, done = self.stages, 0

        def denoise(x: torch.Tensor, t: float) -> torch.Tensor:
            nonlocal done
            out = engine(x, t).to(work_dtype)
            if progress is not None:
                done += 1
                progress(done, total)
            return out

        x = noise.to(work_dtype) * schedule.terms(self.timesteps[0]).sigma
        fusable = self.solver.fusable and self.guidance.is_linear  # else the plain loop (same results)
        use_fused = (x.is_cuda if self.fused is None else self.fused) and fusable
        events = _k_diffusion_events(callback, schedule) if callback_style == "k-diffusion" else callback
        with torch.no_grad():
            if use_fused:
                if progress is not None:  # one stage per step
                    events = _with_progress(events, progress, total)
                out = fused_sample(engine, x, self.timesteps, self.solver, events, source, **self.options)
            else:
                out = self.solver(denoise, x, self.timesteps, schedule, events, source, **self.options)
        amg = getattr(denoiser, "amg_weight", None)
        info = SampleInfo(
            nfe=engine.nfe,
            steps=self.steps,
            solver=self.solver.name,
            guidance=G.record(self.guidance),  # guidance hook (issue #16): callable weights have no dict
            timesteps=list(self.timesteps),
            nfe_by_role=dict(engine.nfe_by_role),
            forwards=engine.forwards,
            effective_strength=G.amg_effective_strength(self.guidance, amg) if amg is not None else None,
            options=dict(self.options),
        )
        return out.to(noise.dtype), info


def sample(
    denoiser: Denoiser,
    noise: torch.Tensor,
    cond: Cond | None = None,
    guidance: str | G.Guidance | Mapping[str, Any] | None = None,
    bad: Denoiser | None = None,
    solver: str | Solver = DEFAULT_SOLVER,
    steps: int | None = None,
    timesteps: Sequence[float] | torch.Tensor | None = None,
    grid: str | None = None,
    shift: float = DEFAULT_SHIFT,
    generator: Noise = None,
    callback: Callback | None = None,
    bad_cond: Cond | None = None,
    negative: Cond | None = None,
    bad_negative: Cond | None = None,
    progress: Progress | None = None,
    callback_style: str = "v2a",
    **settings: Any,
) -> tuple[torch.Tensor, SampleInfo]:
    """Draw samples with a guided solver: ``Sampler(denoiser, guidance, bad, solver, ...)(noise, cond, ...)``.

    Args:
        denoiser: the (good) model.
        noise: standard normal tensor, batch first; the start state is ``sigma(t_start) * noise``.
        cond: named conditions (``None`` for an unconditional model).
        guidance, bad, solver, steps, timesteps, grid, shift: as for :class:`Sampler`.
        generator: the noise of stochastic solvers: a ``torch.Generator``, a list of them (one per row, so each row
            is independent of the batch) or a :class:`~v2a_sampler.core.noise.NoiseSource` such as
            ``BrownianTreeNoise(seed)`` (or ``brownian=True``: a Brownian tree seeded from the generators).
        callback: called after every step with a dict: ``i``, ``t``, ``t_next``, ``x`` (the state after the step),
            ``denoised`` (the first stage's ``x0``), ``t_hat`` and ``x_hat`` (the time and state of the first stage:
            ``t`` and the state before the step, unless EDM's churn raised them).
        callback_style: ``"k-diffusion"`` calls ``callback`` with k-diffusion's dict instead: ``x`` (= ``x_hat``),
            ``i``, ``sigma`` and ``sigma_hat`` (``sigma / alpha`` at ``t`` and ``t_hat``: k-diffusion's sigmas on
            EDM models), ``denoised``.
        progress: called after every denoiser stage with ``(stages done, stages in the run)``.
        bad_cond: conditions for the bad model when it encodes them differently from the good model.
        negative: conditions that stand in for the model's null where a branch drops them (negative prompts,
            e.g. ``{"text": negative_text_features}``); ``bad_negative`` the same for the bad model.
        **settings: the solver's options (``eta=...``, ``s_noise=...``), the grid's (``rho``, ``sigma_min``,
            ``sigma_max``), ``brownian`` and the execution options of :class:`Sampler` (``batch_branches``,
            ``fused``, ``stack_models``, ``streams``, ``cuda_graph``).

    Returns:
        ``(x0, info)`` where ``info.nfe`` is the exact number of network evaluations per sample.
    """
    sampler = Sampler(denoiser, guidance, bad, solver, steps, timesteps, grid, shift, **settings)
    return sampler(noise, cond, bad_cond=bad_cond, negative=negative, bad_negative=bad_negative,
                   generator=generator, callback=callback, progress=progress,
                   callback_style=callback_style)  # fmt: skip
