"""The 2D lab: exact fractal mixture (score vs finite differences), metrics, shipped models, reproduce --quick."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from v2a_sampler import sample
from v2a_sampler.core.analytic import GaussianMixture
from v2a_sampler.lab import experiment as E
from v2a_sampler.lab import metrics as M
from v2a_sampler.lab.toy2d import COMPONENTS_PER_BRANCH, TREE_DEPTH, make_toy2d, pretrained
from v2a_sampler.training import evaluate_loss

ROOT = Path(__file__).resolve().parents[1]
NOISE = [(1.0, 0.0), (0.9, 0.1), (0.5, 0.5), (0.05, 0.95)]  # (alpha, sigma) from data to almost pure noise


@pytest.fixture(scope="module")
def toy():
    return make_toy2d()


def noisy_points(toy, label, alpha, sigma, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, _ = toy.sample(n, label, g)
    return alpha * x0 + sigma * torch.randn(n, 2, generator=g, dtype=torch.float64)


def test_fractal_structure(toy):
    per_class = (2**TREE_DEPTH - 1) * COMPONENTS_PER_BRANCH
    assert toy.num_classes == 2 and toy.num_components == 2 * per_class
    for c in range(2):
        assert toy.class_mixture(c).num_components == per_class
        assert len(toy.leaf_branches(c)) == 2 ** (TREE_DEPTH - 1)
        # narrow, anisotropic components: every covariance has eigenvalue ratio ACROSS_RATIO^2
        ev = torch.linalg.eigvalsh(toy.class_mixture(c).covs)
        assert torch.allclose(ev[:, 0] / ev[:, 1], torch.full((per_class,), 0.25, dtype=torch.float64))
    x, labels = toy.sample(4000, generator=torch.Generator().manual_seed(0))
    assert 0.4 < labels.double().mean() < 0.6
    # the classes are distinguishable: true samples are far likelier under their own class
    own = torch.where(labels == 0, toy.log_prob(x, 0), toy.log_prob(x, 1))
    other = torch.where(labels == 0, toy.log_prob(x, 1), toy.log_prob(x, 0))
    assert (own > other).double().mean() > 0.9


@pytest.mark.parametrize("label", [0, 1, None])
def test_exact_score_matches_finite_differences(toy, label):
    h = 1e-6
    for alpha, sigma in NOISE:
        x = noisy_points(toy, label, alpha, sigma)
        score = toy.score(x, label, alpha, sigma)
        fd = torch.stack(
            [
                (toy.log_prob(x + h * e, label, alpha, sigma) - toy.log_prob(x - h * e, label, alpha, sigma)) / (2 * h)
                for e in torch.eye(2, dtype=torch.float64)
            ],
            dim=1,
        )
        rel = (score - fd).norm(dim=1) / fd.norm(dim=1).clamp(min=1.0)
        assert rel.max() < 1e-4, (alpha, sigma, rel.max())


def test_fast_mixture_equals_analytic_reference(toy):
    fast = toy.class_mixture(0)
    ref = GaussianMixture(fast.log_weights.exp(), fast.means, fast.covs)  # the plain analytic.py implementation
    for alpha, sigma in NOISE:
        x = noisy_points(toy, 0, alpha, sigma, n=32)
        assert torch.allclose(fast.log_prob(x, alpha, sigma), ref.log_prob(x, alpha, sigma), rtol=1e-10, atol=1e-9)
        assert torch.allclose(fast.score(x, alpha, sigma), ref.score(x, alpha, sigma), rtol=1e-8, atol=1e-8)


def test_exact_denoiser_velocity_is_tweedie(toy):
    den = toy.denoiser()  # flow velocity, noise at t = 1
    for t in (0.1, 0.5, 0.9):
        alpha, sigma = 1 - t, t
        x = noisy_points(toy, 1, alpha, sigma)
        v = den(x, torch.full((64,), t, dtype=torch.float64), {"label": torch.ones(64, dtype=torch.long)})
        x0 = (x + sigma**2 * toy.score(x, 1, alpha, sigma)) / alpha
        eps = (x - alpha * x0) / sigma
        assert torch.allclose(v, eps - x0, atol=1e-9)
        v_null = den(x, torch.full((64,), t, dtype=torch.float64), None)
        assert not torch.allclose(v_null, v, atol=1e-3)  # the null condition is the union of the classes


def test_exact_denoiser_is_ground_truth_for_the_solver(toy):
    n = 384
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    den = toy.denoiser()
    x, info = sample(
        den,
        noise,
        cond={"label": torch.zeros(n, dtype=torch.long)},
        guidance="none",
        solver="heun",
        timesteps=E.sampling_grid(den.schedule),
    )
    assert info.nfe == 2 * E.STEPS - 1
    ref, _ = toy.sample(n, 0, torch.Generator().manual_seed(4))
    m = M.evaluate(toy, x, 0, ref, M.outlier_threshold(toy, 0, n=1 << 14))
    assert m["outlier_rate"] < 0.02 and m["precision"] > 0.85 and m["recall"] > 0.85 and m["sliced_w2"] < 0.06


def test_metrics_on_known_sets(toy):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1000, 2, generator=g, dtype=torch.float64)
    assert M.precision_recall(a, a) == (1.0, 1.0)
    assert M.precision_recall(a, a + 100.0) == (0.0, 0.0)
    assert M.sliced_w2(a, a) == 0.0
    shift = torch.tensor([0.3, -0.4], dtype=torch.float64)  # |shift| = 0.5; E[cos^2] = 1/2 in 2D
    assert M.sliced_w2(a, a + shift) == pytest.approx(0.5 / math.sqrt(2), rel=0.05)

    x, _ = toy.sample(12000, 0, torch.Generator().manual_seed(1))
    assert M.leaf_coverage(toy, x, 0) == 1.0
    trunk = toy.class_mixture(0).means[:COMPONENTS_PER_BRANCH]  # the first branch is the trunk
    assert M.leaf_coverage(toy, trunk, 0) == 0.0
    assert M.leaf_coverage(toy, x + 5.0, 0) == 0.0  # far-off points cover nothing
    threshold = M.outlier_threshold(toy, 0, seed=0, n=1 << 14)
    fresh, _ = toy.sample(1 << 14, 0, torch.Generator().manual_seed(9))
    assert (toy.log_prob(fresh, 0) < threshold).double().mean() < 5 * M.OUTLIER_QUANTILE
    assert (toy.log_prob(fresh + 0.1, 0) < threshold).double().mean() > 0.5


def test_shipped_models_load_and_bad_ones_are_worse(toy):
    good, early, small = (pretrained(k) for k in ("good", "bad_early", "bad_small"))
    assert good.config["training"]["iteration"] > early.config["training"]["iteration"]
    assert good.arch_kwargs["hidden_dim"] > small.arch_kwargs["hidden_dim"]
    # held-out flow-matching loss (paired: same data, noise and times for every model)
    data = toy.data_source()
    loss = {
        k: evaluate_loss(m, data, num_samples=8192) for k, m in (("good", good), ("early", early), ("small", small))
    }
    assert loss["early"] > loss["good"] + 0.01 and loss["small"] > loss["good"] + 0.01, loss
    # the reducible part of that loss, measured exactly: squared velocity error against the exact denoiser
    err = {k: M.velocity_error(m, toy, n=1024) for k, m in (("good", good), ("early", early), ("small", small))}
    assert err["early"] > 3 * err["good"] and err["small"] > 3 * err["good"], err


def test_reproduce_quick_writes_every_method(tmp_path):
    out = tmp_path / "toy"
    cmd = [sys.executable, str(ROOT / "examples" / "toy2d" / "reproduce.py"), "--quick", "--samples", "256"]
    done = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "method",
        "nfe",
        "outlier_rate",
        "precision",
        "recall",
        "coverage",
        "sliced_w2",
        "mean_logp",
    ]
    expected = {"data", "exact", "none", "cfg", "ag", "pg", "hg", "ag_early", "pg_early", "hg_early"}
    assert {r["method"] for r in rows} == expected
    nfe = {r["method"]: int(r["nfe"]) for r in rows}
    per_branch = 2 * E.STEPS - 1  # Heun, Euler on the last step
    assert nfe == {
        "data": 0,
        "exact": per_branch,
        "none": per_branch,
        "cfg": 2 * per_branch,
        "ag": 2 * per_branch,
        "pg": 3 * per_branch,
        "hg": 4 * per_branch,
        "ag_early": 2 * per_branch,
        "pg_early": 3 * per_branch,
        "hg_early": 4 * per_branch,
    }
    for r in rows:
        assert 0.0 <= float(r["outlier_rate"]) <= 1.0 and 0.0 <= float(r["coverage"]) <= 1.0
    assert (out / "samples.png").stat().st_size > 10_000
