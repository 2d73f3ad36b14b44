"""NFE-budget benchmark: budget -> steps arithmetic, exact NFE accounting, and a tiny end-to-end run."""

from __future__ import annotations

import csv
import importlib.util
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import bench
import pytest
import torch

from v2a_sampler.lab.toy2d import pretrained
from v2a_sampler.solvers import SOLVERS, get_timesteps, stages_per_sample

ROOT = Path(__file__).resolve().parent.parent
#: Tiny configuration of the end-to-end test: budget 3 admits every method but HG (4 per stage), budget 8 all.
TINY_BUDGETS = (3, 8)
TINY_SEEDS = 2
TINY_LAB_SAMPLES = 64
TINY_CLIPS = 1
TINY_DURATION = 1.0
#: Lab samples per draw of the counting test.
COUNT_SAMPLES = 16


def _load_benchmark() -> Any:
    spec = importlib.util.spec_from_file_location("nfe_budget", ROOT / "benchmarks" / "nfe_budget.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["nfe_budget"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def nb() -> Any:
    torch.set_num_threads(1)
    return _load_benchmark()


def test_stages_and_cost() -> None:
    assert bench.stages("euler", 5) == 5
    assert bench.stages("dpmpp_2m_sde", 5) == 5
    assert bench.stages("heun", 5) == 9  # 2N - 1: Euler on the final step to sigma = 0
    assert bench.stages("heun", 5, final_sigma_zero=False) == 10
    assert bench.cost("hg", "heun", 16) == 4 * 31
    assert bench.cost("cfg", "euler", 10) == 20
    assert bench.cost("pg", "dpmpp_2m", 3) == 9
    assert bench.cost("none", "heun", 1) == 1
    with pytest.raises(ValueError):
        bench.stages("euler", 0)


@pytest.mark.parametrize(
    ("budget", "per_stage", "solver", "expected"),
    [
        (8, 1, "euler", 8),
        (8, 2, "euler", 4),
        (8, 3, "dpmpp_2m", 2),
        (8, 4, "dpmpp_2m_sde", 2),
        (3, 4, "euler", None),  # HG cannot afford one step of 4
        (8, 1, "heun", 4),  # 7 stages
        (7, 1, "heun", 4),
        (6, 1, "heun", 3),  # 5 stages; 4 steps would need 7
        (8, 2, "heun", 2),  # 3 stages x 2 = 6 <= 8; 3 steps would cost 10
        (4, 4, "heun", 1),  # a single Heun step is one Euler stage
        (3, 4, "heun", None),
        (128, 4, "heun", 16),
        (256, 3, "heun", 43),  # 85 stages x 3 = 255
    ],
)
def test_steps_for_budget(budget: int, per_stage: int, solver: str, expected: int | None) -> None:
    assert bench.steps_for_budget(budget, per_stage, solver) == expected


@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("per_stage", [1, 2, 3, 4])
def test_steps_for_budget_is_maximal_and_matches_solver_grid(solver: str, per_stage: int) -> None:
    schedule = pretrained("good").schedule
    for budget in range(1, 40):
        steps = bench.steps_for_budget(budget, per_stage, solver)
        if steps is None:
            assert bench.cost({1: "none", 2: "cfg", 3: "pg", 4: "hg"}[per_stage], solver, 1) > budget
            continue
        grid = get_timesteps(schedule, steps).tolist()
        spent = per_stage * stages_per_sample(solver, grid, schedule)
        assert spent <= budget
        assert per_stage * stages_per_sample(solver, get_timesteps(schedule, steps + 1).tolist(), schedule) > budget


def test_aggregate_mean_and_std() -> None:
    rows = [
        {"m": "a", "seed": 0, "x": 1.0, "y": None},
        {"m": "a", "seed": 1, "x": 3.0, "y": 2.0},
        {"m": "b", "seed": 0, "x": 5.0, "y": None},
    ]
    out = {r["m"]: r for r in bench.aggregate(rows, ["m"], ["x", "y"])}
    assert out["a"]["x"] == pytest.approx(2.0)
    assert out["a"]["x_std"] == pytest.approx(2.0**0.5)
    assert out["a"]["y"] == pytest.approx(2.0)
    assert out["a"]["seeds"] == 2 and out["b"]["seeds"] == 1
    assert out["b"]["x_std"] != out["b"]["x_std"]  # NaN for a single seed
    assert out["b"]["y"] != out["b"]["y"]


class CountingDenoiser:
    """Forwards everything to ``inner`` and counts the rows it evaluates (a batched k-branch call counts k rows)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.rows = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.inner(x, t, cond)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_reported_nfe_is_what_the_networks_evaluated(nb: Any, solver: str) -> None:
    budget = 20
    for method, spec in nb.lab_specs().items():
        models = {"good": CountingDenoiser(pretrained("good")), nb.LAB_BAD: CountingDenoiser(pretrained(nb.LAB_BAD))}
        steps = bench.steps_for_budget(budget, bench.nfe_per_step(spec), solver)
        assert steps is not None
        _, nfe = nb.lab_draw(models, spec, solver, steps, 0, COUNT_SAMPLES, seed=0)
        counted = sum(m.rows for m in models.values())
        assert counted == nfe * COUNT_SAMPLES, (method, solver)
        assert nfe == bench.cost(spec, solver, steps) <= budget


def test_tiny_run_covers_every_method_and_solver(nb: Any, tmp_path: Path) -> None:
    cfg = nb.Config(TINY_BUDGETS, TINY_SEEDS, TINY_LAB_SAMPLES, TINY_CLIPS, TINY_DURATION)
    nb.run(cfg, tmp_path)
    for name in ("results.csv", "results_mean.csv", "quality_vs_nfe.png", "summary.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    with (tmp_path / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    for col in ("task", "method", "solver", "steps", "nfe", "seed", "sliced_w2", "onset_f1", "fd", "diversity"):
        assert col in rows[0]
    specs = {"toy2d": nb.lab_specs(), "v2a": {m: m for m in nb.METHODS}}
    for task in nb.TASKS:
        for budget in TINY_BUDGETS:
            got = Counter((r["method"], r["solver"]) for r in rows if r["task"] == task and int(r["budget"]) == budget)
            want = {(m, s) for m, spec in specs[task].items() for s in nb.SOLVER_NAMES
                    if bench.cost(spec, s, 1) <= budget}  # fmt: skip
            assert set(got) == want, (task, budget)
            assert all(n == TINY_SEEDS for n in got.values())
            if budget == 3:
                assert all(m != "hg" for m, _ in got)
    for r in rows:
        spec = specs[r["task"]][r["method"]]
        steps, nfe, budget = int(r["steps"]), int(r["nfe"]), int(r["budget"])
        assert nfe == bench.cost(spec, r["solver"], steps) <= budget
        assert bench.cost(spec, r["solver"], steps + 1) > budget  # the most steps the budget affords
        metric = "sliced_w2" if r["task"] == "toy2d" else "fd"
        assert float(r[metric]) >= 0.0
    summary = (tmp_path / "summary.md").read_text()
    assert "## toy2d" in summary and "## v2a" in summary
