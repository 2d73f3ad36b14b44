"""ODE/SDE solvers over the denoiser protocol.

Each solver is a short function ``solver(denoise, x, timesteps, schedule, ...)`` where ``denoise(x, t) -> x0`` is
the (guided) clean-data estimate at model time ``t`` and ``schedule`` gives ``alpha(t), sigma(t)`` with
``x_t = alpha * x0 + sigma * eps``. They step the state in the model's own space, so any prediction type and time
convention works, and both flow conventions give identical samples.

* ``euler``: first order; the DDIM update ``x_s = (sigma_s / sigma_t) x_t + (alpha_s - sigma_s alpha_t / sigma_t) x0``,
  which for flow models is exactly ``x + (s - t) * velocity``.
* ``heun``: second order trapezoidal rule on the probability-flow ODE in flow-normalised coordinates
  ``(x / (alpha + sigma), sigma / (alpha + sigma))`` (for flow models: plain Heun in t); the last step to the data
  end is an Euler step, as in EDM.
* ``dpmpp_2m``: DPM-Solver++(2M) (Lu et al., 2022), multistep second order in ``lambda = log(alpha / sigma)``.
* ``dpmpp_2m_sde``: its SDE variant (midpoint), noise ``eta`` and seeded noise from a ``torch.Generator``.

``sample()`` puts it together: guidance resolution, time grids, exact NFE accounting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import kernels
from . import guidance as G
from .denoisers import Cond, Denoiser, Schedule, x0_coefficients
from .engine import GraphBackend, GuidedDenoiser

Denoise = Callable[[torch.Tensor, float], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]

#: Default flow shift of the "shifted" grid (SD3 uses 3.0 for its largest model).
DEFAULT_SHIFT = 3.0
#: Karras et al. (2022) grid exponent.
KARRAS_RHO = 7.0


def _terms(schedule: Schedule, t: float):
    return schedule.terms(float(t))


def _emit(callback: Callback | None, **kw: Any) -> None:
    if callback is not None:
        callback(kw)


# ---------------------------------------------------------------------------------------------------------------
# Solvers
# ---------------------------------------------------------------------------------------------------------------


def euler(
    denoise: Denoise,
    x: torch.Tensor,
    timesteps: Sequence[float],
    schedule: Schedule,
    callback: Callback | None = None,
) -> torch.Tensor:
    """First-order solver (DDIM form; flow Euler)."""
    for i in range(len(timesteps) - 1):
        t, s = float(timesteps[i]), float(timesteps[i + 1])
        now, nxt = _terms(schedule, t), _terms(schedule, s)
        x0 = denoise(x, t)
        x = (nxt.sigma / now.sigma) * x + (nxt.alpha - nxt.sigma * now.alpha / now.sigma) * x0
        _emit(callback, i=i, t=t, t_next=s, x=x, denoised=x0)
    return x


def heun(
    denoise: Denoise,
    x: torch.Tensor,
    timesteps: Sequence[float],
    schedule: Schedule,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Second-order Heun (trapezoidal) in flow-normalised coordinates; Euler on the last step to sigma = 0."""
    for i in range(len(timesteps) - 1):
        t, s = float(timesteps[i]), float(timesteps[i + 1])
        now, nxt = _terms(schedule, t), _terms(schedule, s)
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


def dpmpp_2m(
    denoise: Denoise,
    x: torch.Tensor,
    timesteps: Sequence[float],
    schedule: Schedule,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M): multistep second order in log-SNR; first order on the first and last steps.

    It is the ``eta = 0`` case of :func:`dpmpp_2m_sde`: with ``r = h_last / h`` the update is
    ``x_s = (sigma_s / sigma_t) x_t - alpha_s expm1(-h) ((1 + 1 / 2r) x0 - (1 / 2r) x0_prev)``.
    """
    return dpmpp_2m_sde(denoise, x, timesteps, schedule, callback, eta=0.0)


def dpmpp_2m_sde(
    denoise: Denoise,
    x: torch.Tensor,
    timesteps: Sequence[float],
    schedule: Schedule,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE (midpoint form): ``eta=0`` is deterministic, ``eta=1`` the reverse SDE."""
    old_x0: torch.Tensor | None = None
    h_last = math.inf
    for i in range(len(timesteps) - 1):
        t, s = float(timesteps[i]), float(timesteps[i + 1])
        now, nxt = _terms(schedule, t), _terms(schedule, s)
        x0 = denoise(x, t)
        if nxt.sigma == 0.0:
            x = nxt.alpha * x0
        else:
            h = nxt.log_snr - now.log_snr
            eta_h = eta * h if eta else 0.0  # (0 * inf is nan on the first step from pure noise)
            keep = math.exp(-eta_h)  # 0 when starting from pure noise (h = inf)
            gain = -math.expm1(-h - eta_h)
            x = (nxt.sigma / now.sigma * keep) * x + (nxt.alpha * gain) * x0
            if old_x0 is not None:
                r = h_last / h
                x = x + (nxt.alpha * 0.5 * gain / r) * (x0 - old_x0)
            if eta:
                # drawn in float32 whatever the state dtype, so a seed gives the same path in every precision
                noise = _randn(x, generator)
                x = x + (nxt.sigma * math.sqrt(-math.expm1(-2.0 * eta_h)) * s_noise) * noise
            h_last = h
        old_x0 = x0
        _emit(callback, i=i, t=t, t_next=s, x=x, denoised=x0)
    return x


def _randn(x: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """Standard normal noise like ``x``; a list of generators draws row ``i`` from generator ``i``."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != x.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
        rows = [torch.randn(x.shape[1:], generator=g, device=x.device, dtype=torch.float32) for g in generator]
        return torch.stack(rows).to(x.dtype)
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32).to(x.dtype)


#: Solvers with a fused combine-and-update path (one kernel per step reads every branch prediction once).
FUSED_SOLVERS = ("euler", "dpmpp_2m", "dpmpp_2m_sde")


def fused_sample(
    engine: GuidedDenoiser,
    x: torch.Tensor,
    timesteps: Sequence[float],
    solver: str = "euler",
    callback: Callback | None = None,
    eta: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """Euler / DPM++ 2M / DPM++ 2M SDE with the guidance combination and the update fused in one kernel per step.

    The same updates as :func:`euler`, :func:`dpmpp_2m` and :func:`dpmpp_2m_sde`, written as
    ``x_next = u_x x + u_0 x0 + u_old x0_prev + u_noise noise`` with ``x0 = a x + b sum_i c_i p_i``
    (:func:`v2a_sampler.kernels.guided_step`: Triton on CUDA, the torch reference elsewhere).
    """
    name = solver_name(solver)
    if name not in FUSED_SOLVERS:
        raise ValueError(f"solver {name!r} has no fused path; fused solvers: {', '.join(FUSED_SOLVERS)}")
    schedule, prediction = engine.model.schedule, engine.model.prediction
    sde = name == "dpmpp_2m_sde" and eta != 0.0
    old_x0: torch.Tensor | None = None
    h_last = math.inf
    for i in range(len(timesteps) - 1):
        t, s = float(timesteps[i]), float(timesteps[i + 1])
        now, nxt = _terms(schedule, t), _terms(schedule, s)
        preds, coeffs = engine.branch_predictions(x, t)
        a, b = x0_coefficients(prediction, now)
        u_old, u_noise, noise = 0.0, 0.0, None
        if name == "euler":
            u_x, u_0 = nxt.sigma / now.sigma, nxt.alpha - nxt.sigma * now.alpha / now.sigma
        elif nxt.sigma == 0.0:
            u_x, u_0 = 0.0, nxt.alpha
        else:
            h = nxt.log_snr - now.log_snr
            eta_h = eta * h if sde else 0.0
            gain = -math.expm1(-h - eta_h)
            u_x = nxt.sigma / now.sigma * math.exp(-eta_h)
            half_inv_r = 0.0 if old_x0 is None else h / (2.0 * h_last)
            u_0, u_old = nxt.alpha * gain * (1.0 + half_inv_r), -nxt.alpha * gain * half_inv_r
            if sde:
                noise = _randn(x, generator)
                u_noise = nxt.sigma * math.sqrt(-math.expm1(-2.0 * eta_h))
            h_last = h
        x0, x = kernels.guided_step(x, preds, coeffs, a, b, u_x, u_0, u_old, old_x0 if u_old else None, u_noise, noise)
        old_x0 = x0
        _emit(callback, i=i, t=t, t_next=s, x=x, denoised=x0)
    return x


SOLVERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": euler,
    "heun": heun,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
}
_SOLVER_ALIASES = {
    "dpm++2m": "dpmpp_2m",
    "dpm++_2m": "dpmpp_2m",
    "dpm++2msde": "dpmpp_2m_sde",
    "dpm++_2m_sde": "dpmpp_2m_sde",
}


def solver_name(name: str) -> str:
    key = name.lower().replace("-", "_").replace(" ", "")
    key = _SOLVER_ALIASES.get(key, key)
    if key not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; expected one of: {', '.join(SOLVERS)}")
    return key


def stages_per_sample(solver: str, timesteps: Sequence[float], schedule: Schedule) -> int:
    """Number of denoiser stages a solver runs on this grid (Heun skips its corrector on a final sigma=0 step)."""
    steps = len(timesteps) - 1
    if solver_name(solver) != "heun":
        return steps
    final_zero = schedule.terms(float(timesteps[-1])).sigma == 0.0
    return 2 * steps - (1 if final_zero else 0)


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
# sample()
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

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def sample(
    denoiser: Denoiser,
    noise: torch.Tensor,
    cond: Cond | None = None,
    guidance: str | G.Guidance | Mapping[str, Any] | None = None,
    bad: Denoiser | None = None,
    solver: str = "euler",
    steps: int | None = None,
    timesteps: Sequence[float] | torch.Tensor | None = None,
    grid: str | None = None,
    shift: float = DEFAULT_SHIFT,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    eta: float = 1.0,
    callback: Callback | None = None,
    bad_cond: Cond | None = None,
    batch_branches: bool = True,
    fused: bool | None = None,
    stack_models: bool = False,
    negative: Cond | None = None,
    bad_negative: Cond | None = None,
    streams: bool = False,
    cuda_graph: bool | GraphBackend = False,
) -> tuple[torch.Tensor, SampleInfo]:
    """Draw samples with a guided solver.

    Args:
        denoiser: the (good) model.
        noise: standard normal tensor, batch first; the start state is ``sigma(t_start) * noise``.
        cond: named conditions (``None`` for an unconditional model).
        guidance: a guidance object or spec (``"cfg(4.5)"``, ``"hg"``, ...); None picks the model-aware default.
        bad: the bad model for autoguidance-type guidance.
        solver: ``"euler"``, ``"heun"``, ``"dpmpp_2m"`` or ``"dpmpp_2m_sde"``.
        steps: number of steps on a named ``grid`` (default 25).
        timesteps: explicit grid in the model's own time convention, from the noise end toward the data end; used
            exactly as given (excludes ``steps``/``grid``).
        generator: seeds the SDE noise; a list of generators (one per row) makes each row independent of the batch.
        eta: SDE noise scale for ``dpmpp_2m_sde``.
        callback: called after every step with ``i, t, t_next, x, denoised``.
        bad_cond: conditions for the bad model when it encodes them differently from the good model.
        batch_branches: evaluate all branches of a model in one forward where its conditions stack.
        fused: combine the branches and update the state in one kernel per step (Euler, DPM++ 2M, DPM++ 2M SDE);
            ``None`` fuses on CUDA and uses the plain solver functions elsewhere.
        stack_models: evaluate a same-architecture bad model together with the good one over stacked weights.
        negative: conditions that stand in for the model's null where a branch drops them (negative prompts,
            e.g. ``{"text": negative_text_features}``); ``bad_negative`` the same for the bad model.
        streams: on CUDA, run the good and bad models' forwards on two streams.
        cuda_graph: capture the branch forwards of a stage as a CUDA graph (once per distinct set of active
            branches) and replay it at the other stages; fixed shapes, CUDA only.

    Returns:
        ``(x0, info)`` where ``info.nfe`` is the exact number of network evaluations per sample.
    """
    name = solver_name(solver)
    g = G.resolve(guidance, denoiser, bad)
    if timesteps is not None:
        if steps is not None or grid is not None:
            raise ValueError("give either timesteps or steps/grid, not both")
        ts = _check_grid(torch.as_tensor(timesteps), denoiser.schedule)
    else:
        ts = _check_grid(
            get_timesteps(denoiser.schedule, 25 if steps is None else steps, grid, shift), denoiser.schedule
        )
    if not torch.is_floating_point(noise):
        raise TypeError(f"noise must be a floating tensor, got {noise.dtype}")
    work_dtype = torch.promote_types(noise.dtype, torch.float32)
    engine = GuidedDenoiser(
        denoiser,
        g,
        cond=cond,
        bad=bad,
        bad_cond=bad_cond,
        model_dtype=noise.dtype,
        batch_branches=batch_branches,
        stack_models=stack_models,
        negative=negative,
        bad_negative=bad_negative,
        streams=streams,
        cuda_graph=cuda_graph,
    )

    def denoise(x: torch.Tensor, t: float) -> torch.Tensor:
        return engine(x, t).to(work_dtype)

    start = denoiser.schedule.terms(float(ts[0]))
    x = noise.to(work_dtype) * start.sigma
    grid_list = ts.tolist()
    use_fused = (x.is_cuda if fused is None else fused) and name in FUSED_SOLVERS
    if fused and name not in FUSED_SOLVERS:
        raise ValueError(f"solver {name!r} has no fused path; fused solvers: {', '.join(FUSED_SOLVERS)}")
    with torch.no_grad():
        if use_fused:
            out = fused_sample(engine, x, grid_list, name, callback, eta=eta, generator=generator)
        elif name == "dpmpp_2m_sde":
            out = dpmpp_2m_sde(denoise, x, grid_list, denoiser.schedule, callback, eta=eta, generator=generator)
        else:
            out = SOLVERS[name](denoise, x, grid_list, denoiser.schedule, callback)
    batch_calls = engine.nfe
    amg = getattr(denoiser, "amg_weight", None)
    info = SampleInfo(
        nfe=batch_calls,
        steps=len(grid_list) - 1,
        solver=name,
        guidance=g.to_dict(),
        timesteps=grid_list,
        nfe_by_role=dict(engine.nfe_by_role),
        forwards=engine.forwards,
        effective_strength=G.amg_effective_strength(g, amg) if amg is not None else None,
    )
    return out.to(noise.dtype), info
