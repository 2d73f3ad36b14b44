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
* ``euler_a``: Euler ancestral (k-diffusion's ``sample_euler_ancestral``) in the variance-exploding coordinates
  ``(x / alpha, sigma / alpha)`` of any schedule: a deterministic step down to ``sigma_down`` plus fresh noise.
* ``heun``: second order trapezoidal rule on the probability-flow ODE in flow-normalised coordinates
  ``(x / (alpha + sigma), sigma / (alpha + sigma))`` (for flow models: plain Heun in t); the last step to the data
  end is an Euler step, as in EDM.
* ``dpmpp_2m``: DPM-Solver++(2M) (Lu et al., 2022), multistep second order in ``lambda = log(alpha / sigma)``.
* ``dpmpp_2m_sde``: its SDE variant (midpoint), noise ``eta`` and seeded noise from a ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import kernels
from . import guidance as G
from .denoisers import Cond, Denoiser, Schedule, ScheduleTerms, x0_coefficients
from .engine import GraphBackend, GuidedDenoiser

Denoise = Callable[[torch.Tensor, float], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]
Generators = torch.Generator | Sequence[torch.Generator] | None

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


def _randn(x: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Standard normal noise like ``x``, drawn in float32 whatever the state's dtype (so a seed gives the same path
    in every precision); a list of generators draws row ``i`` from generator ``i``."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != x.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
        rows = [torch.randn(x.shape[1:], generator=g, device=x.device, dtype=torch.float32) for g in generator]
        return torch.stack(rows).to(x.dtype)
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32).to(x.dtype)


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

    def check(self, value: Any, solver: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"solver {solver!r}: option {self.name} must be a number, got {value!r}")
        v = float(value)
        if (
            not math.isfinite(v)
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
#: **options) -> x``.
Loop = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Solver:
    """One solver: what it is called, what a step costs, which options it takes, and how it steps.

    Exactly one of ``rule`` (a single-stage linear update, run by both the plain and the fused loop) and ``loop`` (a
    plain loop for anything else) is given. ``stages_per_step`` model evaluations make one step, except a final
    step to ``sigma = 0``, which runs ``final_stages`` (Heun's last step is an Euler step).
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

    def stage_times(self, t: float, s: float, schedule: Schedule) -> list[float]:
        """Model times of the stages of one step from ``t`` to ``s`` (extra stages evaluate at ``s``)."""
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
        generator: Generators = None,
        **options: Any,
    ) -> torch.Tensor:
        """Integrate ``x`` over ``timesteps`` with the plain loop (options checked, defaults filled in)."""
        opts = self.check_options(options)
        if self.rule is not None:
            return run_rule(self.rule, denoise, x, timesteps, schedule, callback, generator, **opts)
        assert self.loop is not None
        return self.loop(denoise, x, timesteps, schedule, callback, generator, **opts)


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


def stages_per_sample(solver: str, timesteps: Sequence[float], schedule: Schedule) -> int:
    """Number of denoiser stages a solver runs on this grid (Heun skips its corrector on a final sigma=0 step)."""
    final_zero = schedule.terms(float(timesteps[-1])).sigma == 0.0
    return get_solver(solver).stages(len(timesteps) - 1, final_zero)


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
    generator: Generators = None,
    **options: float,
) -> torch.Tensor:
    """The plain loop of a linear rule: one ``denoise`` call and one :class:`Update` per step (zero terms skipped)."""
    old_x0: torch.Tensor | None = None
    h_last = math.inf
    for i in range(len(timesteps) - 1):
        t, s = float(timesteps[i]), float(timesteps[i + 1])
        x0 = denoise(x, t)
        u = rule(schedule.terms(t), schedule.terms(s), h_last, **options)
        x = u.x * x + u.x0 * x0 if u.x else u.x0 * x0
        if u.diff:
            assert old_x0 is not None
            x = x + u.diff * (x0 - old_x0)
        if u.noise:
            x = x + u.noise * _randn(x, generator)
        if u.h is not None:
            h_last = u.h
        old_x0 = x0
        _emit(callback, i=i, t=t, t_next=s, x=x, denoised=x0)
    return x


def fused_sample(
    engine: GuidedDenoiser,
    x: torch.Tensor,
    timesteps: Sequence[float],
    solver: str | Solver = DEFAULT_SOLVER,
    callback: Callback | None = None,
    generator: Generators = None,
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
    schedule, prediction = engine.model.schedule, engine.model.prediction
    old_x0: torch.Tensor | None = None
    h_last = math.inf
    for i in range(len(timesteps) - 1):
        t, s = float(timesteps[i]), float(timesteps[i + 1])
        now = schedule.terms(t)
        u = spec.rule(now, schedule.terms(s), h_last, **opts)
        preds, coeffs = engine.branch_predictions(x, t)
        a, b = x0_coefficients(prediction, now)
        noise = _randn(x, generator) if u.noise else None
        x0, x = kernels.guided_step(
            x, preds, coeffs, a, b, u.x, u.x0 + u.diff, -u.diff, old_x0 if u.diff else None, u.noise, noise
        )
        if u.h is not None:
            h_last = u.h
        old_x0 = x0
        _emit(callback, i=i, t=t, t_next=s, x=x, denoised=x0)
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


def _dpmpp_2m_rule(now: ScheduleTerms, nxt: ScheduleTerms, h_last: float) -> Update:
    """DPM-Solver++(2M): the ``eta = 0`` case of :func:`_dpmpp_2m_sde_rule`."""
    return _dpmpp_2m_sde_rule(now, nxt, h_last, eta=0.0)


def heun(
    denoise: Denoise,
    x: torch.Tensor,
    timesteps: Sequence[float],
    schedule: Schedule,
    callback: Callback | None = None,
    generator: Generators = None,
) -> torch.Tensor:
    """Second-order Heun (trapezoidal) in flow-normalised coordinates; Euler on the last step to sigma = 0."""
    for i in range(len(timesteps) - 1):
        t, s = float(timesteps[i]), float(timesteps[i + 1])
        now, nxt = schedule.terms(t), schedule.terms(s)
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
        x = xf_next * scale_s
        _emit(callback, i=i, t=t, t_next=s, x=x, denoised=x0)
    return x


_NOISE_OPTIONS = (
    Option("eta", 1.0, "noise scale: 0 is deterministic, 1 the full reverse SDE", minimum=0.0),
    Option("s_noise", 1.0, "extra multiplier of the injected noise", minimum=0.0),
)

register(Solver("euler", "first order; DDIM form, flow Euler", "Song et al. 2021", rule=_euler_rule))
register(
    Solver(
        "euler_a",
        "Euler ancestral: Euler to sigma_down, then fresh noise",
        "k-diffusion",
        rule=_euler_ancestral_rule,
        options=_NOISE_OPTIONS,
        aliases=("euler_ancestral",),
        stochastic=True,
    )
)
register(
    Solver(
        "heun",
        "second order trapezoidal rule in flow-normalised coordinates; Euler on a last step to sigma = 0",
        "Karras et al. 2022",
        loop=heun,
        stages_per_step=2,
        final_stages=1,
    )
)
register(
    Solver(
        "dpmpp_2m",
        "DPM-Solver++(2M), multistep second order in log-SNR",
        "Lu et al. 2022",
        rule=_dpmpp_2m_rule,
        aliases=("dpm++2m", "dpm++_2m"),
    )
)
register(
    Solver(
        "dpmpp_2m_sde",
        "DPM-Solver++(2M) SDE, midpoint form",
        "Lu et al. 2022",
        rule=_dpmpp_2m_sde_rule,
        options=_NOISE_OPTIONS,
        aliases=("dpm++2msde", "dpm++_2m_sde"),
        stochastic=True,
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
                 generator: Generators = None) -> torch.Tensor:  # fmt: skip
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
            raise ValueError(f"guidance {self.guidance.spec()} is not linear: the fused kernel cannot run it")
        if timesteps is not None:
            if steps is not None or grid is not None:
                raise ValueError("give either timesteps or steps/grid, not both")
            ts = torch.as_tensor(timesteps)
        else:
            ts = get_timesteps(denoiser.schedule, DEFAULT_STEPS if steps is None else steps, grid, shift)
        self.timesteps: list[float] = _check_grid(ts, denoiser.schedule).tolist()
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
        return stages_per_sample(self.solver.name, self.timesteps, self.denoiser.schedule)

    @property
    def nfe(self) -> int:
        """Network evaluations per sample: the guidance's branches at every stage's noise level (intervals
        included). A run reports fewer only where two branches coincide for the model's conditions."""
        schedule = self.denoiser.schedule
        return sum(
            self.guidance.nfe_at(schedule.terms(u).noise_level)
            for t, s in zip(self.timesteps, self.timesteps[1:], strict=False)
            for u in self.solver.stage_times(t, s, schedule)
        )

    def __call__(
        self,
        noise: torch.Tensor,
        cond: Cond | None = None,
        *,
        bad_cond: Cond | None = None,
        negative: Cond | None = None,
        bad_negative: Cond | None = None,
        generator: Generators = None,
        callback: Callback | None = None,
    ) -> tuple[torch.Tensor, SampleInfo]:
        """Draw samples from ``noise`` (standard normal, batch first; the start state is ``sigma(t_start) *
        noise``) with conditions ``cond``; see :func:`sample` for the other arguments."""
        if not torch.is_floating_point(noise):
            raise TypeError(f"noise must be a floating tensor, got {noise.dtype}")
        denoiser, schedule = self.denoiser, self.denoiser.schedule
        work_dtype = torch.promote_types(noise.dtype, torch.float32)
        engine = GuidedDenoiser(denoiser, self.guidance, cond=cond, bad=self.bad, bad_cond=bad_cond,
                                model_dtype=noise.dtype, negative=negative, bad_negative=bad_negative,
                                **self.engine_options)  # fmt: skip

        def denoise(x: torch.Tensor, t: float) -> torch.Tensor:
            return engine(x, t).to(work_dtype)

        x = noise.to(work_dtype) * schedule.terms(self.timesteps[0]).sigma
        fusable = self.solver.fusable and self.guidance.is_linear  # else the plain loop (same results)
        use_fused = (x.is_cuda if self.fused is None else self.fused) and fusable
        with torch.no_grad():
            if use_fused:
                out = fused_sample(engine, x, self.timesteps, self.solver, callback, generator, **self.options)
            else:
                out = self.solver(denoise, x, self.timesteps, schedule, callback, generator, **self.options)
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
    generator: Generators = None,
    callback: Callback | None = None,
    bad_cond: Cond | None = None,
    negative: Cond | None = None,
    bad_negative: Cond | None = None,
    **settings: Any,
) -> tuple[torch.Tensor, SampleInfo]:
    """Draw samples with a guided solver: ``Sampler(denoiser, guidance, bad, solver, ...)(noise, cond, ...)``.

    Args:
        denoiser: the (good) model.
        noise: standard normal tensor, batch first; the start state is ``sigma(t_start) * noise``.
        cond: named conditions (``None`` for an unconditional model).
        guidance, bad, solver, steps, timesteps, grid, shift: as for :class:`Sampler`.
        generator: seeds the noise of stochastic solvers; a list of generators (one per row) makes each row
            independent of the batch.
        callback: called after every step with ``i, t, t_next, x, denoised``.
        bad_cond: conditions for the bad model when it encodes them differently from the good model.
        negative: conditions that stand in for the model's null where a branch drops them (negative prompts,
            e.g. ``{"text": negative_text_features}``); ``bad_negative`` the same for the bad model.
        **settings: the solver's options (``eta=...``, ``s_noise=...``) and the execution options of
            :class:`Sampler` (``batch_branches``, ``fused``, ``stack_models``, ``streams``, ``cuda_graph``).

    Returns:
        ``(x0, info)`` where ``info.nfe`` is the exact number of network evaluations per sample.
    """
    sampler = Sampler(denoiser, guidance, bad, solver, steps, timesteps, grid, shift, **settings)
    return sampler(noise, cond, bad_cond=bad_cond, negative=negative, bad_negative=bad_negative,
                   generator=generator, callback=callback)  # fmt: skip
