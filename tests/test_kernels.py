"""Kernels: the fused guided step and ``combine``, their torch references, dispatch, and the Triton kernels.

The Triton kernels run on CPU through the Triton interpreter, which must be switched on (``TRITON_INTERPRET=1``)
before the kernels are defined. So that the rest of the suite keeps its normal process, they run in ONE child
process: this file executed as a script reads the generated inputs, runs every case through
``v2a_sampler.kernels`` with the triton backend forced and writes the outputs back. The parametrized tests below
check those outputs against the references computed here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
import torch

from v2a_sampler import denoisers as D
from v2a_sampler import kernels as K
from v2a_sampler import solvers

R = K.reference

#: Wall-clock limit for the interpreter child process (it takes a few seconds on 2 cores).
CHILD_TIMEOUT_S = 300
#: Element counts that exercise masking: a single element, a partial block, one short of a block, one past four.
ODD_SIZES = [(1,), (7,), (1023,), (4097,)]
#: Multi-dimensional shapes (210 and 4059 elements).
MULTI_DIM = [(2, 3, 5, 7), (3, 33, 41)]
SHAPES = ODD_SIZES + MULTI_DIM
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
#: (has x0_old, has noise) for Euler/DDIM, DPM++ 2M, the SDE without history, and DPM++ 2M SDE.
OPTIONALS = [(False, False), (True, False), (False, True), (True, True)]
#: Allowed deviation from the exact (float64) result of the same inputs: the final rounding to the output dtype
#: (at most eps * |value|) plus a small absolute term for float32 accumulation of O(10) magnitudes.
TOLERANCE = {
    torch.float16: (2.0**-10, 1e-4),
    torch.bfloat16: (2.0**-7, 1e-4),
    torch.float32: (2.0**-22, 1e-4),
    torch.float64: (1e-13, 1e-12),
}


@pytest.fixture(autouse=True)
def _default_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start from the default backend choice, whatever ``$V2A_KERNELS`` the suite runs under."""
    monkeypatch.delenv(K.BACKEND_ENV, raising=False)


def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


needs_triton = pytest.mark.skipif(not _triton_importable(), reason="triton is not installed")


# ---------------------------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """One kernel call: which op, operand shapes/dtypes, and how the triton backend is selected."""

    op: str  # "step" or "combine"
    shape: tuple[int, ...]
    x_dtype: torch.dtype
    pred_dtypes: tuple[torch.dtype, ...]
    has_old: bool = False
    has_noise: bool = False
    out_dtype: torch.dtype | None = None  # combine only
    select: str = "argument"  # "argument": backend="triton"; "env": V2A_KERNELS=triton
    noncontiguous: bool = False

    @property
    def k(self) -> int:
        return len(self.pred_dtypes)

    @property
    def id(self) -> str:
        dt = lambda d: str(d).removeprefix("torch.")  # noqa: E731
        preds = dt(self.pred_dtypes[0]) if len(set(self.pred_dtypes)) == 1 else "+".join(map(dt, self.pred_dtypes))
        parts = [self.op, "x".join(map(str, self.shape)) or "scalar", f"k{self.k}", preds]
        if self.op == "step":
            parts += [f"x_{dt(self.x_dtype)}", f"old{int(self.has_old)}", f"noise{int(self.has_noise)}"]
        if self.out_dtype is not None:
            parts.append(f"out_{dt(self.out_dtype)}")
        if self.select != "argument":
            parts.append(self.select)
        if self.noncontiguous:
            parts.append("strided")
        return "-".join(parts)


def _cases() -> list[Case]:
    cases = []
    for si, shape in enumerate(SHAPES):
        for di, dtype in enumerate(DTYPES):
            for k in range(1, 5):
                # every (k, optional operands) pair for every dtype, spread over the shapes
                has_old, has_noise = OPTIONALS[(k + si + di) % len(OPTIONALS)]
                cases.append(Case("step", shape, dtype, (dtype,) * k, has_old, has_noise))
                cases.append(Case("combine", shape, dtype, (dtype,) * k))
    for dtype in DTYPES:
        for k in range(1, 5):
            for has_old, has_noise in OPTIONALS:
                cases.append(Case("step", (37,), dtype, (dtype,) * k, has_old, has_noise))
    bf, h, f, d = torch.bfloat16, torch.float16, torch.float32, torch.float64
    cases += [
        # the engine's usual mix: float32 state, bfloat16 network outputs
        Case("step", (2, 8, 65), f, (bf, bf, bf), True, False),
        Case("step", (5, 129), f, (h, bf), False, True),
        Case("step", (301,), h, (f, f), True, True),  # accumulates in float32, written back as float16
        Case("step", (301,), f, (bf, d), True, False),  # one float64 operand: float64 accumulation
        Case("combine", (2, 8, 65), f, (bf, h, f)),
        Case("combine", (300,), f, (bf, bf), out_dtype=bf),
        Case("combine", (300,), f, (h, h, h), out_dtype=f),
        # more predictions than one launch takes: pre-reduced in groups of MAX_BRANCHES
        Case("step", (513,), f, (f,) * 8, True, True),
        Case("step", (513,), f, (bf,) * 11, True, False),
        Case("combine", (513,), f, (f,) * 9),
        Case("combine", (513,), f, (h,) * 17),
        # edge shapes
        Case("step", (), f, (f, f), True, True),
        Case("step", (0, 5), f, (f, f), True, True),
        Case("combine", (3, 0), f, (f,)),
        # non-contiguous operands (transposed views)
        Case("step", (33, 17), f, (bf, f, f), True, True, noncontiguous=True),
        Case("combine", (33, 17), f, (f, bf), noncontiguous=True),
        # backend chosen through the environment variable
        Case("step", (1025,), f, (bf, bf), True, True, select="env"),
        Case("combine", (1025,), f, (bf, bf), select="env"),
    ]
    return cases


CASES = _cases()


def _make_inputs(case: Case, seed: int) -> dict[str, Any]:
    """Seeded operands and scalars of a case (values O(1), coefficients like CFG weights)."""
    gen = torch.Generator().manual_seed(seed)

    def tensor(dtype: torch.dtype) -> torch.Tensor:
        if case.noncontiguous:
            return torch.randn(tuple(reversed(case.shape)), generator=gen, dtype=torch.float64).to(dtype).mT
        return torch.randn(case.shape, generator=gen, dtype=torch.float64).to(dtype)

    def scalars(n: int) -> list[float]:
        return (3.0 * torch.randn(n, generator=gen, dtype=torch.float64)).tolist()

    inputs: dict[str, Any] = {
        "x": tensor(case.x_dtype),
        "preds": [tensor(d) for d in case.pred_dtypes],
        "coeffs": scalars(case.k),
    }
    a, b, u_x, u_0, u_old, u_noise = scalars(6)
    inputs.update(a=a, b=b, u_x=u_x, u_0=u_0)
    if case.has_old:
        inputs.update(u_old=u_old, x0_old=tensor(case.x_dtype))
    if case.has_noise:
        inputs.update(u_noise=u_noise, noise=tensor(case.x_dtype))
    return inputs


def _exact(case: Case, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The float64 result of a case's math on its (already rounded) inputs."""
    d = lambda t: t.to(torch.float64)  # noqa: E731
    g = sum(c * d(p) for c, p in zip(inputs["coeffs"], inputs["preds"], strict=True))
    if case.op == "combine":
        return {"out": g}
    x = d(inputs["x"])
    x0 = inputs["a"] * x + inputs["b"] * g
    x_next = inputs["u_x"] * x + inputs["u_0"] * x0
    if case.has_old:
        x_next = x_next + inputs["u_old"] * d(inputs["x0_old"])
    if case.has_noise:
        x_next = x_next + inputs["u_noise"] * d(inputs["noise"])
    return {"x0": x0, "x_next": x_next}


def _run(case: Case, inputs: dict[str, Any], backend: str | None) -> dict[str, torch.Tensor]:
    """Call the dispatched op of a case."""
    if case.op == "combine":
        return {"out": K.combine(inputs["preds"], inputs["coeffs"], case.out_dtype, backend=backend)}
    kw = {k: v for k, v in inputs.items() if k not in ("x", "preds", "coeffs")}
    x0, x_next = K.guided_step(inputs["x"], inputs["preds"], inputs["coeffs"], backend=backend, **kw)
    return {"x0": x0, "x_next": x_next}


def _expected_dtype(case: Case) -> torch.dtype:
    if case.op == "step":
        return case.x_dtype
    if case.out_dtype is not None:
        return case.out_dtype
    return torch.float64 if torch.float64 in case.pred_dtypes else torch.float32


def _assert_exact_within_rounding(case: Case, got: dict[str, torch.Tensor], exact: dict[str, torch.Tensor]) -> None:
    """Outputs have the documented dtype/shape and deviate from the float64 math by at most one output rounding."""
    out_dtype = _expected_dtype(case)
    rtol, atol = TOLERANCE[out_dtype]
    assert set(got) == set(exact)
    for name, value in got.items():
        assert value.dtype == out_dtype, (name, value.dtype)
        assert value.shape == torch.Size(case.shape), (name, value.shape)
        torch.testing.assert_close(value.to(torch.float64), exact[name], rtol=rtol, atol=atol, msg=name)


# ---------------------------------------------------------------------------------------------------------------
# Interpreter child process
# ---------------------------------------------------------------------------------------------------------------


def _child_main(in_path: str, out_path: str) -> None:
    """Child process entry point: run every case with the triton backend forced, record outputs or errors."""
    from v2a_sampler.kernels import triton_guided

    payload = torch.load(in_path)
    results: dict[str, Any] = {"interpreted": triton_guided.is_interpreted(), "cases": {}, "probes": {}}
    for case in CASES:
        inputs = payload[case.id]
        tensors = [inputs["x"], *inputs["preds"]]
        try:
            if case.select == "env":
                os.environ[K.BACKEND_ENV] = "triton"
                backend = K.resolve_backend(tensors)
                out = _run(case, inputs, None)
            else:
                os.environ.pop(K.BACKEND_ENV, None)
                backend = K.resolve_backend(tensors, "triton")
                out = _run(case, inputs, "triton")
            results["cases"][case.id] = {"backend": backend, "out": out}
        except Exception as exc:  # reported per case by the parent
            results["cases"][case.id] = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            os.environ.pop(K.BACKEND_ENV, None)
    x = torch.zeros(10)
    probes: dict[str, Callable[[], Any]] = {
        "auto_on_cpu": lambda: K.resolve_backend([x], "auto"),
        "shape_mismatch": lambda: K.guided_step(
            x, [x, torch.zeros(11)], [1.0, 2.0], 0.0, 1.0, 0.0, 1.0, backend="triton"
        ),
        "k_mismatch": lambda: K.guided_step(x, [x, x], [1.0], 0.0, 1.0, 0.0, 1.0, backend="triton"),
        "old_shape": lambda: K.guided_step(
            x, [x], [1.0], 0.0, 1.0, 0.0, 1.0, u_old=1.0, x0_old=torch.zeros(2, 5), backend="triton"
        ),
        "combine_shape": lambda: K.combine([x, torch.zeros(5, 2)], [1.0, 1.0], backend="triton"),
        "combine_k": lambda: K.combine([x], [1.0, 2.0], backend="triton"),
        "bad_block": lambda: triton_guided.guided_step(x, [x], [1.0], 0.0, 1.0, 0.0, 1.0, block=1000),
        "small_block": lambda: triton_guided.guided_step(
            torch.arange(1000.0), [torch.ones(1000)], [2.0], 1.0, 1.0, 0.5, 1.0, block=64
        ),
    }
    for name, probe in probes.items():
        try:
            results["probes"][name] = {"value": probe()}
        except Exception as exc:
            results["probes"][name] = {"error": type(exc).__name__, "message": str(exc)}
    torch.save(results, out_path)


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Inputs of every case and the outputs the Triton kernels produced for them in the interpreter child."""
    if not _triton_importable():
        pytest.skip("triton is not installed")
    tmp = tmp_path_factory.mktemp("kernels")
    payload = {case.id: _make_inputs(case, seed) for seed, case in enumerate(CASES)}
    torch.save(payload, tmp / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if k != K.BACKEND_ENV}
    env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp / "inputs.pt"), str(tmp / "outputs.pt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    assert proc.returncode == 0, f"interpreter child failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    results = torch.load(tmp / "outputs.pt")
    results["inputs"] = payload
    return results


def test_case_ids_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


@needs_triton
def test_child_ran_interpreted(interpreted: dict[str, Any]) -> None:
    assert interpreted["interpreted"] is True
    assert set(interpreted["cases"]) == {c.id for c in CASES}


@needs_triton
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_triton_matches_reference(case: Case, interpreted: dict[str, Any]) -> None:
    """The Triton kernel (interpreted) agrees with the torch reference and with the exact float64 math."""
    result = interpreted["cases"][case.id]
    assert "error" not in result, result.get("error")
    assert result["backend"] == "triton"
    inputs = interpreted["inputs"][case.id]
    got = result["out"]
    exact = _exact(case, inputs)
    _assert_exact_within_rounding(case, got, exact)
    ref = _run(case, inputs, "torch")
    _assert_exact_within_rounding(case, ref, exact)
    rtol, atol = TOLERANCE[_expected_dtype(case)]
    for name in got:
        # both round the same float32/float64 value: at most one unit in the last place apart
        torch.testing.assert_close(got[name], ref[name], rtol=rtol, atol=atol, msg=name)


@needs_triton
def test_triton_auto_stays_on_torch_for_cpu_tensors(interpreted: dict[str, Any]) -> None:
    assert interpreted["probes"]["auto_on_cpu"] == {"value": "torch"}


@needs_triton
@pytest.mark.parametrize(
    "probe, error, fragment",
    [
        ("shape_mismatch", "ValueError", "shape mismatch, preds[1] has (11,) but x has (10,)"),
        ("k_mismatch", "ValueError", "2 predictions but 1 coefficients"),
        ("old_shape", "ValueError", "x0_old has (2, 5)"),
        ("combine_shape", "ValueError", "shape mismatch, preds[1] has (5, 2) but preds[0] has (10,)"),
        ("combine_k", "ValueError", "1 predictions but 2 coefficients"),
        ("bad_block", "ValueError", "power of two"),
    ],
)
def test_triton_errors(interpreted: dict[str, Any], probe: str, error: str, fragment: str) -> None:
    """Bad operands are rejected before any launch (a launch would read out of bounds)."""
    result = interpreted["probes"][probe]
    assert result.get("error") == error, result
    assert fragment in result["message"]


@needs_triton
def test_triton_many_programs(interpreted: dict[str, Any]) -> None:
    """16 programs of 64 elements, the last one partly masked: every element written exactly as computed."""
    x0, x_next = interpreted["probes"]["small_block"]["value"]
    x = torch.arange(1000.0)
    torch.testing.assert_close(x0, x + 2.0, rtol=0, atol=0)
    torch.testing.assert_close(x_next, 0.5 * x + x0, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# Reference (no triton needed)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.op == "step" and c.select == "argument"][::7], ids=lambda c: c.id
)
def test_reference_within_rounding_of_exact(case: Case) -> None:
    inputs = _make_inputs(case, 1234)
    _assert_exact_within_rounding(case, _run(case, inputs, "torch"), _exact(case, inputs))


def test_reference_accumulates_in_float32_for_half_inputs() -> None:
    """Half-precision accumulation would lose the small term entirely: 2048 + 1 is not representable in fp16."""
    big = torch.full((4,), 2048.0, dtype=torch.float16)
    one = torch.ones(4, dtype=torch.float16)
    x0, x_next = R.guided_step_reference(big, [big, one, big], [1.0, 1.0, -1.0], 0.0, 1.0, 0.0, 1.0)
    torch.testing.assert_close(x0, one, rtol=0, atol=0)
    assert R.combine([big, one, big], [1.0, 1.0, -1.0]).tolist() == [1.0] * 4


def test_reference_keeps_float64() -> None:
    x = torch.full((3,), 1.0, dtype=torch.float64)
    tiny = torch.full((3,), 1e-9, dtype=torch.float64)  # 1 + 1e-9 rounds to 1 in float32
    x0, x_next = R.guided_step_reference(x, [x, tiny], [1.0, 1.0], 0.0, 1.0, -1.0, 1.0)
    assert x0.dtype == torch.float64
    torch.testing.assert_close(x_next, tiny, rtol=1e-6, atol=0)


def test_reference_does_not_modify_inputs() -> None:
    x, p, old, nz = (torch.randn(9, generator=torch.Generator().manual_seed(i)) for i in range(4))
    before = [t.clone() for t in (x, p, old, nz)]
    R.guided_step_reference(x, [p], [2.0], 1.0, 1.0, 2.0, 3.0, 4.0, old, 5.0, nz)
    for t, b in zip((x, p, old, nz), before, strict=True):
        assert torch.equal(t, b)


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"preds": [torch.zeros(4), torch.zeros(5)]}, ValueError, "shape mismatch, preds[1] has (5,) but x has (4,)"),
        ({"coeffs": [1.0]}, ValueError, "2 predictions but 1 coefficients"),
        ({"preds": [], "coeffs": []}, ValueError, "at least one prediction"),
        ({"u_old": 0.5}, ValueError, "u_old=0.5 but x0_old is None"),
        ({"u_noise": 0.5}, ValueError, "u_noise=0.5 but noise is None"),
        ({"noise": torch.zeros(4, 1), "u_noise": 1.0}, ValueError, "noise has (4, 1)"),
        ({"preds": [torch.zeros(4), torch.zeros(4, dtype=torch.int64)]}, TypeError, "preds[1] must be a floating"),
        ({"x0_old": torch.zeros(4, device="meta"), "u_old": 1.0}, ValueError, "device mismatch, x0_old is on meta"),
        ({"preds": [torch.zeros(4), [0.0] * 4]}, TypeError, "preds[1] must be a torch.Tensor"),
    ],
)
@pytest.mark.parametrize("backend", ["torch", None])
def test_step_errors(kwargs: dict[str, Any], error: type[Exception], fragment: str, backend: str | None) -> None:
    call = {"x": torch.zeros(4), "preds": [torch.zeros(4), torch.zeros(4)], "coeffs": [1.0, -1.0]}
    call.update(kwargs)
    with pytest.raises(error) as info:
        K.guided_step(a=0.0, b=1.0, u_x=0.0, u_0=1.0, backend=backend, **call)
    assert fragment in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# Solver steps through guided_step (how the core wires it in; the coefficient mapping of each solver)
# ---------------------------------------------------------------------------------------------------------------

SCHEDULE_CASES = [(D.FlowSchedule(1.0), "velocity"), (D.FlowSchedule(0.0), "velocity"), (D.EDMSchedule(), "eps")]
GUIDANCE_WEIGHT = 3.5


def _branches(x: torch.Tensor, t: float) -> list[torch.Tensor]:
    """Two smooth, distinct stand-in networks (conditional, unconditional)."""
    return [torch.tanh(0.7 * x + 0.1 * t) + 0.3 * x, torch.sin(0.5 * x - 0.2 * t) + 0.2 * x]


@pytest.mark.parametrize("schedule, prediction", SCHEDULE_CASES, ids=str)
@pytest.mark.parametrize("solver", solvers.fused_solvers())
def test_fused_loop_runs_the_same_rule_as_the_plain_loop(solver: str, schedule: D.Schedule, prediction: str) -> None:
    """Every fusable solver's rule, executed as one ``guided_step`` per stage (``u_0 = c_0 + c_d``, ``u_old =
    -c_d``), equals its plain loop step for step (float64, the same SDE noise)."""
    grid = solvers.get_timesteps(schedule, 7).tolist()
    noise = torch.randn(3, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def fn(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        return _branches(x, t.view(-1, 1))[0 if cond is not None else 1]

    den = D.from_fn(fn, prediction, schedule=schedule)
    spec = f"cfg({1.0 + GUIDANCE_WEIGHT})"
    runs = {}
    for fused in (False, True):
        gen = torch.Generator().manual_seed(1)
        runs[fused] = solvers.sample(den, noise, {"cond": 1}, guidance=spec, solver=solver, timesteps=grid,
                                     fused=fused, generator=gen)[0]  # fmt: skip
    torch.testing.assert_close(runs[True], runs[False], rtol=1e-9, atol=1e-9)
    assert solvers.get_solver(solver).fusable and not solvers.get_solver("heun").fusable


# ---------------------------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _FakeCuda:
    """Stands in for a CUDA tensor in backend resolution (only the attributes it looks at)."""

    is_cuda: bool = True
    requires_grad: bool = False
    device: str = "cuda:0"


def test_backend_names_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = [torch.zeros(2)]
    monkeypatch.delenv(K.BACKEND_ENV, raising=False)
    assert K.resolve_backend(cpu) == "torch"
    assert K.resolve_backend(cpu, "auto") == "torch"
    assert K.resolve_backend(cpu, " Torch ") == "torch"
    monkeypatch.setenv(K.BACKEND_ENV, "torch")
    assert K.resolve_backend([_FakeCuda()]) == "torch"  # the environment forces torch even for CUDA tensors
    monkeypatch.setenv(K.BACKEND_ENV, "cuda")
    with pytest.raises(ValueError, match=r"unknown kernel backend 'cuda' \(\$V2A_KERNELS\)"):
        K.resolve_backend(cpu)
    assert K.resolve_backend(cpu, "torch") == "torch"  # the argument wins over the environment
    with pytest.raises(ValueError, match="unknown kernel backend 'fast' \\(backend argument\\)"):
        K.combine(cpu, [1.0], backend="fast")


@needs_triton
def test_auto_picks_triton_for_cuda_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(K.BACKEND_ENV, raising=False)
    assert K.triton_available()
    assert K.resolve_backend([_FakeCuda(), _FakeCuda()]) == "triton"
    assert K.resolve_backend([_FakeCuda(), _FakeCuda(is_cuda=False, device="cpu")]) == "torch"
    assert K.resolve_backend([_FakeCuda(requires_grad=True)]) == "torch"  # keep autograd working
    with torch.no_grad():
        assert K.resolve_backend([_FakeCuda(requires_grad=True)]) == "triton"


def test_auto_falls_back_when_triton_is_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(K.BACKEND_ENV, raising=False)
    monkeypatch.setattr(K, "_triton_module", None)
    monkeypatch.setattr(K, "_triton_error", "ImportError: no triton here")
    with pytest.warns(RuntimeWarning, match="no triton here"):
        assert K.resolve_backend([_FakeCuda()]) == "torch"
    with pytest.raises(RuntimeError, match="'triton' requested but triton cannot be used: ImportError: no triton"):
        K.guided_step(torch.zeros(2), [torch.zeros(2)], [1.0], 0.0, 1.0, 0.0, 1.0, backend="triton")


@needs_triton
def test_forcing_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from v2a_sampler.kernels import triton_guided

    if triton_guided.is_interpreted():
        pytest.skip("this process runs the Triton interpreter (TRITON_INTERPRET=1)")
    monkeypatch.setenv(K.BACKEND_ENV, "triton")
    with pytest.raises(RuntimeError, match="needs CUDA tensors, got cpu.*TRITON_INTERPRET=1"):
        K.combine([torch.zeros(3)], [1.0])
    with pytest.raises(RuntimeError, match="Triton kernels need CUDA tensors"):
        triton_guided.guided_step(torch.zeros(3), [torch.zeros(3)], [1.0], 0.0, 1.0, 0.0, 1.0)


def test_import_without_triton() -> None:
    """With triton unimportable the package imports, runs on torch, and says why triton cannot be forced."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # makes `import triton` raise ImportError
        import torch
        import v2a_sampler.kernels as K
        assert not K.triton_available()
        x = torch.ones(3)
        assert K.combine([x, x], [2.0, 1.0]).tolist() == [3.0] * 3
        assert K.guided_step(x, [x], [1.0], 0.0, 1.0, 0.0, 2.0)[1].tolist() == [2.0] * 3
        try:
            K.combine([x], [1.0], backend="triton")
        except RuntimeError as exc:
            print(exc)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != K.BACKEND_ENV}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "requested but triton cannot be used: ModuleNotFoundError" in proc.stdout


# ---------------------------------------------------------------------------------------------------------------
# GPU compilation (no GPU needed: Triton compiles for an explicit target with its bundled ptxas)
# ---------------------------------------------------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("kernel", ["step", "combine"])
def test_kernels_compile_for_sm90_with_vector_loads(kernel: str) -> None:
    """The kernels compile for an H100 target, and 16-byte-aligned operands get 128-bit loads and stores."""
    import triton
    import triton.language as tl

    from v2a_sampler.kernels import triton_guided as T

    if T.is_interpreted():
        pytest.skip("this process runs the Triton interpreter (TRITON_INTERPRET=1)")
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        importlib.import_module("triton.backends.nvidia")
    except ImportError as exc:
        pytest.skip(f"this triton build cannot target NVIDIA GPUs offline: {exc}")
    fn = T._guided_step_kernel if kernel == "step" else T._combine_kernel
    names = fn.arg_names
    pointers = {n for n in names if n.endswith("_ptr") or (len(n) == 2 and n[0] == "p")}
    constexprs = {"K": 3, "ACC": tl.float32, "BLOCK": T.DEFAULT_BLOCK}
    if kernel == "step":
        constexprs.update(HAS_OLD=True, HAS_NOISE=True)
    signature = {}
    for n in names:
        if n in constexprs:
            signature[n] = "constexpr"
        elif n in pointers:
            signature[n] = "*bf16" if n[0] == "p" and n[1].isdigit() else "*fp32"
        elif n == "n":
            signature[n] = "i32"
        else:
            signature[n] = "fp64"
    aligned = {(names.index(n),): [["tt.divisibility", 16]] for n in pointers | {"n"}}
    try:  # the offline-compile API (written against triton 3.9) is internal and may move
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=aligned)
    except TypeError as exc:
        pytest.skip(f"triton {triton.__version__} has another ASTSource signature: {exc}")
    compiled = triton.compile(
        src, target=GPUTarget("cuda", 90, 32), options={"num_warps": T.NUM_WARPS, "enable_fp_fusion": T.FP_FUSION}
    )
    ptx = compiled.asm["ptx"]
    assert compiled.asm["cubin"]
    assert set(re.findall(r"ld\.global[.\w]*", ptx)) == {"ld.global.v4.b32"}  # only 128-bit loads
    assert set(re.findall(r"st\.global[.\w]*", ptx)) == {"st.global.v4.b32"}


if __name__ == "__main__":
    _child_main(*sys.argv[1:3])
