"""The v2a-sample command line: guidance listing/explanation and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from v2a_sampler.cli import app

runner = CliRunner()


def test_list_guidance_shows_every_preset():
    res = runner.invoke(app, ["--list-guidance"])
    assert res.exit_code == 0
    for name in ("none", "cfg(w)", "ag(w)", "pg(w1,w2)", "hg(w1,w2,w3)", "order=ag", "G@[lo,hi]"):
        assert name in res.stdout


def test_explain_prints_coefficients():
    res = runner.invoke(app, ["--guidance", "pg(2.7,0.15)", "--explain"])
    assert res.exit_code == 0
    assert "+2.85" in res.stdout and "-1.7" in res.stdout and "-0.15" in res.stdout
    assert "3 NFE/step" in res.stdout


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--guidance", "hg(1,2", "--explain"], "cannot parse guidance"),
        (["missing.mp4"], "input not found: missing.mp4"),
    ],
)
def test_errors_are_one_line_and_nonzero(args, msg, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "v2a_sampler.cli", *args], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0]
