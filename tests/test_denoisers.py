"""The denoiser protocol: schedules, prediction conversions, conditions and nulls."""

from __future__ import annotations

import math

import pytest
import torch

from v2a_sampler import denoisers as D
from v2a_sampler.core.analytic import GaussianMixture

SCHEDULES = [D.FlowSchedule(1.0), D.FlowSchedule(0.0), D.EDMSchedule(), D.VPSchedule()]
TIMES = {  # interior times per schedule (alpha, sigma > 0)
    "flow1": [0.1, 0.5, 0.93],
    "flow0": [0.07, 0.5, 0.9],
    "edm": [0.01, 1.0, 40.0],
    "vp": [0.05, 0.4, 0.95],
}


def _times(s: D.Schedule):
    key = {D.FlowSchedule: "flow", D.EDMSchedule: "edm", D.VPSchedule: "vp"}[type(s)]
    if key == "flow":
        key += "1" if s.noise_at == 1.0 else "0"
    return TIMES[key]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=str)
@pytest.mark.parametrize("src", list(D.Prediction))
@pytest.mark.parametrize("dst", list(D.Prediction))
def test_conversions_round_trip_and_agree_with_definitions(schedule, src, dst):
    gen = torch.Generator().manual_seed(0)
    for t in _times(schedule):
        terms = schedule.terms(t)
        x0 = torch.randn(4, 3, generator=gen, dtype=torch.float64)
        eps = torch.randn(4, 3, generator=gen, dtype=torch.float64)
        x = terms.alpha * x0 + terms.sigma * eps
        truth = {
            D.Prediction.X0: x0,
            D.Prediction.EPS: eps,
            D.Prediction.V: terms.alpha * eps - terms.sigma * x0,
            D.Prediction.VELOCITY: terms.d_alpha * x0 + terms.d_sigma * eps,
        }
        got = D.convert(truth[src], x, t, schedule, src, dst)
        assert torch.allclose(got, truth[dst], atol=1e-9, rtol=1e-9)


def test_velocity_is_dx_dt_in_each_convention():
    # finite difference of x_t = alpha(t) x0 + sigma(t) eps along t
    x0, eps, t, h = torch.tensor([0.7]), torch.tensor([-1.3]), 0.4, 1e-6
    for s in SCHEDULES[:2] + [D.VPSchedule()]:
        a, b = s.terms(t + h), s.terms(t - h)
        fd = ((a.alpha - b.alpha) * x0 + (a.sigma - b.sigma) * eps) / (2 * h)
        tt = s.terms(t)
        assert torch.allclose(tt.d_alpha * x0 + tt.d_sigma * eps, fd, atol=1e-6)
    # the MGAudio (noise at 1) velocity is eps - x0; the MMAudio (noise at 0) velocity is x0 - eps
    assert D.FlowSchedule(1.0).terms(0.3).d_sigma == 1.0 and D.FlowSchedule(0.0).terms(0.3).d_alpha == 1.0


def test_flow_velocity_x0_formula():
    a, b = D.x0_coefficients("velocity", D.FlowSchedule(1.0).terms(0.25))
    assert (a, b) == (1.0, -0.25)  # x0 = x - t v
    a, b = D.x0_coefficients("velocity", D.FlowSchedule(0.0).terms(0.25))
    assert (a, b) == (1.0, 0.75)  # x0 = x + (1 - t) v


@pytest.mark.parametrize("schedule", SCHEDULES, ids=str)
def test_time_inverses(schedule):
    for t in _times(schedule):
        terms = schedule.terms(t)
        assert schedule.t_from_ratio(terms.ratio) == pytest.approx(t, rel=1e-9, abs=1e-12)
        assert schedule.t_from_noise_level(terms.noise_level) == pytest.approx(t, rel=1e-9, abs=1e-12)
    assert schedule.terms(schedule.data_end).sigma == 0.0
    assert schedule == D.Schedule.from_dict(schedule.to_dict())


def test_affine_combinations_commute_with_conversion():
    s = D.VPSchedule()
    t = 0.6
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, dtype=torch.float64, generator=gen)
    preds = [torch.randn(8, dtype=torch.float64, generator=gen) for _ in range(4)]
    coeffs = [2.5, -1.2, 0.3, -0.6]  # sum 1
    mixed_then_converted = D.convert(sum(c * p for c, p in zip(coeffs, preds, strict=True)), x, t, s, "eps", "x0")
    converted_then_mixed = sum(c * D.convert(p, x, t, s, "eps", "x0") for c, p in zip(coeffs, preds, strict=True))
    assert torch.allclose(mixed_then_converted, converted_then_mixed, atol=1e-12)


def test_errors():
    with pytest.raises(ValueError, match="unknown prediction type 'score'"):
        D.Prediction.parse("score")
    with pytest.raises(ValueError, match="noise_at must be 0.0 or 1.0"):
        D.FlowSchedule(0.5)
    with pytest.raises(ValueError, match="alpha = 0"):
        D.x0_coefficients("eps", D.FlowSchedule(1.0).terms(1.0))
    with pytest.raises(ValueError, match="needs either noise_at"):
        D.from_fn(lambda x, t, c: x, noise_at=None)
    with pytest.raises(ValueError, match="unknown schedule type"):
        D.Schedule.from_dict({"type": "cosine"})
    assert D.Prediction.parse("epsilon") is D.Prediction.EPS


def test_from_fn_conditions_and_nulls():
    seen = []

    def fn(x, t, cond):
        seen.append(cond)
        return x

    den = D.from_fn(fn, "velocity", 1.0, condition_names=("video", "text"))
    cond = {"video": torch.ones(2, 4), "text": ["a dog", "rain"]}
    assert den.drop(cond, []) is cond
    assert den.drop(cond, ["video", "text"]) is None  # all dropped, no nulls: the callable gets None
    one = den.drop(cond, ["text"])
    assert one["text"] is None and one["video"] is cond["video"]
    with pytest.raises(ValueError, match="unknown condition"):
        den.drop(cond, ["audio"])
    with pytest.raises(ValueError, match="nulls given for unknown conditions"):
        D.from_fn(fn, condition_names=("video",), nulls={"text": ""})

    learned = torch.full((4,), -1.0)
    den2 = D.from_fn(
        fn,
        "velocity",
        0.0,
        condition_names=("video", "text"),
        nulls={"video": lambda v: learned.expand_as(v), "text": ""},
    )
    both = den2.drop(cond, ["video", "text"])
    assert both["text"] == "" and torch.equal(both["video"], learned.expand(2, 4))
    assert isinstance(den2, D.Denoiser)
    assert den2.schedule == D.FlowSchedule(0.0)


def test_gaussian_mixture_score_matches_finite_differences():
    gm = GaussianMixture(
        [0.3, 0.7],
        torch.tensor([[0.0, 1.0], [2.0, -1.0]]),
        torch.stack([torch.diag(torch.tensor([0.2, 0.05])), torch.tensor([[0.5, 0.3], [0.3, 0.4]])]),
    )
    x = torch.tensor([[0.3, 0.2], [1.5, -0.4], [-1.0, 2.0]], dtype=torch.float64)
    for alpha, sigma in [(1.0, 0.0), (0.8, 0.6), (0.2, 0.98)]:
        score = gm.score(x, alpha, sigma)
        h = 1e-5
        fd = torch.stack(
            [
                (gm.log_prob(x + h * e, alpha, sigma) - gm.log_prob(x - h * e, alpha, sigma)) / (2 * h)
                for e in torch.eye(2, dtype=torch.float64)
            ],
            dim=1,
        )
        assert torch.allclose(score, fd, atol=1e-5)
    # total probability of the noisy density integrates to ~1 on a grid
    g = torch.linspace(-6, 8, 281, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    mass = gm.log_prob(pts, 0.8, 0.6).exp().sum() * (g[1] - g[0]) ** 2
    assert math.isclose(mass.item(), 1.0, rel_tol=1e-3)
