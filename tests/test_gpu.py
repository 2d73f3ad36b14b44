"""GPU checks, skipped without CUDA: Triton kernels on the device, fused/graphed/streamed sampling vs eager.

Run them whenever a GPU is available (``python -m pytest -q tests/test_gpu.py``); CI machines have none.
"""

from __future__ import annotations

import pytest
import torch
from test_mmaudio import _inputs, _tiny
from test_pipeline import _tiny_model

from v2a_sampler import kernels as K
from v2a_sampler import solvers

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

DEVICE = "cuda"
#: Relative agreement asked of float32 GPU sampling against the eager path (reduction order differs on GPU).
RTOL32 = 1e-4


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL32) -> bool:
    return bool((a.float() - b.float()).abs().max() <= rtol * b.float().abs().max())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("numel", [1, 1023, 4097, 3 * 345 * 40])
def test_triton_guided_step_on_gpu_matches_reference(dtype, k, numel):
    g = torch.Generator(DEVICE).manual_seed(numel + k)
    x = torch.randn(numel, device=DEVICE, generator=g).to(dtype)
    preds = [torch.randn(numel, device=DEVICE, generator=g).to(dtype) for _ in range(k)]
    coeffs = [1.7, -0.7, 0.3, -0.3][:k]
    old = torch.randn(numel, device=DEVICE, generator=g).to(dtype)
    noise = torch.randn(numel, device=DEVICE, generator=g).to(dtype)
    args = (x, preds, coeffs, 0.9, -0.4, 0.8, 0.15, -0.05, old, 0.1, noise)
    ref = K.guided_step(*args, backend="torch")
    out = K.guided_step(*args, backend="triton")
    eps = torch.finfo(dtype).eps
    for o, r in zip(out, ref, strict=True):
        assert o.dtype == r.dtype and o.shape == r.shape
        assert _close(o, r, rtol=4 * eps)


def _v2a_case():
    good, bad = _tiny_model(0).to(DEVICE).eval(), _tiny_model(1).to(DEVICE).eval()
    frames = torch.rand(2, 50, 16, 16, 3, device=DEVICE)
    return good, bad, good.encode_conditions({"video": frames}), torch.randn(2, 16, 100, device=DEVICE)


def _mmaudio_case():
    good, bad = _tiny(seed=0).to(DEVICE), _tiny(seed=1).to(DEVICE)
    x, _, cond = _inputs(good, 2.0)
    return good, bad, {k: v.to(DEVICE) for k, v in cond.items()}, x.to(DEVICE)


@pytest.mark.parametrize("case", [_v2a_case, _mmaudio_case], ids=["v2a_flow", "mmaudio"])
@pytest.mark.parametrize("option", ["fused", "cuda_graph", "streams", "stack_models"])
@pytest.mark.parametrize("spec", ["cfg(4.5)", "hg"])
def test_gpu_sampling_paths_match_eager(case, option, spec):
    good, bad, cond, x = case()
    kw = dict(guidance=spec, bad=bad, solver="euler", steps=5)
    with torch.no_grad():
        ref, info_ref = solvers.sample(good, x, cond, fused=False, **kw)
        out, info = solvers.sample(good, x, cond, **{"fused": option == "fused", option: True, **kw})
    assert _close(out, ref)
    assert info.nfe == info_ref.nfe


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_sampling_on_gpu(dtype):
    good, bad, cond, x = _mmaudio_case()
    with torch.no_grad():
        ref, _ = solvers.sample(good, x, cond, guidance="hg", bad=bad, steps=5)
        out, _ = solvers.sample(
            good.to(dtype), x.to(dtype), {k: v.to(dtype) for k, v in cond.items()}, guidance="hg", bad=bad.to(dtype),
            steps=5,
        )  # fmt: skip
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert _close(out, ref, rtol=0.05)
