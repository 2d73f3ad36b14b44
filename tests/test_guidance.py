"""The guidance algebra: identities from AudioMoG, parsing, serialization, intervals, AMG awareness."""

from __future__ import annotations

import json
import random
import warnings

import pytest
import torch

from v2a_sampler import guidance as G
from v2a_sampler.denoisers import from_fn

KEYS = ("good:cond", "good:null", "bad:cond", "bad:null")


def _branches(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(5, 3, generator=gen, dtype=torch.float64) for k in KEYS}


def _apply(g: G.Guidance, eps: dict[str, torch.Tensor], level: float | None = None) -> torch.Tensor:
    return sum(c * eps[k] for k, c in g.coefficients(level).items())


def _hg_eq9(eps, w1, w2, w3):
    e_cfg = eps["good:null"] + w1 * (eps["good:cond"] - eps["good:null"])
    e_bad_cfg = eps["bad:null"] + w2 * (eps["bad:cond"] - eps["bad:null"])
    return e_bad_cfg + w3 * (e_cfg - e_bad_cfg)


def _hg_eq11(eps, w1, w2, w3):
    e_cag = eps["bad:cond"] + w1 * (eps["good:cond"] - eps["bad:cond"])
    e_ucag = eps["bad:null"] + w2 * (eps["good:null"] - eps["bad:null"])
    return e_ucag + w3 * (e_cag - e_ucag)


def test_cfg_w1_is_the_conditional_branch():
    g = G.cfg(1.0)
    assert g.coefficients() == {"good:cond": 1.0}
    assert g.nfe_per_step == 1


def test_cfg_and_ag_match_eqs_5_and_6():
    eps = _branches(1)
    w = 4.5
    expect_cfg = eps["good:null"] + w * (eps["good:cond"] - eps["good:null"])
    expect_ag = eps["bad:cond"] + w * (eps["good:cond"] - eps["bad:cond"])
    assert torch.allclose(_apply(G.cfg(w), eps), expect_cfg)
    assert torch.allclose(_apply(G.ag(w), eps), expect_ag)
    assert G.cfg(w).nfe_per_step == 2 and G.ag(w).nfe_per_step == 2
    assert G.ag(w).needs_bad_model and not G.cfg(w).needs_bad_model


def test_pg_matches_eq_10_and_reduces_to_cfg():
    eps = _branches(2)
    w1, w2 = 2.7, 0.15
    expect = eps["good:null"] + w1 * (eps["good:cond"] - eps["good:null"]) + w2 * (eps["good:cond"] - eps["bad:cond"])
    assert torch.allclose(_apply(G.pg(w1, w2), eps), expect)
    assert G.pg(w1, w2).nfe_per_step == 3
    assert G.pg(3.3, 0.0).coefficients() == pytest.approx(G.cfg(3.3).coefficients())
    assert G.pg(3.3, 0.0).nfe_per_step == 2


@pytest.mark.parametrize("seed", range(5))
def test_hg_coefficients_are_eqs_9_and_11_expanded(seed):
    rng = random.Random(seed)
    w1, w2, w3 = (rng.uniform(-1, 5) for _ in range(3))
    eps = _branches(seed)
    assert torch.allclose(_apply(G.hg(w1, w2, w3), eps), _hg_eq9(eps, w1, w2, w3), atol=1e-12)
    assert torch.allclose(_apply(G.hg(w1, w2, w3, order="ag"), eps), _hg_eq11(eps, w1, w2, w3), atol=1e-12)
    # eq. 15 (CFG order) term by term
    c = G.hg(w1, w2, w3).coefficients()
    assert c["good:cond"] == pytest.approx(w1 * w3)
    assert c["good:null"] == pytest.approx(w3 * (1 - w1))
    assert c["bad:cond"] == pytest.approx(w2 * (1 - w3))
    assert c["bad:null"] == pytest.approx((1 - w2) * (1 - w3))
    assert G.hg(w1, w2, w3).nfe_per_step == 4


@pytest.mark.parametrize("seed", range(20))
def test_both_hg_orders_agree_after_reorder(seed):
    rng = random.Random(100 + seed)
    w1, w2, w3 = rng.uniform(-2, 6), rng.uniform(-2, 6), rng.uniform(0.05, 3.0)
    if abs(w3 - 1.0) < 0.05:
        w3 += 0.2
    # keep clear of Theorem 1's excluded set (the reordered w3 = w1 w3 + w2 (1 - w3) must not be 0 or 1), so that a
    # ValueError below is a regression, not bad luck
    while min(abs(w1 * w3 + w2 * (1 - w3) - v) for v in (0.0, 1.0)) < 0.05:
        w2 += 0.3
    eps = _branches(seed)
    a1, a2, a3 = G.hg_reorder(w1, w2, w3, order="cfg")
    lhs = _hg_eq9(eps, w1, w2, w3)
    rhs = _hg_eq11(eps, a1, a2, a3)
    assert torch.allclose(lhs, rhs, atol=1e-6, rtol=1e-6)
    back = G.hg_reorder(a1, a2, a3, order="ag")
    assert back == pytest.approx((w1, w2, w3), rel=1e-9, abs=1e-9)
    assert G.hg(w1, w2, w3).coefficients() == pytest.approx(G.hg(a1, a2, a3, order="ag").coefficients())


def test_hg_reorder_paper_v2a_setting_uses_eq_19():
    # AudioMoG V2A HG: w1=2.7, w2=2.5, w3=1.2 in the CFG order; eq. 18/19 give the AG-order weights.
    w1, w2, w3 = 2.7, 2.5, 1.2
    a1, a2, a3 = G.hg_reorder(w1, w2, w3, "cfg")
    assert a3 == pytest.approx(w1 * w3 + w2 * (1 - w3))
    assert a1 == pytest.approx(w1 * w3 / a3)
    assert a2 == pytest.approx(w3 * (1 - w1) / (1 - a3))


@pytest.mark.parametrize("w3", [0.0, 1.0])
def test_hg_reorder_rejects_degenerate_w3(w3):
    with pytest.raises(ValueError, match="Theorem 1"):
        G.hg_reorder(2.0, 1.5, w3)


def test_hg_reorder_rejects_degenerate_target():
    # target w3 = w1 w3 + w2 (1 - w3) = 1 with w1 = 1.5, w2 = 0.5, w3 = 0.5
    with pytest.raises(ValueError, match="would need w3=1"):
        G.hg_reorder(1.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="order"):
        G.hg_reorder(1.5, 0.5, 0.5, order="xyz")


def test_presets_are_affine_and_mixtures_check_the_sum():
    for g in (
        G.none(),
        G.cfg(7),
        G.ag(2),
        G.pg(2, 3),
        G.hg(),
        G.hg(1, 2, 3, order="ag"),
        G.multi_cfg({"a": 2, "b": 3}),
    ):
        assert g.is_affine, g
        assert sum(g.coefficients().values()) == pytest.approx(1.0)
    m = G.mixture({"good:cond": 1.6, "good:null": -0.4, "bad:cond": -0.2})
    assert m.is_affine and m.nfe_per_step == 3
    with pytest.raises(ValueError, match="sum to 1.2"):
        G.mixture({"good:cond": 1.6, "good:null": -0.4})
    unnorm = G.mixture({"good:cond": 1.6, "good:null": -0.4}, check_sum=False)
    assert not unnorm.is_affine and unnorm.coefficients() == {"good:cond": 1.6, "good:null": -0.4}
    mix = G.mixture([(0.25, G.cfg(3)), (0.75, G.ag(2))])
    assert mix.coefficients() == pytest.approx({"good:cond": 2.25, "good:null": -0.5, "bad:cond": -0.75})
    with pytest.raises(ValueError, match="not affine"):
        G.mixture([(1.0, unnorm)])


def test_linear_combination_operators():
    g = 0.5 * G.cfg(3) + 0.5 * G.ag(2)
    assert g.coefficients() == pytest.approx({"good:cond": 2.5, "good:null": -1.0, "bad:cond": -0.5})
    d = G.cfg(3) - G.cfg(2)
    assert d.coefficients() == pytest.approx({"good:cond": 1.0, "good:null": -1.0})
    assert not d.is_affine
    assert (-G.none()).coefficients() == {"good:cond": -1.0}


@pytest.mark.parametrize(
    "spec, coeffs",
    [
        ("none", {"good:cond": 1.0}),
        ("cfg(4.5)", {"good:cond": 4.5, "good:null": -3.5}),
        ("ag(2)", {"good:cond": 2.0, "bad:cond": -1.0}),
        ("pg(2.7,0.15)", {"good:cond": 2.85, "good:null": -1.7, "bad:cond": -0.15}),
        ("hg(2.7,2.5,1.2)", G.hg(2.7, 2.5, 1.2).coefficients()),
        ("hg", G.hg(2.7, 2.5, 1.2).coefficients()),
        ("cfg", G.cfg(3.0).coefficients()),
        ("ag", G.ag(1.2).coefficients()),
        ("pg", G.pg(2.7, 0.15).coefficients()),
        ("hg(1.5, 1.5, 2, order=ag)", G.hg(1.5, 1.5, 2, order="ag").coefficients()),
        ("cfg(4,drop=text)", {"good:cond": 4.0, "good:null[text]": -3.0}),
        ("ag(2,on=null)", {"good:null": 2.0, "bad:null": -1.0}),
        ("0.5*cfg(3)+0.5*ag(2)", {"good:cond": 2.5, "good:null": -1.0, "bad:cond": -0.5}),
        ("bad:cond", {"bad:cond": 1.0}),
        ("2*good:cond - good:null", {"good:cond": 2.0, "good:null": -1.0}),
        ("multi_cfg(video=3,text=2)", G.multi_cfg({"video": 3, "text": 2}).coefficients()),
    ],
)
def test_parse(spec, coeffs):
    g = G.parse(spec)
    assert g.coefficients() == pytest.approx(coeffs)
    again = G.parse(g.spec())
    assert again == g
    assert G.from_json(g.to_json()) == g
    assert G.from_dict(json.loads(json.dumps(g.to_dict()))).coefficients() == pytest.approx(coeffs)


@pytest.mark.parametrize(
    "spec, msg",
    [
        ("cfgg(3)", "unknown guidance 'cfgg'"),
        ("cfg(3", "expected"),
        ("hg(1,2,3,order=xyz)", "order"),
        ("3", "a number alone"),
        ("cfg(3)@[0.9,0.1]", "lo <= hi"),
        ("", "empty"),
        ("good:maybe", "unexpected"),
        ("none(3)", "none takes no arguments"),
    ],
)
def test_parse_errors_are_one_clear_line(spec, msg):
    with pytest.raises(ValueError, match=msg) as e:
        G.parse(spec)
    assert "\n" not in str(e.value)


def test_interval_skips_inactive_branches():
    g = G.parse("hg(2.7,2.5,1.2)@[0.2,0.8]")
    assert g.nfe_at(0.5) == 4
    assert g.nfe_at(0.1) == 1 and g.nfe_at(0.95) == 1
    assert g.coefficients(0.1) == {"good:cond": 1.0}
    assert g.nfe_per_step == 4
    assert set(G.Branch.parse(k) for k in ("good:cond", "good:null", "bad:cond", "bad:null")) == set(g.all_branches)
    fb = G.interval("cfg(5)", 0.3, 0.6, fallback="cfg(2)")
    assert fb.coefficients(0.9) == pytest.approx({"good:cond": 2.0, "good:null": -1.0})
    assert G.parse(fb.spec()) == fb
    # nested in a linear combination: regimes cover every region
    nested = 0.5 * G.parse("cfg(3)@[0.5,1]") + 0.5 * G.parse("ag(2)@[0,0.4]")
    assert nested.nfe_at(0.45) == 1
    assert nested.nfe_at(0.7) == 2 and nested.nfe_at(0.2) == 2
    assert nested.nfe_per_step == 2


def test_multi_cfg_chain_and_separate():
    eps = {
        "n": torch.tensor(1.0),
        "v": torch.tensor(3.0),  # video only (text dropped)
        "vt": torch.tensor(7.0),  # both
        "t": torch.tensor(2.0),  # text only (video dropped)
    }
    keymap = {"good:null[text,video]": "n", "good:null[text]": "v", "good:cond": "vt", "good:null[video]": "t"}
    chain = G.multi_cfg({"video": 3.0, "text": 2.0})
    val = sum(c * eps[keymap[k]] for k, c in chain.coefficients().items())
    assert val.item() == pytest.approx(1 + 3 * (3 - 1) + 2 * (7 - 3))
    sep = G.multi_cfg({"video": 3.0, "text": 2.0}, mode="separate")
    val = sum(c * eps[keymap[k]] for k, c in sep.coefficients().items())
    assert val.item() == pytest.approx(7 + 2 * (7 - 2) + 1 * (7 - 3))
    assert chain.nfe_per_step == 3 and sep.nfe_per_step == 3
    # one condition: both modes are CFG dropping that condition
    assert G.multi_cfg({"text": 4.0}).coefficients() == G.cfg(4.0, drop="text").coefficients()
    assert G.multi_cfg({"text": 4.0}, mode="separate").coefficients() == pytest.approx(
        G.cfg(4.0, drop="text").coefficients()
    )


def test_branch_keys():
    assert G.Branch.parse("good:null[video,text]").key == "good:null[text,video]"
    assert G.Branch.parse("bad:null").drop == ("*",)
    for bad in ("ugly:cond", "good:cond[text]", "good", "good:null[]"):
        with pytest.raises(ValueError):
            G.Branch.parse(bad)


def _model(amg=None):
    return from_fn(lambda x, t, c: x, amg_weight=amg)


def test_resolve_defaults_and_amg_awareness():
    assert G.resolve(None, _model()) == G.cfg()
    assert G.resolve(None, _model(), bad=_model()) == G.hg()
    amg = _model(amg=0.5)
    g = G.resolve(None, amg)
    assert g == G.cfg(G.AMG_DEFAULT_CFG)
    assert G.amg_effective_strength(g, 0.5) == pytest.approx(1.45 / 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        G.resolve("cfg(1.45)", amg)  # small extra CFG: no warning
    with pytest.warns(UserWarning, match="effective strength of 9"):
        G.resolve("cfg(4.5)", amg)
    with pytest.raises(ValueError, match="needs a bad model"):
        G.resolve("hg", _model())
