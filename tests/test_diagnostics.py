"""The autoguidance diagnostic: exact w* on constructed pairs, per-sample targets against the exact estimator, CLI."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from v2a_sampler.denoisers import EDMSchedule, FlowSchedule, VPSchedule, eps_from_x0, from_fn, from_x0_eps
from v2a_sampler.diagnostics import default_levels, diagnose, diagnose_trajectories
from v2a_sampler.lab import experiment as E
from v2a_sampler.lab.toy2d import make_toy2d, pretrained

#: Data of the constructed pairs: N(MEAN, STD^2 I) in 2D, so D*(x) = m + alpha s^2 (x - alpha m) / (alpha^2 s^2 +
#: sigma^2) in closed form.
MEAN = torch.tensor([0.3, -0.2], dtype=torch.float64)
STD = 0.7
SCHEDULES = [("velocity", FlowSchedule(1.0)), ("eps", VPSchedule()), ("x0", EDMSchedule())]


def ideal(x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    gain = alpha * STD**2 / (alpha**2 * STD**2 + sigma**2)
    return MEAN + gain * (x - alpha * MEAN)


def direction_f(x: torch.Tensor) -> torch.Tensor:
    """An error direction: nonlinear, nowhere zero on average."""
    return torch.tanh(x) + torch.tensor([0.25, -0.1], dtype=x.dtype)


def direction_g(x: torch.Tensor) -> torch.Tensor:
    """A direction orthogonal to direction_f at every point (f rotated by 90 degrees)."""
    f = direction_f(x)
    return torch.stack([-f[:, 1], f[:, 0]], dim=1)


def model(prediction: str, schedule, error):
    """A denoiser of the Gaussian data whose x0 estimate is ``D* + error(x, sigma)``."""

    def fn(x, t, cond):
        terms = schedule.terms(float(torch.as_tensor(t).reshape(-1)[0]))
        x64 = x.to(torch.float64)
        x0 = ideal(x64, terms.alpha, terms.sigma) + error(x64, terms.sigma)
        return from_x0_eps(prediction, x0, eps_from_x0(x64, x0, terms), terms).to(x.dtype)

    return from_fn(fn, prediction=prediction, schedule=schedule, condition_names=())


def data(n: int, seed: int = 0) -> torch.Tensor:
    return MEAN + STD * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def noise_scale(sigma: float) -> float:
    return 0.05 * (1.0 + sigma)  # errors of any size at any level


@pytest.mark.parametrize(("prediction", "schedule"), SCHEDULES)
def test_w_star_is_exact_when_the_bad_model_errs_the_same_way(prediction, schedule):
    a, b = 1.0, 2.5  # good = D* + a f, bad = D* + b f: w* = b / (b - a), alignment 1, everything removable
    good = model(prediction, schedule, lambda x, s: a * noise_scale(s) * direction_f(x))
    bad = model(prediction, schedule, lambda x, s: b * noise_scale(s) * direction_f(x))
    exact = model(prediction, schedule, lambda x, s: torch.zeros_like(x))
    levels = default_levels(schedule, num=5, sigma_min=0.05, sigma_max=20.0)
    rep = diagnose(good, bad, data(512), levels=levels, exact=exact, batch_size=200)
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    traj = diagnose_trajectories(good, bad, exact, noise, steps=6, solver="euler", grid="uniform")
    for r in rep.rows + traj.rows:
        assert r.w_star == pytest.approx(b / (b - a), rel=1e-9)
        assert r.cosine == pytest.approx(1.0, abs=1e-9)
        assert r.rel_reduction == pytest.approx(1.0, rel=1e-9)
        assert r.error_ratio == pytest.approx((b / a) ** 2, rel=1e-9)
        assert r.w_star_lo == pytest.approx(r.w_star, abs=1e-9)  # no sampling noise in an exact ratio
    assert len(rep.rows) == 5 and len(traj.rows) == 6  # 6 Euler steps from the noise end: states entering each


def test_orthogonal_extra_error_gives_weight_one():
    # bad = D* + a f + c g with g orthogonal to f: Delta = -c g is unrelated to the good model's error a f, so
    # w* = 1, nothing is removable and the alignment is 0 (AG would only inject the bad model's error)
    a, c = 1.0, 2.0
    prediction, schedule = SCHEDULES[0]
    good = model(prediction, schedule, lambda x, s: a * noise_scale(s) * direction_f(x))
    bad = model(prediction, schedule, lambda x, s: noise_scale(s) * (a * direction_f(x) + c * direction_g(x)))
    exact = model(prediction, schedule, lambda x, s: torch.zeros_like(x))
    rep = diagnose(good, bad, data(256), levels=[0.2, 0.5, 0.9], exact=exact)
    for r in rep.rows:
        assert r.w_star == pytest.approx(1.0, abs=1e-12)
        assert r.reduction == pytest.approx(0.0, abs=1e-20)
        assert r.cosine == pytest.approx(0.0, abs=1e-12)
        assert r.error_ratio == pytest.approx(1.0 + (c / a) ** 2, rel=1e-9)


def test_per_sample_targets_are_unbiased_for_the_exact_quantity():
    # partly aligned pair (alignment 1/sqrt(2)): w* = 1 + 1/2 exactly; the targets' estimate must cover it
    prediction, schedule = SCHEDULES[0]
    good = model(prediction, schedule, lambda x, s: noise_scale(s) * direction_f(x))
    bad = model(prediction, schedule, lambda x, s: noise_scale(s) * (2.0 * direction_f(x) + direction_g(x)))
    exact = model(prediction, schedule, lambda x, s: torch.zeros_like(x))
    levels = [0.05, 0.3, 0.7]
    exact_rep = diagnose(good, bad, data(20000, 1), levels=levels, exact=exact)
    target_rep = diagnose(good, bad, data(20000, 1), levels=levels, exact=exact, estimator="targets")
    for r_exact, r_target in zip(exact_rep.rows, target_rep.rows, strict=True):
        assert r_exact.w_star == pytest.approx(1.5, rel=1e-9)
        assert r_exact.cosine == pytest.approx(1 / math.sqrt(2), rel=1e-9)
        assert r_target.w_star_lo < 1.5 < r_target.w_star_hi
        assert r_target.w_star_hi - r_target.w_star_lo < 0.5  # the interval says something
        assert r_target.rel_reduction_lb <= r_exact.rel_reduction  # a lower bound, as documented
        # the bad model's excess held-out loss estimates err_bad - err_good without D*
        assert r_target.excess_loss_lo < r_exact.err_bad - r_exact.err_good < r_target.excess_loss_hi


def test_targets_agree_with_exact_on_the_lab_models():
    toy = make_toy2d()
    good, bad = pretrained("good"), pretrained("bad_small")
    exact = toy.denoiser(good.prediction, good.schedule)
    x0, labels = toy.sample(4096, generator=torch.Generator().manual_seed(11))
    levels = E.sampling_grid(good.schedule)[:-1:3].tolist()
    ex = diagnose(good, bad, x0, {"label": labels}, levels=levels, exact=exact, seed=3)
    tg = diagnose(good, bad, x0, {"label": labels}, levels=levels, exact=exact, seed=3, estimator="targets")
    inside = [t.w_star_lo <= e.w_star <= t.w_star_hi for e, t in zip(ex.rows, tg.rows, strict=True)]
    pairs = [(e.w_star, t.w_star_lo, t.w_star_hi) for e, t in zip(ex.rows, tg.rows, strict=True)]
    assert sum(inside) >= len(inside) - 1, pairs
    s_ex, s_tg = ex.summary_stats(), tg.summary_stats()
    assert s_tg["w_star_mean_lo"] <= s_ex["w_star_mean"] <= s_tg["w_star_mean_hi"]
    # the exact errors are what the lab's velocity-error test measures: the bad model is worse at every level
    assert all(r.err_bad > r.err_good for r in ex.rows)


def test_report_outputs(tmp_path):
    prediction, schedule = SCHEDULES[2]
    good = model(prediction, schedule, lambda x, s: noise_scale(s) * direction_f(x))
    bad = model(prediction, schedule, lambda x, s: 3.0 * noise_scale(s) * direction_f(x))
    rep = diagnose(good, bad, data(64), levels=[2.0, 0.5, 0.1])  # no exact: per-sample targets only
    assert {r.estimator for r in rep.rows} == {"targets"}
    assert all(math.isnan(r.cosine) and r.rel_reduction_lb >= 0 for r in rep.rows)
    with rep.to_csv(tmp_path / "d.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and float(rows[0]["ratio"]) == pytest.approx(2.0)
    assert rep.plot(tmp_path / "d.png").stat().st_size > 10_000
    assert "mean over 3 levels" in rep.summary()


def test_w_star_schedule_is_ag_at_each_levels_weight():
    prediction, schedule = SCHEDULES[0]
    good = model(prediction, schedule, lambda x, s: noise_scale(s) * direction_f(x))
    bad = model(prediction, schedule, lambda x, s: (1.0 + 3.0 * s) * noise_scale(s) * direction_f(x))
    exact = model(prediction, schedule, lambda x, s: torch.zeros_like(x))
    rep = diagnose(good, bad, data(128), levels=[0.8, 0.4, 0.1], exact=exact)
    g = rep.w_star_guidance()
    for r in rep.rows:  # bad error (1 + 3 s) e: w* = (1 + 3 s) / (3 s), a different weight per level
        assert r.w_star == pytest.approx((1 + 3 * r.t) / (3 * r.t), rel=1e-9)
        coeffs = {b.key: c for b, c in g.branch_coefficients(r.noise_level).items()}
        assert coeffs == pytest.approx({"good:cond": r.w_star, "bad:cond": 1.0 - r.w_star})
    assert g.nfe_per_step == 2
