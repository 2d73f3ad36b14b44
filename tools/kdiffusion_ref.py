"""Reference samples of k-diffusion's and diffusers' samplers, written as small fixtures for the solver parity tests.

The reference libraries are not dependencies of this project: run this script once, in a throwaway environment,
and commit what it writes (``tests/fixtures/solvers/<solver>.safetensors``); ``tests/test_solver_parity.py``
compares our solvers against those files to 1e-6 in CI, where neither library is installed.

Each case runs a reference sampler in float64 on the exact denoiser of a three-component Gaussian mixture in 2D
(:data:`MIXTURE`, ``v2a_sampler.core.analytic``) with an EDM schedule (``x = x0 + sigma eps``, time = sigma), from
fixed noise, and stores: the sigma grid, the start noise, the intervals ``(sigma, sigma_next)`` the sampler asked
noise for and the final sample. The noise is either a fixed bank (every tensor the sampler consumed is stored, in
order; NaN intervals for EDM's churn, which k-diffusion draws with ``randn_like``): our solver replays it and must
ask for it over the same intervals; or a Brownian path, our ``BrownianTreeNoise`` (seeds in the metadata) plugged
into k-diffusion as its ``noise_sampler`` on the noise level ``sigma / (1 + sigma)``: our solver runs with the same
tree. One case of ``euler_edm`` also records k-diffusion's callback dicts.

Versions used for the committed fixtures (Python 3.11, CPU):

* k-diffusion 0.1.1.post1 (PyPI; its ``sampling.py`` is identical to crowsonkb/k-diffusion at commit
  4601bf085320592473f681a62808ed873d17fad5), torchsde 0.2.6, torchdiffeq 0.2.5, scipy 1.17.1, tqdm 4.70.1;
* diffusers 0.42.1 (``UniPCMultistepScheduler``);
* torch 2.13.0 (CPU), numpy 2.4.6.

Set-up, once::

    python -m venv /tmp/refenv && . /tmp/refenv/bin/activate
    pip install torch==2.13.0 safetensors diffusers==0.42.1 scipy torchsde torchdiffeq tqdm
    pip install --no-deps k-diffusion==0.1.1.post1
    python tools/kdiffusion_ref.py            # writes tests/fixtures/solvers/*.safetensors

k-diffusion's package ``__init__`` imports its training stack (torchvision, kornia, clean-fid, ...); only
``k_diffusion/sampling.py`` is needed, so it is imported on its own, with ``k_diffusion.utils`` standing in by the one
function ``sampling.py`` uses from it (``append_dims``, copied from upstream).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import math
import sys
import types
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from v2a_sampler.core.analytic import ConditionalGaussianMixture, GaussianMixture  # noqa: E402
from v2a_sampler.core.noise import BrownianTreeNoise  # noqa: E402

FIXTURE_DIR = ROOT / "tests" / "fixtures" / "solvers"
#: Rows and dimensions of every case.
ROWS, DIM = 5, 2
#: Seeds of the start noise and of the noise bank.
NOISE_SEED, BANK_SEED = 0, 1
#: Noise tensors available to one case (more than any sampler draws on these grids).
BANK_SIZE = 40
#: The data: three Gaussians in 2D with different shapes and weights (stored in every fixture's metadata).
MIXTURE_SPEC = {
    "weights": [0.5, 0.3, 0.2],
    "means": [[1.0, -0.5], [-2.0, 1.0], [0.5, 2.0]],
    "covs": [[[0.3, 0.2], [0.2, 2.0]], [[0.5, -0.1], [-0.1, 0.2]], [[0.1, 0.0], [0.0, 0.1]]],
}
MIXTURE = ConditionalGaussianMixture(
    [GaussianMixture(MIXTURE_SPEC["weights"], torch.tensor(MIXTURE_SPEC["means"]), torch.tensor(MIXTURE_SPEC["covs"]))]
)
#: The grids: Karras et al.'s ``(sigma_max, sigma_min, rho, steps)``, with or without a last step to sigma = 0.
GRIDS = {
    "karras_to_zero": (80.0, 0.002, 7.0, 8, True),
    "karras_to_sigma_min": (20.0, 0.05, 3.0, 6, False),
}


def load_k_diffusion_sampling() -> types.ModuleType:
    """``k_diffusion.sampling`` without the package's ``__init__`` (see the module docstring)."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("k-diffusion is not installed (pip install --no-deps k-diffusion==0.1.1.post1)")
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType("k_diffusion.utils")

    def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:  # k_diffusion/utils.py, verbatim
        dims_to_append = target_dims - x.ndim
        if dims_to_append < 0:
            raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
        return x[(...,) + (None,) * dims_to_append]

    utils.append_dims = append_dims  # type: ignore[attr-defined]
    package.utils = utils  # type: ignore[attr-defined]
    sys.modules["k_diffusion"], sys.modules["k_diffusion.utils"] = package, utils
    return importlib.import_module("k_diffusion.sampling")


def denoised(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The exact ``E[x0 | x0 + sigma eps = x]`` of :data:`MIXTURE`."""
    return MIXTURE.unconditional.posterior_mean(x, 1.0, float(sigma))


class Bank:
    """Hands out a fixed sequence of noise tensors and records the interval each was asked for."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(BANK_SEED)
        self.noise = torch.randn(BANK_SIZE, ROWS, DIM, generator=g, dtype=torch.float64)
        self.intervals: list[tuple[float, float]] = []

    def sampler(self, sigma: Any, sigma_next: Any) -> torch.Tensor:
        """A k-diffusion ``noise_sampler``."""
        return self._next(float(sigma), float(sigma_next))

    def _next(self, a: float, b: float) -> torch.Tensor:
        k = len(self.intervals)
        if k >= BANK_SIZE:
            raise RuntimeError("noise bank exhausted")
        self.intervals.append((a, b))
        return self.noise[k].clone()

    def used(self) -> dict[str, torch.Tensor]:
        k = len(self.intervals)
        return {"bank": self.noise[:k].clone(), "intervals": torch.tensor(self.intervals, dtype=torch.float64)}


def grid(name: str, k_sampling: types.ModuleType) -> torch.Tensor:
    """The float64 sigmas of a grid, by k-diffusion's ``get_sigmas_karras``."""
    sigma_max, sigma_min, rho, steps, to_zero = GRIDS[name]
    sigmas = k_sampling.get_sigmas_karras(steps, sigma_min, sigma_max, rho=rho)
    return sigmas if to_zero else sigmas[:-1]


def start_noise() -> torch.Tensor:
    return torch.randn(ROWS, DIM, generator=torch.Generator().manual_seed(NOISE_SEED), dtype=torch.float64)


def run_k_diffusion(
    k_sampling: types.ModuleType,
    fn_name: str,
    sigmas: torch.Tensor,
    settings: dict[str, Any],
    churn: bool = False,
    brownian: bool = False,
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """One k-diffusion sampler run: its output, the noise it drew and its callback dicts."""
    bank, events = Bank(), []
    fn = getattr(k_sampling, fn_name)
    if brownian:
        tree = BrownianTreeNoise(BROWNIAN_SEEDS)
        like = torch.zeros(ROWS, DIM)
        intervals: list[tuple[float, float]] = []

        def brownian_sampler(sigma: Any, sigma_next: Any) -> torch.Tensor:
            a, b = float(sigma), float(sigma_next)
            intervals.append((a, b))
            return tree(like, a / (1.0 + a), b / (1.0 + b))

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return denoised(x, float(sigma[0]))

    kwargs = dict(settings)
    if "noise_sampler" in inspect.signature(fn).parameters:
        kwargs["noise_sampler"] = brownian_sampler if brownian else bank.sampler
    real_randn_like = torch.randn_like
    drawn: list[torch.Tensor] = []
    if churn:  # k-diffusion draws EDM's churn noise with torch.randn_like every step, used or not

        def randn_like(x: torch.Tensor, **kw: Any) -> torch.Tensor:
            z = bank.noise[len(drawn)].clone()
            drawn.append(z)
            return z

        torch.randn_like = randn_like  # type: ignore[assignment]
    try:
        x = fn(model, start_noise() * sigmas[0], sigmas, callback=events.append, disable=True, **kwargs)
    finally:
        torch.randn_like = real_randn_like  # type: ignore[assignment]
    out = {"out": x}
    if churn:  # keep the draws of the steps that churned (gamma > 0), in order
        n = len(sigmas) - 1
        gammas = [
            min(settings.get("s_churn", 0.0) / n, 2**0.5 - 1)
            if settings.get("s_tmin", 0.0) <= float(sigmas[i]) <= settings.get("s_tmax", math.inf)
            else 0.0
            for i in range(n)
        ]
        used = [z for z, g in zip(drawn, gammas, strict=True) if g > 0]
        out |= {
            "bank": torch.stack(used),
            "intervals": torch.full((len(used), 2), math.nan, dtype=torch.float64),
        }
    elif brownian:
        out |= {"bank": torch.zeros(0, ROWS, DIM), "intervals": torch.tensor(intervals).reshape(-1, 2)}
    elif settings.get("eta", 1.0) == 0:  # some samplers draw noise at eta = 0 and scale it by sigma_up = 0
        out |= {"bank": torch.zeros(0, ROWS, DIM), "intervals": torch.zeros(0, 2)}
    else:
        out |= bank.used()
    return out, events


def run_unipc(sigmas: torch.Tensor, order: int) -> dict[str, torch.Tensor]:
    """diffusers' ``UniPCMultistepScheduler`` (bh2, data prediction) on our sigma grid, in VP scaling
    (``x_vp = x / sqrt(1 + sigma^2)``, the scheduler's convention for VE sigmas) with ``x0`` as the model output."""
    from diffusers import UniPCMultistepScheduler

    steps = len(sigmas) - 1
    sched = UniPCMultistepScheduler(solver_order=order, solver_type="bh2", prediction_type="sample",
                                    predict_x0=True, lower_order_final=True)  # fmt: skip
    sched.set_timesteps(steps)
    sched.sigmas = sigmas.clone()
    sched.timesteps = torch.arange(steps - 1, -1, -1)
    sched.num_inference_steps = steps

    def vp_scale(sigma: float) -> float:
        return 1.0 / math.sqrt(1.0 + sigma * sigma)

    x = start_noise() * sigmas[0] * vp_scale(float(sigmas[0]))
    for i in range(steps):
        sigma = float(sigmas[i])
        x0 = denoised(x / vp_scale(sigma), sigma)
        x = sched.step(x0, sched.timesteps[i], x).prev_sample
    out = x / vp_scale(float(sigmas[-1]))
    return {"out": out, "bank": torch.zeros(0, ROWS, DIM), "intervals": torch.zeros(0, 2)}


#: Seeds of the per-row Brownian trees of the cases driven by a Brownian path.
BROWNIAN_SEEDS = [11, 12, 13, 14, 15]


def case(grid_name: str, options: dict[str, float], reference: str, settings: dict[str, Any] | None = None,
         noise: str = "bank") -> dict[str, Any]:  # fmt: skip
    """One case: a grid, our solver's options, the reference (``k:NAME`` is k-diffusion's ``sampling.NAME``,
    ``unipc`` diffusers' scheduler) with its settings (default: our options), and the noise: ``bank`` (fixed
    draws, replayed by the test) or ``brownian`` (our ``BrownianTreeNoise(BROWNIAN_SEEDS)`` on the noise level
    ``sigma / (1 + sigma)`` as k-diffusion's ``noise_sampler``, which its own BrownianTreeNoiseSampler plays by default;
    the test drives our solver with the same tree)."""
    return {"grid": grid_name, "options": options, "reference": reference,
            "settings": dict(options) if settings is None else settings, "noise": noise}  # fmt: skip


Z, M = "karras_to_zero", "karras_to_sigma_min"
#: ``solver -> cases``.
CASES: dict[str, list[dict[str, Any]]] = {
    "euler": [case(Z, {}, "k:sample_euler"), case(M, {}, "k:sample_euler")],
    "euler_edm": [
        case(Z, {"s_churn": 2.0, "s_tmin": 0.05, "s_tmax": 10.0, "s_noise": 1.003}, "k:sample_euler"),
        case(M, {"s_churn": 0.5}, "k:sample_euler"),
    ],
    "euler_a": [
        case(Z, {}, "k:sample_euler_ancestral"),
        case(M, {"eta": 0.6, "s_noise": 0.9}, "k:sample_euler_ancestral"),
        case(Z, {}, "k:sample_euler_ancestral", noise="brownian"),
    ],
    "heun_edm": [
        case(Z, {}, "k:sample_heun"),
        case(Z, {"s_churn": 1.5, "s_tmin": 0.1, "s_tmax": 20.0, "s_noise": 1.002}, "k:sample_heun"),
        case(M, {"s_churn": 0.8}, "k:sample_heun"),
    ],
    "dpmpp_2m": [case(Z, {}, "k:sample_dpmpp_2m"), case(M, {}, "k:sample_dpmpp_2m")],
    "dpmpp_2m_sde": [
        case(Z, {}, "k:sample_dpmpp_2m_sde"),
        case(M, {"eta": 0.5, "s_noise": 0.9}, "k:sample_dpmpp_2m_sde"),
        case(Z, {}, "k:sample_dpmpp_2m_sde", noise="brownian"),
    ],
    "dpmpp_2m_sde_heun": [
        case(Z, {}, "k:sample_dpmpp_2m_sde", {"solver_type": "heun"}),
        case(M, {"eta": 0.7}, "k:sample_dpmpp_2m_sde", {"solver_type": "heun", "eta": 0.7}),
        case(Z, {"eta": 0.0}, "k:sample_dpmpp_2m_sde", {"solver_type": "heun", "eta": 0.0}),
        case(M, {}, "k:sample_dpmpp_2m_sde", {"solver_type": "heun"}, noise="brownian"),
    ],
    "dpmpp_3m_sde": [
        case(Z, {}, "k:sample_dpmpp_3m_sde"),
        case(M, {"eta": 0.5, "s_noise": 0.9}, "k:sample_dpmpp_3m_sde"),
        case(Z, {"eta": 0.0}, "k:sample_dpmpp_3m_sde"),
        case(Z, {}, "k:sample_dpmpp_3m_sde", noise="brownian"),
    ],
    # its two noises per step overlap ([t, mid] and [t, s]): only a Brownian path gives both consistently
    "dpmpp_sde": [
        case(Z, {}, "k:sample_dpmpp_sde", noise="brownian"),
        case(M, {"eta": 0.6, "s_noise": 0.9, "r": 0.3}, "k:sample_dpmpp_sde", noise="brownian"),
        case(Z, {"eta": 0.0}, "k:sample_dpmpp_sde"),
    ],
    "dpmpp_2s_ancestral": [
        case(Z, {}, "k:sample_dpmpp_2s_ancestral"),
        case(M, {"eta": 0.5, "s_noise": 0.9}, "k:sample_dpmpp_2s_ancestral"),
        case(M, {}, "k:sample_dpmpp_2s_ancestral", noise="brownian"),
    ],
    "unipc": [
        case(Z, {}, "unipc", {"order": 2}),
        case(Z, {"order": 3}, "unipc"),
        case(M, {"order": 1}, "unipc"),
        case(M, {"order": 3}, "unipc"),
    ],
}
#: The case whose k-diffusion callback dicts are stored (solver, case index).
CALLBACK_CASE = ("euler_edm", 0)


def save(name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
    path = FIXTURE_DIR / f"{name}.safetensors"
    flat = {k: v.detach().to(torch.float64).contiguous() for k, v in tensors.items()}
    save_file(flat, str(path), metadata={"meta": json.dumps(meta)})
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size / 1e3:.1f} kB)")
    return path


def main() -> None:
    torch.set_default_dtype(torch.float64)  # k-diffusion's grids and new tensors in float64
    k_sampling = load_k_diffusion_sampling()
    import diffusers

    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                "k_diffusion": importlib.metadata.version("k-diffusion")}  # fmt: skip
    for solver, cases in CASES.items():
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {"solver": solver, "versions": versions, "mixture": MIXTURE_SPEC, "cases": []}
        for k, spec in enumerate(cases):
            sigmas = grid(spec["grid"], k_sampling)
            settings, brownian = spec["settings"], spec["noise"] == "brownian"
            if spec["reference"] == "unipc":
                result, events = run_unipc(sigmas, settings.get("order", 2)), []
                ref_name = "diffusers.UniPCMultistepScheduler(solver_type='bh2', predict_x0=True)"
            else:
                fn_name = spec["reference"].removeprefix("k:")
                churn = "s_churn" in settings
                result, events = run_k_diffusion(k_sampling, fn_name, sigmas, settings, churn, brownian)
                ref_name = f"k_diffusion.sampling.{fn_name}"
            tensors |= {
                f"{k}/sigmas": sigmas,
                f"{k}/noise": start_noise(),
                **{f"{k}/{n}": v for n, v in result.items()},
            }
            if (solver, k) == CALLBACK_CASE:
                tensors[f"{k}/cb_sigma"] = torch.tensor([float(e["sigma"]) for e in events])
                tensors[f"{k}/cb_sigma_hat"] = torch.tensor([float(e["sigma_hat"]) for e in events])
                tensors[f"{k}/cb_x"] = torch.stack([e["x"] for e in events])
                tensors[f"{k}/cb_denoised"] = torch.stack([e["denoised"] for e in events])
            meta["cases"].append(
                {**spec, "reference": ref_name, "brownian_seeds": BROWNIAN_SEEDS if brownian else None}
            )
        save(solver, tensors, meta)


if __name__ == "__main__":
    main()
