"""Parity with k-diffusion and diffusers: our solvers against the reference samplers' outputs stored by
``tools/kdiffusion_ref.py`` (exact Gaussian-mixture denoiser, EDM schedule, float64, fixed noise)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from v2a_sampler import denoisers as D
from v2a_sampler import solvers
from v2a_sampler.core.analytic import ConditionalGaussianMixture, GaussianMixture

FIXTURES = Path(__file__).parent / "fixtures" / "solvers"
#: Largest allowed difference to the reference sample (float64).
TOL = 1e-6
#: Solvers with a fixture; ``euler_edm`` without churn is also checked against k-diffusion's plain Euler.
PARITY = sorted(p.stem for p in FIXTURES.glob("*.safetensors"))


class ReplayNoise:
    """A noise source that returns a fixed sequence of tensors and records the interval each was asked for."""

    def __init__(self, bank: torch.Tensor) -> None:
        self.bank = bank
        self.asked: list[tuple[float, float]] = []

    def __call__(self, like: torch.Tensor, level: float, level_next: float) -> torch.Tensor:
        z = self.bank[len(self.asked)]
        self.asked.append((level, level_next))
        return z.to(like.dtype)


def _load(name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(FIXTURES / f"{name}.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    return tensors, meta


def _denoiser(meta: dict[str, Any]) -> D.FnDenoiser:
    spec = meta["mixture"]
    mixture = GaussianMixture(spec["weights"], torch.tensor(spec["means"]), torch.tensor(spec["covs"]))
    return ConditionalGaussianMixture([mixture]).denoiser("x0", D.EDMSchedule())


def _run(solver: str, tensors: dict[str, torch.Tensor], k: int, den: D.FnDenoiser, options: dict[str, float],
         seeds: list[int] | None = None, **kw: Any) -> tuple[torch.Tensor, ReplayNoise]:  # fmt: skip
    """Our solver on case ``k``: replaying its noise bank, or with ``seeds`` on the same Brownian tree."""
    noise = ReplayNoise(tensors[f"{k}/bank"])
    source = noise if seeds is None else solvers.BrownianTreeNoise(seeds)
    out, _ = solvers.sample(den, tensors[f"{k}/noise"], guidance="none", solver=solver,
                            timesteps=tensors[f"{k}/sigmas"], generator=source, **options, **kw)  # fmt: skip
    return out, noise


@pytest.mark.parametrize("solver", PARITY)
def test_solver_equals_its_reference(solver: str) -> None:
    tensors, meta = _load(solver)
    den = _denoiser(meta)
    assert meta["solver"] == solver and len(meta["cases"]) >= 2
    for k, case in enumerate(meta["cases"]):
        out, noise = _run(solver, tensors, k, den, case["options"], case["brownian_seeds"])
        ref = tensors[f"{k}/out"]
        err = (out - ref).abs().max().item()
        assert err < TOL, (solver, case, err)
        if case["brownian_seeds"] is not None:
            continue
        # the same noise, asked for over the same intervals (noise levels u = sigma / (1 + sigma) on EDM)
        intervals = tensors[f"{k}/intervals"].reshape(-1, 2)
        assert len(noise.asked) == intervals.shape[0], (solver, case)
        for (u, u_next), (a, b) in zip(noise.asked, intervals.tolist(), strict=True):
            if not math.isnan(a):
                assert u == pytest.approx(a / (1 + a), rel=1e-12) and u_next == pytest.approx(b / (1 + b), rel=1e-12)


def test_euler_edm_without_churn_is_euler_and_k_diffusions_euler() -> None:
    tensors, meta = _load("euler")
    den = _denoiser(meta)
    for k in range(len(meta["cases"])):
        ours, _ = _run("euler", tensors, k, den, {})
        edm, noise = _run("euler_edm", tensors, k, den, {})
        assert torch.equal(ours, edm) and not noise.asked
        assert (edm - tensors[f"{k}/out"]).abs().max().item() < TOL


def test_k_diffusion_style_callback() -> None:
    tensors, meta = _load("euler_edm")
    den = _denoiser(meta)
    seen: list[dict[str, Any]] = []
    _run("euler_edm", tensors, 0, den, meta["cases"][0]["options"], callback=seen.append,
         callback_style="k-diffusion")  # fmt: skip
    assert [sorted(e) for e in seen] == [["denoised", "i", "sigma", "sigma_hat", "x"]] * len(seen)
    assert [e["i"] for e in seen] == list(range(len(tensors["0/cb_sigma"])))
    assert torch.allclose(
        torch.tensor([e["sigma"] for e in seen], dtype=torch.float64), tensors["0/cb_sigma"], rtol=1e-12, atol=0
    )
    sigma_hat = torch.tensor([e["sigma_hat"] for e in seen], dtype=torch.float64)
    assert torch.allclose(sigma_hat, tensors["0/cb_sigma_hat"], rtol=1e-12, atol=0)
    assert (sigma_hat > tensors["0/cb_sigma"]).any()  # the case churns
    assert (torch.stack([e["x"] for e in seen]) - tensors["0/cb_x"]).abs().max() < TOL
    assert (torch.stack([e["denoised"] for e in seen]) - tensors["0/cb_denoised"]).abs().max() < TOL


def test_karras_grid_equals_k_diffusions() -> None:
    """The fixtures' grids are k-diffusion's ``get_sigmas_karras`` (float64); ours with the same rho equals them."""
    for name in PARITY:
        tensors, meta = _load(name)
        for k, case in enumerate(meta["cases"]):
            sigmas = tensors[f"{k}/sigmas"]
            ends_at_zero = sigmas[-1] == 0
            n = len(sigmas) - 1 if ends_at_zero else len(sigmas)
            hi, lo = float(sigmas[0]), float(sigmas[n - 1])
            rho = {"karras_to_zero": 7.0, "karras_to_sigma_min": 3.0}[case["grid"]]
            ours = solvers.get_timesteps(D.EDMSchedule(), n, "karras", rho=rho, sigma_min=lo, sigma_max=hi)
            assert torch.allclose(ours[:n], sigmas[:n], rtol=1e-12, atol=0), (name, k)
