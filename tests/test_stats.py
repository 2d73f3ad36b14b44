"""Statistics for method comparisons: pooled metrics from per-clip counts, the paired bootstrap, KID."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from v2a_sampler.metrics.onsets import OnsetCounts
from v2a_sampler.metrics.stats import ClipScores, kid, paired_bootstrap, pooled


def _scores(matched, estimated=10, reference=10, correct=5, total=10, windows=None):
    n = len(matched)
    return ClipScores(
        [OnsetCounts(m, estimated, reference) for m in matched],
        [correct] * n,
        [total] * n,
        windows or [torch.zeros(2, 3)] * n,
    )


def test_pooled_metrics_are_the_summed_counts():
    s = _scores([2, 6, 4], estimated=8, reference=10)
    assert pooled(s, "onset_f1") == pytest.approx(2 * 12 / (24 + 30))
    assert pooled(s, "onset_precision") == pytest.approx(12 / 24)
    assert pooled(s, "onset_f1", idx=[1, 1]) == pytest.approx(2 * 12 / (16 + 20))  # a bootstrap repeat counts twice
    assert pooled(s, "class_accuracy") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="needs the reference windows"):
        pooled(s, "fd")


def test_paired_bootstrap_sees_a_consistent_gain_and_no_gain():
    rng = np.random.default_rng(0)
    base = rng.integers(2, 8, 30).tolist()
    a, b = _scores(base), _scores([m + 1 for m in base])  # b finds one more onset in every clip
    c = paired_bootstrap(a, b, "onset_f1", n_boot=500)
    assert c.diff == pytest.approx(0.1) and c.significant and c.lo > 0.05 and c.p < 0.01
    same = paired_bootstrap(a, _scores(base), "onset_f1", n_boot=200)
    assert same.diff == 0.0 and same.lo == 0.0 == same.hi and not same.significant and same.p == 1.0
    noisy = _scores([m + int(rng.integers(-1, 2)) for m in base])  # +-1 at random: no systematic difference
    assert not paired_bootstrap(a, noisy, "onset_f1", n_boot=500).significant
    assert "+0.1 [" in c.cell() and c.cell().endswith("]*")
    with pytest.raises(ValueError, match="same clips"):
        paired_bootstrap(a, _scores(base[:5]), "onset_f1")


def test_kid_is_unbiased_near_zero_and_detects_a_shift():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 8, generator=gen), torch.randn(400, 8, generator=gen)
    value, se = kid(x, y)
    assert abs(value) < 3 * se + 1e-3
    # unbiased: over many independent small draws of one distribution the estimates average to ~0
    draws = [kid(torch.randn(40, 8, generator=gen), torch.randn(40, 8, generator=gen), blocks=2)[0] for _ in range(200)]
    assert abs(np.mean(draws)) < 3 * np.std(draws) / np.sqrt(200)
    shifted, se2 = kid(x + 0.5, y)
    assert shifted > 5 * se2 and shifted > value
    with pytest.raises(ValueError, match="kid needs"):
        kid(torch.randn(5, 8), y)
