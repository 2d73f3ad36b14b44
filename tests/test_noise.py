"""Noise sources: the Brownian tree is one Brownian motion per row (exact additivity, Gaussian increments with the
right covariances, batches equal their rows), so an SDE solver driven by it converges to one sample path as the
steps grow; fresh draws do not."""

from __future__ import annotations

import math

import pytest
import torch

from v2a_sampler import denoisers as D
from v2a_sampler import solvers
from v2a_sampler.core.analytic import gaussian_denoiser
from v2a_sampler.core.noise import BrownianTreeNoise, GeneratorNoise, noise_source

MEAN = torch.tensor([1.0, -0.5])
COV = torch.tensor([[0.3, 0.2], [0.2, 2.0]])
#: Rows x elements of the statistics test (standard error of a correlation about 1 / sqrt(ROWS * ELEMENTS)).
ROWS, ELEMENTS = 2000, 16


def test_increments_add_up_exactly_and_rows_are_independent_of_the_batch():
    tree = BrownianTreeNoise([3, 4, 5])
    like = torch.zeros(3, 2, 5, dtype=torch.float64)
    levels = [0.97, 0.8, 0.31, 0.3, 0.0021, 0.0]
    fine = sum(tree.increment(like, a, b) for a, b in zip(levels, levels[1:], strict=False))
    assert torch.allclose(fine, tree.increment(like, levels[0], levels[-1]), atol=1e-12, rtol=0)
    # normalised noise: coarse z * sqrt(width) is the sum of the fine ones
    z = [tree(like, a, b) * math.sqrt(a - b) for a, b in zip(levels, levels[1:], strict=False)]
    assert torch.allclose(sum(z), tree(like, 0.97, 0.0) * math.sqrt(0.97), atol=1e-12, rtol=0)
    # row i of a batch is the row alone with its seed; an integer seed s is the seeds s, s + 1, ...
    for i, seed in enumerate([3, 4, 5]):
        alone = BrownianTreeNoise([seed])(like[:1], 0.8, 0.3)
        assert torch.equal(alone[0], tree(like, 0.8, 0.3)[i])
    assert torch.equal(BrownianTreeNoise(3)(like, 0.8, 0.3), tree(like, 0.8, 0.3))
    assert not torch.equal(BrownianTreeNoise(6)(like, 0.8, 0.3), tree(like, 0.8, 0.3))
    # float32 states get the same path (computed in float64, then cast)
    assert torch.equal(tree(like.float(), 0.8, 0.3), tree(like, 0.8, 0.3).float())


def test_increments_are_brownian():
    tree = BrownianTreeNoise(list(range(ROWS)))
    like = torch.zeros(ROWS, ELEMENTS, dtype=torch.float64)
    a, b, c = 0.9, 0.6, 0.05
    z_ab, z_bc, z_ac = tree(like, a, b), tree(like, b, c), tree(like, a, c)
    se = 1.0 / math.sqrt(ROWS * ELEMENTS)
    for z in (z_ab, z_bc, z_ac):
        assert abs(z.mean().item()) < 5 * se and abs(z.var().item() - 1.0) < 5 * math.sqrt(2) * se
    assert abs((z_ab * z_bc).mean().item()) < 5 * se  # disjoint intervals: independent
    assert (z_ab * z_ac).mean().item() == pytest.approx(math.sqrt((a - b) / (a - c)), abs=5 * se)  # overlapping
    w = torch.from_numpy(tree.path(0.3, ROWS, ELEMENTS))
    assert w.var().item() == pytest.approx(0.3, rel=5 * math.sqrt(2) * se)  # Var W(u) = u


@pytest.mark.parametrize("solver", ["dpmpp_2m_sde", "dpmpp_sde", "euler_a"])
def test_the_same_seed_gives_the_same_path_at_any_step_count(solver):
    """Driven by one Brownian tree, an SDE solver's samples converge as the steps grow (to the solution of the SDE on
    that path); with fresh draws every run, they do not."""
    den = gaussian_denoiser(MEAN, COV, "velocity", D.FlowSchedule(1.0))
    noise = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    seeds = list(range(100, 132))

    def run(steps, generator):
        return solvers.sample(den, noise, guidance="none", solver=solver, steps=steps, generator=generator)[0]

    ref = run(512, BrownianTreeNoise(seeds))
    errs = [(run(n, BrownianTreeNoise(seeds)) - ref).norm(dim=1).mean().item() for n in (8, 32, 128)]
    assert errs[0] > 2 * errs[1] > 4 * errs[2], errs
    fresh = (run(128, torch.Generator().manual_seed(1)) - ref).norm(dim=1).mean().item()
    assert fresh > 20 * errs[2], (fresh, errs)
    # and through the sampler option: a tree seeded from the run's generators
    a = solvers.sample(den, noise, guidance="none", solver=solver, steps=16, brownian=True,
                       generator=[torch.Generator().manual_seed(s) for s in seeds])[0]  # fmt: skip
    b = solvers.sample(den, noise[:1], guidance="none", solver=solver, steps=16, brownian=True,
                       generator=[torch.Generator().manual_seed(seeds[0])])[0]  # fmt: skip
    assert torch.equal(a[:1], b)


def test_sources_and_their_errors():
    like = torch.zeros(2, 3)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(GeneratorNoise(g)(like, 0.5, 0.2), torch.randn(2, 3, generator=torch.Generator().manual_seed(0)))
    assert isinstance(noise_source(None), GeneratorNoise) and isinstance(noise_source(g), GeneratorNoise)
    tree = BrownianTreeNoise(1)
    assert noise_source(tree) is tree
    assert isinstance(noise_source([g, g], brownian=True), BrownianTreeNoise)
    with pytest.raises(ValueError, match="brownian=True seeds a Brownian tree from generators; a noise source was"):
        noise_source(tree, brownian=True)
    with pytest.raises(TypeError, match="generator must be a torch.Generator, a list of them or a noise source"):
        noise_source(3)
    with pytest.raises(ValueError, match="got 3 Brownian tree seeds for a batch of 2"):
        BrownianTreeNoise([1, 2, 3])(like, 0.5, 0.2)
    with pytest.raises(ValueError, match="Brownian tree seeds must be integers from 0 to 2\\*\\*63 - 1, got -1"):
        BrownianTreeNoise(-1)
    with pytest.raises(ValueError, match="a Brownian increment needs a decreasing noise level, got 0.2 -> 0.5"):
        tree(like, 0.2, 0.5)
    with pytest.raises(ValueError, match="got 3 generators for a batch of 2"):
        GeneratorNoise([g, g, g])(like, 0.5, 0.2)
    den = gaussian_denoiser(MEAN, COV, "velocity", D.FlowSchedule(1.0))
    with pytest.raises(ValueError, match="brownian must be true or false"):
        solvers.Sampler(den, "none", solver="euler_a", steps=2, brownian=2)
