"""Equal-NFE benchmark (benchmarks/equal_nfe.py): a tiny end-to-end run, its files, and resuming from its parts."""

from __future__ import annotations

import csv
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from v2a_sampler import guidance as G

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("none", "cfg", "amg")


@pytest.fixture(scope="module")
def eq() -> Any:
    import equal_nfe  # benchmarks/ is on the path (conftest)

    return equal_nfe


def _tiny(eq: Any) -> Any:
    return replace(eq.QUICK, budgets=(4,), solvers=("euler",), val_clips=1, val_seeds=1, test_clips=2, test_seeds=2,
                   duration=3.0, ref_windows=24, grid_points=2)  # fmt: skip


def _run(eq: Any, monkeypatch: pytest.MonkeyPatch, out: Path, *extra: str) -> None:
    argv = ["equal_nfe.py", "--quick", "--out", str(out), "--methods", ",".join(METHODS), *extra]
    monkeypatch.setattr(sys, "argv", argv)
    eq.main()


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_tiny_run_writes_paired_rows_and_resumes_from_parts(eq, monkeypatch, tmp_path):
    monkeypatch.setattr(eq, "QUICK", _tiny(eq))
    out = tmp_path / "eq"
    _run(eq, monkeypatch, out)
    per_clip = _rows(out / "results_per_clip.csv")
    # one row per method x clip x seed, the same (clip, seed) units for every method: the pairing of the bootstrap
    assert len(per_clip) == len(METHODS) * 2 * 2
    units = {m: [(r["clip"], r["seed"]) for r in per_clip if r["method"] == m] for m in METHODS}
    assert units["none"] == units["cfg"] == units["amg"] == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    # exact NFE: the whole budget, spent as steps x the tuned spec's branches (cfg(1) is the conditional branch only)
    assert {r["nfe"] for r in per_clip} == {"4"}
    assert all(int(r["steps"]) * G.parse(r["spec"]).nfe_per_step == 4 for r in per_clip)
    pooled = _rows(out / "results.csv")
    assert [r["method"] for r in pooled] == list(METHODS)
    assert all(int(r["ref_windows"]) >= 24 for r in pooled)
    assert sorted(p.name for p in (out / eq.PARTS).iterdir()) == ["0004-amg.pt", "0004-cfg.pt", "0004-none.pt"]
    text = (out / "summary.md").read_text()
    assert "### 4 NFE" in text and "- best onset F1: `" in text
    # the winners table names, per budget, the best method of each metric with its paired margin over the runner-up
    (row,) = [line for line in text.splitlines() if line.startswith("| 4 | `")]
    best = max(pooled, key=lambda r: float(r["onset_f1"]))
    assert row.startswith(f"| 4 | `{best['method']}` {float(best['onset_f1']):.3f} (")

    # a second run finds every part: nothing is sampled again and the tables are identical
    before = {name: (out / name).read_text() for name in ("results_per_clip.csv", "results.csv", "settings.csv")}

    def no_sampling(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a finished part was recomputed")

    monkeypatch.setattr(eq, "test_scores", no_sampling)
    monkeypatch.setattr(eq, "choose", no_sampling)
    _run(eq, monkeypatch, out)
    assert {name: (out / name).read_text() for name in before} == before

    # parts made with another configuration, or other weights (a retrained model), are refused, not mixed in
    monkeypatch.setattr(eq, "QUICK", replace(_tiny(eq), test_clips=3))
    with pytest.raises(SystemExit, match="was made with"):
        _run(eq, monkeypatch, out)
    monkeypatch.setattr(eq, "QUICK", _tiny(eq))
    monkeypatch.setattr(eq, "weights_hash", lambda *pipes: "retrained")
    with pytest.raises(SystemExit, match="was made with"):
        _run(eq, monkeypatch, out)
