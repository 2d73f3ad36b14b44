"""The guidance tuner: budget-aware coordinate search with successive halving, caching, the report, the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from v2a_sampler import tune as T
from v2a_sampler.pipelines import Pipeline


@pytest.fixture(scope="module")
def setup():
    pipe = Pipeline.from_pretrained()
    return pipe, T.ValidationSet.synthetic(pipe, 3, duration=1.0)


def test_tune_finds_the_grid_optimum_with_cached_units(setup, tmp_path):
    pipe, data = setup
    generated = []
    space = T.SearchSpace("cfg", {"w": (1.0, 2.0, 4.0, 6.0)})
    res = T.tune(pipe, data, "cfg", budget=4, seeds=2, space=space, passes=1, min_units=2,
                 on_generate=generated.append)  # fmt: skip
    units = 6  # 3 clips x 2 seeds
    assert res.steps == 2 and res.nfe == 4 and res.units == units  # 4 NFE = 2 Euler steps of 2 branches
    # successive halving: 4 values on 2 units, the best 2 on 4, the best on all 6; then the curve on all units
    rungs = [(e["value"], e["units"]) for e in res.evaluations]
    assert [u for _, u in rungs] == [2, 2, 2, 2, 4, 4, 6]
    best_curve = max(res.curve, key=lambda r: r["onset_f1"])
    assert res.weights == {"w": best_curve["value"]} and res.best.spec() == f"cfg({best_curve['value']:g})"
    assert res.score == pytest.approx(best_curve["onset_f1"])
    # every (candidate, unit) is generated once: 4 candidates x 6 units at most
    assert sum(generated) == len({(e["spec"], u) for e in res.curve for u in range(units)}) == 4 * units
    assert res.nfe_spent == 4 * units * 4
    paths = T.write_report(res, tmp_path)
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["spec"] == res.best.spec() and best["nfe_per_clip"] == 4 and len(paths) == 4
    with pytest.raises(ValueError, match="cannot pay one euler step of hg"):
        T.tune(pipe, data, "hg", budget=3, seeds=1, passes=1)
    with pytest.raises(ValueError, match="unknown guidance family 'xg'"):
        T.SearchSpace.default("xg")


def test_one_validation_unit_gives_a_curve_without_intervals(setup, tmp_path):
    import math

    pipe, data = setup
    one = T.ValidationSet(data.clips[:1], data.reference)
    space = T.SearchSpace("cfg", {"w": (1.0, 3.0)})
    res = T.tune(pipe, one, "cfg", budget=4, seeds=1, space=space, passes=1)
    assert res.units == 1 and len(res.curve) == 2
    other = next(r for r in res.curve if r["value"] != res.weights["w"])
    # a difference to the best, but no interval around it from a single unit
    assert other["diff"] == pytest.approx(other["onset_f1"] - res.score)
    assert math.isnan(other["lo"]) and math.isnan(other["hi"]) and other["significant"] is False
    assert len(T.write_report(res, tmp_path)) == 4  # the CSV and the plot cope with the missing interval


def test_cli_quick_and_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(T.app, ["--synthetic", "2", "--duration", "1", "--family", "cfg", "--budget", "4",
                                "--grid", "w=2,4", "--seeds", "1", "--quick", "--out", str(tmp_path)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "best cfg(" in res.stdout and (tmp_path / "curve.csv").is_file()
    again = runner.invoke(T.app, ["--synthetic", "2", "--out", str(tmp_path)])
    assert again.exit_code == 2 and "exists (pass --overwrite" in again.output
    bad = runner.invoke(T.app, ["--synthetic", "2", "--family", "cfg", "--grid", "w9=1:2:2", "--out",
                                str(tmp_path / "b")])  # fmt: skip
    assert bad.exit_code == 2 and "cfg has no weight w9; weights: w" in bad.output
    assert runner.invoke(T.app, ["--out", str(tmp_path / "c")]).exit_code == 2
