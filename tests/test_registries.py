"""One home per concept: a solver or a guidance preset added through its registry is known everywhere (sampling,
NFE and budget arithmetic, parsing, specs, serialisation, listings); non-linear guidance plugs into the engine; the
README's tables are the registries' own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from v2a_sampler import denoisers as D
from v2a_sampler import guidance as G
from v2a_sampler import solvers
from v2a_sampler.core.analytic import ConditionalGaussianMixture, GaussianMixture

README = Path(__file__).resolve().parent.parent / "README.md"
CLASSES = ConditionalGaussianMixture(
    [GaussianMixture.gaussian([1.0, -0.5], torch.eye(2) * 0.3), GaussianMixture.gaussian([-2.0, 1.0], torch.eye(2))]
)


def _noise(n=6, seed=0):
    return torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def scratch_registries(monkeypatch):
    """Registries that tests may extend without leaking into other tests."""
    monkeypatch.setattr(solvers, "SOLVERS", dict(solvers.SOLVERS))
    monkeypatch.setattr(solvers, "_ALIASES", dict(solvers._ALIASES))
    monkeypatch.setattr(G, "PRESETS", dict(G.PRESETS))
    monkeypatch.setattr(G, "_PRESET_ALIASES", dict(G._PRESET_ALIASES))


def test_a_solver_added_by_one_registration_is_known_everywhere(scratch_registries):
    # DDIM written as a two-stage "solver" that evaluates (and discards) a second stage: a made-up cost structure
    def loop(denoise, x, timesteps, schedule, callback=None, generator=None, scale=1.0):
        for t, s in zip(timesteps, timesteps[1:], strict=False):
            now, nxt = schedule.terms(t), schedule.terms(s)
            x0 = denoise(x, t) * scale
            if nxt.sigma > 0:
                denoise(x, s)
            x = (nxt.sigma / now.sigma) * x + (nxt.alpha - nxt.sigma * now.alpha / now.sigma) * x0
        return x

    solvers.register(
        solvers.Solver(
            "twostage",
            "test",
            "here",
            loop=loop,
            stages_per_step=2,
            final_stages=1,
            aliases=("two",),
            options=(solvers.Option("scale", 1.0, "x0 multiplier", minimum=0.0),),
        )  # fmt: skip
    )
    good = CLASSES.denoiser("velocity", D.FlowSchedule(1.0))
    cond = {"label": torch.tensor([0, 1] * 3)}
    out, info = solvers.sample(good, _noise(), cond, guidance="cfg(2)", solver="Two", steps=5)
    ref, _ = solvers.sample(good, _noise(), cond, guidance="cfg(2)", solver="euler", steps=5)
    assert torch.allclose(out, ref, atol=1e-12)
    assert info.solver == "twostage" and info.nfe == 2 * (2 * 5 - 1) and info.options == {"scale": 1.0}
    assert solvers.stages_per_sample("two", info.timesteps, good.schedule) == 9
    assert solvers.get_solver("twostage").steps_for_budget(36, 2) == 9  # 2 * (2N - 1) <= 36
    assert solvers.Sampler(good, "cfg(2)", solver="twostage", steps=5).nfe == info.nfe
    with pytest.raises(ValueError, match="has no fused path"):
        solvers.sample(good, _noise(), cond, solver="twostage", steps=2, fused=True)
    assert "`twostage`, `two` | 2 (1 on a last step to sigma = 0) | `scale=1`" in solvers.markdown_table()
    with pytest.raises(ValueError, match="already registered"):
        solvers.register(solvers.Solver("TWO", "dup", "here", loop=loop))


def test_a_preset_added_by_one_registration_parses_serialises_and_lists(scratch_registries):
    # "CFG with a negative-branch offset": eps(c) + w (eps(c) - eps(null)) - i.e. cfg(1 + w), under another name
    G.register_preset(
        G.Preset(
            "xcfg",
            (G.Param("w", 2.0),),
            lambda w: {G.GOOD_COND: 1.0 + w, G.GOOD_NULL: -w},
            "eps(c) + w (eps(c) - eps(null))",
            "test",
            aliases=("plus_cfg",),
        )  # fmt: skip
    )
    g = G.parse("plus_cfg(1.5)")
    assert g.spec() == "xcfg(1.5)" and g.to_dict() == {"type": "xcfg", "w": 1.5}
    assert g.coefficients() == G.cfg(2.5).coefficients() and g.nfe_per_step == 2
    assert G.parse(g.spec()) == g == G.from_dict(g.to_dict())
    assert G.parse("xcfg").coefficients() == G.cfg(3.0).coefficients()  # the registered default
    assert ("xcfg(w)", "eps(c) + w (eps(c) - eps(null))   [test]", "2") in G.presets()
    assert "| `xcfg(w)` |  | eps(c) + w (eps(c) - eps(null)) | test | 2 |" in G.markdown_table()
    with pytest.raises(ValueError, match="xcfg: w=inf is not a finite number"):
        G.PRESETS["xcfg"](float("inf"))


class NormClamp(G.Guidance):
    """A non-linear operator for the test: the inner guided prediction with its per-sample norm capped at the
    conditional prediction's norm, counting the stages it saw in the run's state."""

    def __init__(self, inner: G.Guidance) -> None:
        self.inner = inner

    @property
    def is_linear(self) -> bool:
        return False

    def branch_coefficients(self, level=None):
        return self.inner.branch_coefficients(level)

    def combine(self, predictions, step):
        step.state["stages"] = step.state.get("stages", 0) + 1
        guided = self.inner.combine(predictions, step)
        cap = predictions[G.GOOD_COND].flatten(1).norm(dim=1, keepdim=True)
        norm = guided.flatten(1).norm(dim=1, keepdim=True)
        return guided * torch.clamp(cap / norm, max=1.0).view(-1, *([1] * (guided.ndim - 1)))

    def to_dict(self):
        return {"type": "norm_clamp", "inner": self.inner.to_dict()}

    def spec(self):
        return f"norm_clamp({self.inner.spec()})"


def test_non_linear_guidance_gets_the_predictions_by_branch():
    good = CLASSES.denoiser("velocity", D.FlowSchedule(1.0))
    cond = {"label": torch.tensor([0, 1] * 3)}
    g = NormClamp(G.cfg(4.0))
    assert not g.is_linear and not (0.5 * g + 0.5 * G.cfg(2)).is_linear and G.cfg(2).is_linear
    sampler = solvers.Sampler(good, g, steps=4)
    states = []
    out, info = sampler(_noise(), cond, callback=lambda kw: None)
    assert info.nfe == 8  # the operator does not change the branches it evaluates
    # by hand: Euler steps with the clamped CFG velocity
    x = _noise() * 1.0
    ts = info.timesteps
    for t, s in zip(ts, ts[1:], strict=False):
        tt = torch.full((6,), t, dtype=x.dtype)
        vc, vn = good(x, tt, cond), good(x, tt, None)
        v = vn + 4.0 * (vc - vn)
        v = v * torch.clamp(vc.norm(dim=1, keepdim=True) / v.norm(dim=1, keepdim=True), max=1.0)
        x = x + (s - t) * v
    assert torch.allclose(out, x, atol=1e-12)
    with pytest.raises(ValueError, match="not linear: the fused kernel cannot run it"):
        solvers.Sampler(good, g, steps=4, fused=True)
    # the run's state starts empty every run
    for _ in range(2):
        engine = solvers.GuidedDenoiser(good, g, cond=cond)
        engine(_noise(), 0.5)
        engine(_noise(), 0.4)
        states.append(engine.state["stages"])
    assert states == [2, 2]


def test_readme_tables_are_the_registries():
    text = README.read_text()
    assert solvers.markdown_table() in text
    assert G.markdown_table() in text
