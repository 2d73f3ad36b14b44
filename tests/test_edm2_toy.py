"""The EDM2-faithful lab family: EDM2's data construction, per-sample-sigma scores, the log-density network, training,
the class dispatcher, the shipped networks' AG effect, and the diagnose CLI on every kind of model pair."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from v2a_sampler.lab import edm2_toy as T
from v2a_sampler.lab.families import get_family
from v2a_sampler.lab.zoo import ag_metrics, correlation, perturbed_copy, reset_dropout
from v2a_sampler.models import NULL_LABEL, from_pretrained
from v2a_sampler.models.edm2_toy import SIGMA_MAX, EDM2ToyNet
from v2a_sampler.training import edm2_recipe as R
from v2a_sampler.training.cli import main as train_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy():
    return T.make_edm2_toy()


def test_data_is_edm2s_construction(toy):
    per_class = (2**T.DEPTH - 1) * T.COMPONENTS_PER_BRANCH
    assert [toy.class_mixture(c).num_components for c in (0, 1)] == [per_class, per_class]
    assert len(toy.leaf_branches(0)) == 2 ** (T.DEPTH - 1)
    # the trunk of class A: first draw of RandomState(2) sets its length, components start at 7 % of it
    length = T.TRUNK_LENGTH * (1.0 + T.JITTER * np.random.RandomState(T.DATA_SEED).randn())
    d = np.array([math.cos(math.pi / 4), math.sin(math.pi / 4)])
    first = (np.array(T.ORIGIN) + d * length * T.ALONG_SPAN[0]) * np.array(T.SCALE)
    assert torch.allclose(toy.class_mixture(0).means[0], torch.tensor(first), atol=1e-12)
    # the classes grow in opposite directions and are weighted by their total component weight (EDM2's 'AB')
    a, _ = toy.sample(2000, 0, torch.Generator().manual_seed(0))
    b, _ = toy.sample(2000, 1, torch.Generator().manual_seed(0))
    assert (a.mean(0) > 0.2).all() and (b.mean(0) < 0.0).all()
    assert sum(toy.mixture.class_probs) == pytest.approx(1.0) and 0.4 < toy.mixture.class_probs[0] < 0.6


def test_noisy_score_matches_the_exact_score_per_sample(toy):
    g = torch.Generator().manual_seed(1)
    x0, _ = toy.sample(300, 0, g)
    sigma = torch.tensor([0.003, 0.05, 0.4, 3.0], dtype=torch.float64).repeat(75)
    x = x0 + sigma[:, None] * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    got = T.noisy_score(toy.class_mixture(0), x, sigma)
    for s in sigma.unique().tolist():
        sel = sigma == s
        ref = toy.score(x[sel], 0, 1.0, s)
        assert torch.allclose(got[sel], ref, rtol=1e-7, atol=1e-7 / s)


def test_network_is_a_log_density_denoiser():
    net = EDM2ToyNet(hidden_dim=16)
    with torch.no_grad():
        net.gain.fill_(0.7)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((8,), 0.3)
    h = 1e-3
    logp = lambda z: net.log_density(z.double().float(), sigma).double()  # noqa: E731
    fd = torch.stack([(logp(x + h * e) - logp(x - h * e)) / (2 * h) for e in torch.eye(2)], 1)
    assert torch.allclose(net.score(x, sigma).double(), fd, atol=2e-2)
    with torch.no_grad():  # the sampler's context: the score still comes from autograd
        d = net(x, sigma, None)
    assert torch.allclose(d, x + 0.09 * net.score(x, sigma), atol=1e-6)
    assert net.prediction.value == "x0" and net.schedule.sigma_max == SIGMA_MAX


def test_training_is_seeded_and_learns(toy):
    recipe = R.Recipe(hidden_dim=16, iterations=60, batch_size=512, checkpoint_at=(1,), extra_ema_stds=(0.1,))
    a, b = R.train_net(recipe), R.train_net(recipe)
    assert set(a) == {(1, 0.01), (1, 0.1), (60, 0.01), (60, 0.1)}
    for k in a:
        assert all(torch.equal(p, q) for p, q in zip(a[k].parameters(), b[k].parameters(), strict=True))
    # the objective (sigma^2 |score - true score|^2 on EDM2's noise distribution) on fresh held-out points
    g = torch.Generator().manual_seed(5)
    sigma = (torch.randn(4096, generator=g) * T.P_STD + T.P_MEAN).exp()
    x = toy.class_mixture(0).sample(4096, generator=g).float() + sigma[:, None] * torch.randn(4096, 2, generator=g)
    target = T.noisy_score(toy.class_mixture(0), x, sigma)
    loss = {k: float((sigma.square() * (a[k].score(x, sigma) - target).square().mean(-1)).mean()) for k in a}
    assert loss[(60, 0.01)] < 0.75 * loss[(1, 0.01)], loss  # measured: 0.158 vs 0.242


def test_dispatch_routes_classes_and_null():
    good, uncond = T.pretrained_net("good"), T.pretrained_net("uncond")
    den = T.class_dispatch({T.CLASS_A: good}, uncond)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(2))
    t = torch.full((6,), 0.2)
    labels = torch.tensor([0, NULL_LABEL, 0, NULL_LABEL, 0, 0])
    out = den(x, t, {"label": labels})
    assert torch.allclose(out[labels == 0], good(x[labels == 0], t[labels == 0]))
    assert torch.allclose(out[labels != 0], uncond(x[labels != 0], t[labels != 0]))
    assert torch.allclose(den(x, t, den.drop({"label": labels}, ["label"])), uncond(x, t))
    with pytest.raises(ValueError, match="no network for class 1"):
        den(x, t, {"label": torch.ones(6, dtype=torch.long)})


def test_shipped_networks_and_autoguidance():
    family = get_family("edm2")
    models = family.models()
    assert from_pretrained(T.ASSETS / "good").config["training"]["recipe"]["hidden_dim"] == 64
    base = ag_metrics(family, models["good"], None, 1.0, 1024)
    ag = ag_metrics(family, models["good"], models["bad"], 2.0, 1024)
    # EDM2's claim, as measured with 8192 x 3 seeds (examples/toy2d/README.md): fewer outliers, most recall kept
    assert 0.4 < ag["outlier_rate"] / base["outlier_rate"] < 0.9 and ag["recall"] / base["recall"] > 0.8


def test_perturbed_good_models():
    net = T.pretrained_net("good")
    x, t = torch.randn(64, 2, generator=torch.Generator().manual_seed(3)), torch.full((64,), 0.1)
    assert (perturbed_copy(net, skip=(3,))(x, t) - net(x, t)).abs().max() > 1e-3
    drop = perturbed_copy(net, dropout=0.2)
    first = drop(x, t)
    assert not torch.allclose(drop(x, t), first)  # a fresh mask per call
    reset_dropout([drop])
    assert torch.equal(drop(x, t), first)  # seeded: repeatable
    assert torch.equal(net(x, t), T.pretrained_net("good")(x, t))  # the good model itself is untouched


def test_correlation_statistics():
    x = np.arange(12.0)
    c = correlation(x, 2 * x + 1)
    assert c["pearson"] == pytest.approx(1.0) and c["spearman"] == pytest.approx(1.0) and c["pearson_p"] < 0.01
    noise = np.random.default_rng(0).normal(size=12)
    c = correlation(x, noise)
    assert c["spearman_lo"] < 0.0 < c["spearman_hi"] or c["spearman_p"] > 0.05


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("family", ["toy2d", "toy2d_edm2"])
def test_diagnose_cli_on_the_lab(tmp_path, family):
    bad = "bad_small" if family == "toy2d" else "bad"
    args = ["diagnose", "--good", f"{family}:good", "--bad", f"{family}:{bad}", "--data", family, "--n", "512"]
    args += ["--trajectories", "none", "--num-trajectories", "128", "--out", str(tmp_path)]
    assert train_cli(args) == 0
    rows = _rows(tmp_path / "diagnostic.csv")
    assert {r["source"] for r in rows} == {"data", "trajectory:none"}
    assert len(rows) == 2 * 32  # the family's 32-step sampling grid, on data and on trajectories
    assert all(-1.0 <= float(r["cosine"]) <= 1.0 and float(r["err_bad"]) > 0 for r in rows)
    assert (tmp_path / "diagnostic.png").stat().st_size > 10_000


def test_diagnose_cli_on_user_data_and_the_embedded_v2a_pair(tmp_path):
    toy = get_family("ours").toy
    x0, labels = toy.sample(256, generator=torch.Generator().manual_seed(0))
    save_file({"x0": x0.float(), "label": labels}, str(tmp_path / "held_out.safetensors"))
    assets = ROOT / "v2a_sampler" / "assets" / "toy2d"
    args = ["diagnose", "--good", str(assets / "good"), "--bad", str(assets / "bad_early"), "--levels", "4"]
    assert train_cli([*args, "--data", str(tmp_path / "held_out.safetensors"), "--out", str(tmp_path / "a")]) == 0
    rows = _rows(tmp_path / "a" / "diagnostic.csv")
    assert [r["estimator"] for r in rows] == ["targets"] * 4 and all(math.isnan(float(r["cosine"])) for r in rows)
    args = ["diagnose", "--good", "embedded", "--bad", "embedded/bad", "--data", "synth_v2a", "--n", "4"]
    assert train_cli([*args, "--levels", "3", "--out", str(tmp_path / "v")]) == 0
    rows = _rows(tmp_path / "v" / "diagnostic.csv")
    assert len(rows) == 3 and all(float(r["delta_sq"]) > 0 and math.isfinite(float(r["w_star"])) for r in rows)


def test_reproduce_quick_edm2_family(tmp_path):
    cmd = [sys.executable, str(ROOT / "examples" / "toy2d" / "reproduce.py"), "--family", "edm2", "--quick"]
    done = subprocess.run([*cmd, "--samples", "256", "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {r["method"] for r in _rows(tmp_path / "metrics.csv")} == {"data", "exact", "none", "cfg", "ag", "pg", "hg"}
