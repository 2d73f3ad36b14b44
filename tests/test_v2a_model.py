"""The embedded V2A flow transformer: shapes, nulls, encode-once, stacked branches, save/load."""

from __future__ import annotations

import pytest
import torch

from v2a_sampler import solvers
from v2a_sampler.models import from_pretrained, save_pretrained
from v2a_sampler.models.v2a_flow import KEEP_KEY, V2AFlow

TINY = dict(n_mels=16, patch=2, dim=32, depth=2, heads=2, video_dim=16, frame_size=16, encoder_width=8)


def _model(seed=0):
    torch.manual_seed(seed)
    m = V2AFlow(**TINY).eval()
    with torch.no_grad():  # AdaLN-zero starts as the zero map; perturb so the tests see a real function
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def _inputs(b=2, frames=21, tv=10):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 16, frames, generator=g)
    video = torch.randint(0, 256, (b, tv, 24, 24, 3), generator=g, dtype=torch.uint8)
    return x, torch.rand(b, generator=g), {"video": video}


def test_shapes_odd_lengths_and_null():
    m = _model()
    x, t, cond = _inputs()
    with torch.no_grad():
        y = m(x, t, cond)
        y_null = m(x, t, m.drop(cond, ["video"]))
    assert y.shape == x.shape and y_null.shape == x.shape
    assert not torch.allclose(y, y_null)
    assert m.drop(cond, ["video"])["video"] is None
    with pytest.raises(ValueError, match=r"expects x of shape \[B, 16, T\]"):
        m(torch.randn(2, 8, 10), t, cond)


def test_encode_once_equals_encoding_inside_forward():
    m = _model()
    x, t, cond = _inputs()
    with torch.no_grad():
        enc = m.encode_conditions(cond)
        assert enc["video"].shape == (2, 10, 16)
        assert torch.allclose(m(x, t, cond), m(x, t, enc), atol=1e-6)


def test_stacked_branches_equal_separate_forwards():
    m = _model()
    x, t, cond = _inputs()
    with torch.no_grad():
        enc = m.encode_conditions(cond)
        stacked = m.batch_conditions([enc, m.drop(enc, ["video"])], 2)
        assert stacked[KEEP_KEY].tolist() == [True, True, False, False]
        both = m(torch.cat([x, x]), torch.cat([t, t]), stacked)
        assert torch.allclose(both[:2], m(x, t, enc), atol=1e-5)
        assert torch.allclose(both[2:], m(x, t, None), atol=1e-5)
        _, info = solvers.sample(m, torch.randn(2, 16, 21), enc, guidance="cfg(3)", steps=3)
        assert info.forwards == 3 and info.nfe == 6


def test_save_and_load_round_trip(tmp_path):
    m = _model()
    save_pretrained(m, tmp_path / "v2a")
    loaded = from_pretrained(tmp_path / "v2a")
    assert isinstance(loaded, V2AFlow) and loaded.arch_kwargs == m.arch_kwargs
    x, t, cond = _inputs()
    with torch.no_grad():
        assert torch.allclose(loaded(x, t, cond), m(x, t, cond), atol=1e-6)


def test_good_and_bad_model_in_one_stacked_pass():
    good, bad = _model(0), _model(1)
    x = torch.randn(2, 16, 21, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        cond = good.encode_conditions(_inputs()[2])
        bad_cond = bad.encode_conditions(_inputs()[2])
        outs = {}
        for stack in (False, True):
            outs[stack] = solvers.sample(good, x, cond, guidance="hg", bad=bad, bad_cond=bad_cond, steps=3,
                                         stack_models=stack)  # fmt: skip
    assert torch.allclose(outs[True][0], outs[False][0], atol=1e-4)
    assert outs[True][1].nfe == outs[False][1].nfe == 12
    assert outs[True][1].forwards == 3 and outs[False][1].forwards == 6  # one vmapped call per step
    with pytest.raises(ValueError, match="share one architecture"):
        solvers.sample(good, x, cond, guidance="hg", bad=V2AFlow(**{**TINY, "dim": 16}), steps=1, stack_models=True)


def test_conditions_prepared_once_per_sample(monkeypatch):
    """Prepared conditions give the same output; the engine prepares each branch group once, not every step."""
    m = _model()
    x, t, cond = _inputs()
    with torch.no_grad():
        enc = m.encode_conditions(cond)
        assert torch.equal(m(x, t, m.prepare_conditions(enc, x)), m(x, t, enc))
        with pytest.raises(ValueError, match="does not fit the prepared video condition"):
            m(x[:, :, :9], t, m.prepare_conditions(enc, x))
        calls = []
        real = V2AFlow.prepare_conditions
        monkeypatch.setattr(
            V2AFlow, "prepare_conditions", lambda self, c, xx: calls.append(xx.shape) or real(self, c, xx)
        )
        out, info = solvers.sample(m, x, enc, guidance="cfg(3)", steps=4)
        assert calls == [(4, 16, 21)]  # one stacked (cond + null) preparation for 4 steps
        calls.clear()
        single, _ = solvers.sample(m, x, enc, guidance="cfg(3)", steps=4, batch_branches=False)
        assert calls == [(2, 16, 21), (2, 16, 21)]
    assert torch.allclose(out, single, atol=1e-5)
