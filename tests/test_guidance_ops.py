"""Non-affine guidance operators (rescale, APG, CFG-Zero*, MAMBO-G), weight schedules and step windows: parity with
diffusers' guiders on fixed predictions (fixtures from tools/diffusers_guiders_ref.py), hand-written references of
the papers' formulas through whole sampling runs, exact NFE, batch = rows one by one, per-run state, the fused-path
rule, parse/spec/dict round trips and errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import bench
import pytest
import torch
from safetensors import safe_open
from test_nfe_budget import _load_benchmark
from typer.testing import CliRunner

from v2a_sampler import denoisers as D
from v2a_sampler import guidance as G
from v2a_sampler import solvers
from v2a_sampler.cli import app
from v2a_sampler.core.analytic import ConditionalGaussianMixture, GaussianMixture
from v2a_sampler.lab.toy2d import pretrained

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "guiders" / "diffusers_guiders.safetensors"
CLASSES = ConditionalGaussianMixture(
    [GaussianMixture.gaussian([1.0, -0.5], torch.eye(2) * 0.3), GaussianMixture.gaussian([-2.0, 1.0], torch.eye(2))]
)
#: A worse model of the same classes (broader, shifted): the bad model of the AG-type tests.
BAD_CLASSES = ConditionalGaussianMixture(
    [
        GaussianMixture.gaussian([0.8, -0.3], torch.eye(2) * 0.6),
        GaussianMixture.gaussian([-1.5, 0.8], torch.eye(2) * 1.5),
    ]
)
COND = {"label": torch.tensor([0, 1, 1, 0, 1, 0])}
STEPS = 8
#: Predictions of a 1-D latent (channels, frames) for the pure-combine tests.
SHAPE = (3, 2, 5)


def _noise(n=6, seed=0):
    return torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _models(prediction="velocity"):
    sched = D.FlowSchedule(1.0)
    return CLASSES.denoiser(prediction, sched), BAD_CLASSES.denoiser(prediction, sched)


def _fixture():
    with safe_open(str(FIXTURE), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        settings = json.loads(f.metadata()["settings"])
    return tensors, settings


def _native_step(level=0.5, state=None, prediction=D.Prediction.EPS):
    terms = D.FlowSchedule(1.0).terms(level)
    return G.GuidedStep(torch.zeros(SHAPE, dtype=torch.float64), level, level, terms, prediction,
                        {} if state is None else state)  # fmt: skip


def _pair(cond, uncond):
    return {G.GOOD_COND: cond, G.GOOD_NULL: uncond}


# ---------------------------------------------------------------------------------------------------------------
# Parity with diffusers' guiders (same predictions, native space)
# ---------------------------------------------------------------------------------------------------------------


def test_rescale_apg_zero_star_mambo_equal_diffusers_guiders():
    t, s = _fixture()
    cond, uncond = t["cond"], t["uncond"]
    steps = cond.shape[0]
    levels = [1.0 - i / steps for i in range(steps + 1)]  # any decreasing grid: only the step index matters here
    ops = {
        "rescale": G.rescale(G.cfg(s["rescale"]["w"]), phi=s["rescale"]["phi"], space="native"),
        "apg": G.apg(
            G.cfg(s["apg"]["w"]), eta=s["apg"]["eta"], r=s["apg"]["r"], beta=s["apg"]["beta"], space="native"
        ),  # fmt: skip
        "apg_plain": G.apg(G.cfg(s["apg"]["w"]), space="native"),
        "zero_star": G.zero_star(G.cfg(s["zero_star"]["w"]), k=s["zero_star"]["k"], space="native").on_grid(levels),
        "mambo": G.mambo(G.cfg(s["mambo"]["w"]), alpha=s["mambo"]["alpha"]),
    }
    for name, op in ops.items():
        state: dict = {}
        ours = torch.stack(
            [op.combine(_pair(cond[i], uncond[i]), _native_step(levels[i], state)) for i in range(steps)]
        )
        # diffusers computes CFG-Zero*'s scale in float32; everything else runs in float64 on both sides
        tol = 1e-6 if name == "zero_star" else 1e-12
        torch.testing.assert_close(ours, t[name], rtol=tol, atol=tol, msg=name)
    assert (t["zero_star"][0] == 0).all() and t["apg"][0].abs().sum() > 0
    # the cap was active on some rows and not on others, and the momentum changed the result
    norms = (cond[0] - uncond[0]).flatten(1).norm(dim=1)
    assert norms.min() < s["apg"]["r"] < norms.max()
    assert not torch.allclose(t["apg"], t["apg_plain"])


def test_window_equals_diffusers_start_stop_steps():
    t, s = _fixture()
    for n, start, stop in s["windows"]:
        schedule = D.FlowSchedule(0.0)  # MMAudio's convention: noise levels are what count
        levels = [schedule.terms(float(x)).noise_level for x in solvers.get_timesteps(schedule, n)]
        w = G.window(G.cfg(3), start, stop).on_grid(levels)
        flags = [int(w.nfe_at(levels[i]) == 2) for i in range(n)]
        assert flags == t[f"window_{n}_{start}_{stop}"].tolist(), (n, start, stop)


# ---------------------------------------------------------------------------------------------------------------
# The papers' formulas, written out by hand, through whole sampling runs
# ---------------------------------------------------------------------------------------------------------------


def _flow_x0(x, t, v):  # flow with noise at t=1: x = (1 - t) x0 + t eps, v = eps - x0
    return x - t * v


def _euler(x, t, s, x0):  # DDIM / flow Euler from t to s given x0
    return (s / t) * x + ((1 - s) - s * (1 - t) / t) * x0


def _run_by_hand(guided_x0, steps=STEPS):
    """Euler on a uniform flow grid with ``guided_x0(i, x, t, branch_velocities)``."""
    good, bad = _models()
    x = _noise() * 1.0
    ts = [1.0 - i / steps for i in range(steps + 1)]
    for i, (t, s) in enumerate(zip(ts, ts[1:], strict=False)):
        tt = torch.full((x.shape[0],), t, dtype=x.dtype)
        v = {"c": good(x, tt, COND), "u": good(x, tt, None), "bc": bad(x, tt, COND), "bu": bad(x, tt, None)}
        x = _euler(x, t, s, guided_x0(i, x, t, v))
    return x


def _sampled(spec, solver="euler", steps=STEPS, noise=None, cond=COND, prediction="velocity", **kw):
    good, bad = _models(prediction)
    sampler = solvers.Sampler(good, spec, bad=bad, solver=solver, steps=steps, **kw)
    out, info = sampler(_noise() if noise is None else noise, cond)
    assert info.nfe == sampler.nfe
    return out, info


def _rows(v):
    return v.flatten(1)


def test_apg_on_hg_is_the_papers_algorithm_in_x0_space():
    w1, w2, w3, eta, r, beta = 2.7, 2.5, 1.2, 0.3, 0.4, -0.5
    memory = {}

    def guided(i, x, t, v):
        x0 = {k: _flow_x0(x, t, val) for k, val in v.items()}
        cfg_good = x0["u"] + w1 * (x0["c"] - x0["u"])
        cfg_bad = x0["bu"] + w2 * (x0["bc"] - x0["bu"])
        hg = cfg_bad + w3 * (cfg_good - cfg_bad)  # AudioMoG eq. 9
        s = w1 * w3 - 1.0
        d = (hg - x0["c"]) / s
        if "d" in memory:
            d = d + beta * memory["d"]
        memory["d"] = d
        d = d * torch.clamp(r / _rows(d).norm(dim=1, keepdim=True), max=1.0)
        unit = x0["c"] / _rows(x0["c"]).norm(dim=1, keepdim=True)
        par = (d * unit).sum(dim=1, keepdim=True) * unit
        return x0["c"] + s * ((d - par) + eta * par)

    out, info = _sampled(f"apg(hg({w1},{w2},{w3}),eta={eta},r={r},beta={beta})")
    torch.testing.assert_close(out, _run_by_hand(guided), rtol=1e-12, atol=1e-12)
    assert info.nfe == 4 * STEPS and info.guidance["type"] == "apg"


def test_rescale_is_lin_et_al_in_v_space():
    w, phi = 4.0, 0.6

    def guided(i, x, t, v):
        alpha, sigma = 1.0 - t, t
        x0 = {k: _flow_x0(x, t, val) for k, val in v.items()}
        vpred = {k: alpha * (x - alpha * p) / sigma - sigma * p for k, p in x0.items()}  # v = alpha eps - sigma x0
        guided_v = vpred["u"] + w * (vpred["c"] - vpred["u"])
        factor = _rows(vpred["c"]).std(dim=1, keepdim=True) / _rows(guided_v).std(dim=1, keepdim=True)
        v_out = phi * guided_v * factor + (1 - phi) * guided_v
        return (alpha * x - sigma * v_out) / (alpha**2 + sigma**2)  # x0 from v

    out, _ = _sampled(f"rescale(cfg({w}),phi={phi})")
    torch.testing.assert_close(out, _run_by_hand(guided), rtol=1e-12, atol=1e-12)


def test_zero_star_is_fan_et_al_on_velocities_with_zero_init():
    w, k = 3.5, 2

    def guided(i, x, t, v):
        if i < k:
            return _flow_x0(x, t, torch.zeros_like(x))  # zero velocity: x0 = x
        s_star = (v["c"] * v["u"]).sum(dim=1, keepdim=True) / ((v["u"] ** 2).sum(dim=1, keepdim=True) + 1e-8)
        return _flow_x0(x, t, s_star * v["u"] + w * (v["c"] - s_star * v["u"]))

    out, info = _sampled(f"zero_star(cfg({w}),k={k})")
    torch.testing.assert_close(out, _run_by_hand(guided), rtol=1e-12, atol=1e-12)
    assert info.nfe == 2 * STEPS  # the zero-init steps still evaluate G's branches (as diffusers)
    # on an x0-predicting model the same operator still acts on velocities: the same samples
    x0_out, _ = _sampled(f"zero_star(cfg({w}),k={k})", prediction="x0")
    torch.testing.assert_close(x0_out, out, rtol=1e-9, atol=1e-9)


def test_mambo_damps_cfg_by_the_update_magnitude():
    w, alpha = 6.0, 1.5

    def guided(i, x, t, v):
        diff = v["c"] - v["u"]
        ratio = _rows(diff).norm(dim=1, keepdim=True) / _rows(v["u"]).norm(dim=1, keepdim=True)
        scale = 1.0 + (w - 1.0) * torch.exp(-alpha * ratio)
        return _flow_x0(x, t, v["u"] + scale * diff)

    out, _ = _sampled(f"mambo(cfg({w}),alpha={alpha})")
    torch.testing.assert_close(out, _run_by_hand(guided), rtol=1e-12, atol=1e-12)


def test_space_map_is_the_denoisers_conversion():
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    p = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for schedule, t in ((D.FlowSchedule(1.0), 0.7), (D.FlowSchedule(0.0), 0.2), (D.VPSchedule(), 0.5),
                        (D.EDMSchedule(), 3.0)):  # fmt: skip
        terms = schedule.terms(t)
        for src in D.Prediction:
            for dst in D.Prediction:
                a, b = G.space_map(src, dst, terms)
                torch.testing.assert_close(
                    a * x + b * p, D.convert(p, x, t, schedule, src, dst), rtol=1e-12, atol=1e-12
                )
    with pytest.raises(ValueError, match="cannot act on eps where alpha = 0"):
        G.space_map("velocity", "eps", D.FlowSchedule(1.0).terms(1.0))


# ---------------------------------------------------------------------------------------------------------------
# Exact NFE, batching, per-run state, fused path
# ---------------------------------------------------------------------------------------------------------------

OPERATOR_SPECS = (
    "apg(pg(2.7,0.15),eta=0.2,r=0.3,beta=-0.5)",
    "rescale(hg,phi=0.7)",
    "zero_star(cfg(3),k=1)",
    "mambo(cfg(4),alpha=2)",
)


@pytest.mark.parametrize("spec", OPERATOR_SPECS)
def test_operators_keep_nfe_batching_and_rows_independent(spec):
    g = G.parse(spec)
    out, info = _sampled(spec, solver="heun", steps=4)
    _, inner_info = _sampled(g.inner.spec(), solver="heun", steps=4)
    assert (info.nfe, info.forwards, info.nfe_by_role) == (inner_info.nfe, inner_info.forwards, inner_info.nfe_by_role)
    assert g.nfe_per_step == g.inner.nfe_per_step and not g.is_linear
    # a batch is its rows sampled one by one (norms, stds and momentum are per row)
    noise = _noise()
    for i in range(noise.shape[0]):
        row, _ = _sampled(
            spec, solver="heun", steps=4, noise=noise[i : i + 1], cond={"label": COND["label"][i : i + 1]}
        )
        torch.testing.assert_close(row, out[i : i + 1], rtol=1e-12, atol=1e-12)
    # the state (APG's momentum) starts afresh every run of one sampler
    good, bad = _models()
    sampler = solvers.Sampler(good, spec, bad=bad, steps=4)
    first, second = sampler(noise, COND)[0], sampler(noise, COND)[0]
    assert torch.equal(first, second)
    with pytest.raises(ValueError, match="is not linear: the fused kernel cannot run it"):
        solvers.Sampler(good, spec, bad=bad, steps=4, fused=True)


def test_identity_options_keep_the_linear_fast_path():
    for spec in ("apg(cfg(3),eta=1)", "rescale(cfg(3),phi=0)", "mambo(cfg(3),alpha=0)"):
        g = G.parse(spec)
        assert g.is_linear and g.coefficients() == G.cfg(3).coefficients()
        fused, _ = _sampled(spec, fused=True)  # the torch reference of the fused kernel on CPU
        plain, _ = _sampled("cfg(3)")
        torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)


def test_operators_need_the_conditional_branch_and_pass_through_where_it_is_off():
    with pytest.raises(
        ValueError, match=r"apg\(\) needs the conditional branch good:cond in its guidance; ag\(2,on=null\)"
    ):
        G.apg(G.ag(2, on="null"))
    # where inner does not evaluate good:cond (weight 0 at that level), the operator is inner
    g = G.apg(G.cfg(G.linear(0.0, 3.0)))
    step = _native_step(level=1.0, prediction=D.Prediction.X0)
    uncond = torch.randn(SHAPE, dtype=torch.float64)
    assert g.branches(1.0) == (G.GOOD_NULL,) and g.nfe_at(1.0) == 1
    assert torch.equal(g.combine({G.GOOD_NULL: uncond}, step), uncond)


def test_a_non_linear_sum_keeps_branches_whose_coefficients_cancel():
    g = G.parse("apg(cfg(3))-cfg(3)+good:cond")  # good:null cancels in the coefficient sum; apg still needs it
    assert g.branches(0.5) == (G.GOOD_COND, G.GOOD_NULL) and g.nfe_per_step == 2
    out, info = _sampled(g)
    assert info.nfe == 2 * STEPS


# ---------------------------------------------------------------------------------------------------------------
# Weight schedules and windows
# ---------------------------------------------------------------------------------------------------------------


def test_scheduled_weights_read_the_noise_level():
    lin, cos = G.linear(1.0, 4.0), G.cosine(2.7, 1.0)
    assert (lin(1.0), lin(0.0), lin(0.5)) == (1.0, 4.0, 2.5)
    assert cos(1.0) == pytest.approx(2.7) and cos(0.0) == 1.0 and cos(0.5) == pytest.approx(1.85)
    g = G.parse("hg(cosine(2.7,1),2.5,linear(1.2,2))")
    for level in (0.0, 0.3, 1.0):
        ref = G.hg(cos(level), 2.5, 1.2 + 0.8 * (1 - level)).branch_coefficients(level)
        assert g.branch_coefficients(level) == pytest.approx(ref)
    assert (
        g.is_affine and g.nfe_per_step == 4 and g.coefficients() == pytest.approx(G.hg(1.85, 2.5, 1.6).coefficients())
    )
    mc = G.parse("multi_cfg(video=linear(3,1),text=2)")
    assert mc.branch_coefficients(0.25) == pytest.approx(G.multi_cfg({"video": 1.5, "text": 2}).branch_coefficients())
    assert G.parse("cfg(constant(3))") == G.cfg(3) and isinstance(G.parse("cfg(constant(3))"), G.Linear)


def test_a_schedule_that_zeroes_a_coefficient_skips_the_branch_there():
    good, _ = _models()
    g = G.parse("cfg(linear(1,4))")  # w = 1 at pure noise: good:null has coefficient 0 there
    sampler = solvers.Sampler(good, g, steps=STEPS)
    out, info = sampler(_noise(), COND)
    assert g.nfe_at(1.0) == 1 and g.nfe_per_step == 2 and info.nfe == sampler.nfe == 2 * STEPS - 1
    # a Python callable gives the same samples (and cannot be written down)
    fn = G.cfg(lambda level: 4.0 - 3.0 * level)
    out_fn, info_fn = solvers.Sampler(good, fn, steps=STEPS)(_noise(), COND)
    torch.testing.assert_close(out_fn, out, rtol=1e-12, atol=1e-12)
    assert info_fn.guidance["type"] == "unserialisable" and "Python callable weight" in info_fn.guidance["reason"]
    for write in (fn.spec, fn.to_dict):
        with pytest.raises(
            G.SerializationError, match=r"a Python callable weight \(<callable .*<lambda>>\) has no spec"
        ):
            write()
    with pytest.raises(ValueError, match="was not recorded"):
        G.from_dict(info_fn.guidance)
    assert fn == fn and fn != G.cfg(lambda level: 4.0 - 3.0 * level) and "callable" in repr(fn)
    with pytest.raises(ValueError, match="returned nan at noise level 1"):
        G.cfg(lambda level: math.nan).branch_coefficients(1.0)


def test_window_is_sugar_over_the_grids_noise_levels():
    # 10 uniform steps, start 0.2, stop 0.8: steps 2..7 guided = noise levels 0.8 .. 0.3
    out, info = _sampled("cfg(3,start=0.2,stop=0.8)", steps=10)
    same, info2 = _sampled("cfg(3)@[0.25,0.8]", steps=10)
    assert torch.equal(out, same) and info.nfe == info2.nfe == 2 * 6 + 4
    assert info.guidance == {"type": "window", "inner": {"type": "cfg", "w": 3.0}, "start": 0.2, "stop": 0.8}
    # Heun's corrector at t_{i+1} counts for step i + 1: 10 steps -> 19 stages, guided where the level is in (0.2, 0.8]
    _, heun = _sampled("cfg(3,start=0.2,stop=0.8)", solver="heun", steps=10)
    assert heun.nfe == 19 + 12
    good, _ = _models()
    with pytest.raises(ValueError, match="defined over the sampling grid's steps"):
        solvers.GuidedDenoiser(good, G.parse("window(cfg(3),stop=0.5)"), cond=COND)
    with pytest.raises(ValueError, match="defined over the sampling grid's steps"):
        solvers.GuidedDenoiser(good, G.parse("zero_star(cfg(3))"), cond=COND)
    solvers.GuidedDenoiser(good, G.parse("zero_star(cfg(3),k=0)"), cond=COND)  # no zero-init: no grid needed


# ---------------------------------------------------------------------------------------------------------------
# Spelling: parse / spec / dict round trips, listings, errors, --explain
# ---------------------------------------------------------------------------------------------------------------

ROUND_TRIPS = (
    "apg(cfg(7),eta=0.5,r=15,beta=-0.5)",
    "apg(hg(2.7,2.5,1.2),space=native)",
    "rescale(pg(2.7,0.15),phi=0.5,space=x0)",
    "zero_star(cfg(4),k=2)",
    "mambo(cfg(10),alpha=4)",
    "cfg(linear(1,4))",
    "hg(cosine(2.7,1),2.5,1.2,order=ag)",
    "multi_cfg(video=linear(3,1),text=2,mode=separate)",
    "window(hg(2.7,2.5,1.2),start=0.1,stop=0.9)",
    "apg(window(cfg(linear(1,7)),stop=0.5))@[0.1,0.9]",
    "0.5*apg(cfg(3))+0.5*rescale(ag(2))",
    "0.5*window(cfg(3),stop=0.5)+0.5*hg(linear(2,3),2.5,1.2)",
)


def test_every_form_round_trips():
    for spec in ROUND_TRIPS:
        g = G.parse(spec)
        assert g.spec() == spec, spec
        assert G.parse(g.spec()) == g and G.from_dict(g.to_dict()) == g and G.from_json(g.to_json()) == g
    assert G.parse("cfg(4.5,start=0.2,stop=0.8)").spec() == "window(cfg(4.5),start=0.2,stop=0.8)"
    assert G.parse("apg(cfg(3),start=0.5)") == G.window(G.apg(G.cfg(3)), 0.5)
    listing = {spec: formula for spec, formula, _ in G.presets()}
    for sig in ("apg(G)", "rescale(G)", "zero_star(G)", "mambo(G)", "linear(a,b)", "cosine(a,b)"):
        assert sig in listing
    assert "eta=0, r=0, beta=0, space=x0/native/eps/v/velocity" in listing["apg(G)"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("apg(cfg(3),foo=1)", "apg takes (guidance) arguments and options beta, eta, r, space"),
        ("apg(cfg(3),space=z)", "apg: space must be one of x0, native, eps, v, velocity, got 'z'"),
        ("apg(cfg(3),r=-1)", "apg: r=-1.0 must be >= 0"),
        ("zero_star(cfg(3),k=1.5)", "zero_star: k must be a whole number, got 1.5"),
        ("cfg(linear(1))", "linear() takes 2 numbers, got 1"),
        ("linear(1,4)", "linear(...) is a weight schedule; use it as a weight, e.g. cfg(linear(1,4))"),
        ("window(cfg(3),start=1)", "window needs 0 <= start < 1 and start <= stop <= 1"),
        ("cfg(3,start=0.6,stop=0.5)", "window needs 0 <= start < 1 and start <= stop <= 1"),
        ("rescale(ag(2,on=null))", "rescale() needs the conditional branch good:cond"),
    ],
)
def test_spec_errors(spec, message):
    with pytest.raises(ValueError, match=r"cannot parse guidance .*" + message.replace("(", r"\(").replace(")", r"\)")):
        G.parse(spec)


def test_explain_shows_the_schedule():
    res = CliRunner().invoke(app, ["--guidance", "cfg(linear(1,4),start=0.25)", "--explain", "--steps", "4"],
                             env={"COLUMNS": "200"})  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stdout.splitlines() if ln.strip().startswith("│")]
    rows = [[c.strip() for c in ln.strip("│ ").split("│")] for ln in lines if ln.strip("│ ")[0].isdigit()]
    # step, level, NFE, good:cond, good:null: step 0 outside the window, then w = 1 + 3 (1 - level)
    assert rows[-4:] == [
        ["0", "1.000", "1", "+1", "-"],
        ["1", "0.750", "2", "+1.75", "-0.75"],
        ["2", "0.500", "2", "+2.5", "-1.5"],
        ["3", "0.250", "2", "+3.25", "-2.25"],
    ]
    res = CliRunner().invoke(app, ["--guidance", "zero_star(cfg(3),k=2)", "--explain", "--steps", "4"],
                             env={"COLUMNS": "200"})  # fmt: skip
    assert res.exit_code == 0 and "Non-linear: zero_star(cfg(3),k=2)" in res.stdout
    assert res.stdout.count("zero_star: zero output (first 2 steps)") == 2


def test_nfe_budget_benchmark_runs_the_operators_at_cfgs_cost():
    nb = _load_benchmark()
    lab, v2a = nb.lab_specs(nb.ALL_METHODS), nb.v2a_specs(nb.ALL_METHODS)
    assert lab["apg"] == "apg(cfg(3))" and v2a["zero_star"] == "zero_star(cfg)" and v2a["hg"] == "hg"
    models = {"good": pretrained("good"), nb.LAB_BAD: pretrained(nb.LAB_BAD)}
    for method in nb.OPERATOR_METHODS:
        assert bench.nfe_per_step(lab[method]) == bench.nfe_per_step(v2a[method]) == 2
        steps = bench.steps_for_budget(12, 2, "heun")
        x, nfe = nb.lab_draw(models, lab[method], "heun", steps, 0, 8, seed=0)
        assert nfe == bench.cost("cfg(3)", "heun", steps) <= 12 and torch.isfinite(x).all()


def test_operators_on_mmaudio_latents_noise_at_zero():
    """MMAudio's convention (noise at t = 0, velocity prediction, three conditions, sequence latents): the operators
    run in their spaces, keep NFE and forwards, and rows stay independent; batching branches changes nothing."""
    from test_mmaudio import _inputs, _tiny

    good, bad = _tiny(seed=0), _tiny(seed=1)
    x, _, cond = _inputs(good, 1.0, batch=2)
    for spec in ("apg(cfg(4.5),beta=-0.5,r=5)", "rescale(hg(2,2,1.5))", "zero_star(cfg(4.5,start=0.25))"):
        with torch.no_grad():
            out, info = solvers.sample(good, x, cond, guidance=spec, bad=bad, bad_cond=cond, steps=4)
            _, inner = solvers.sample(good, x, cond, guidance=G.parse(spec).inner, bad=bad, bad_cond=cond, steps=4)
            naive, _ = solvers.sample(good, x, cond, guidance=spec, bad=bad, bad_cond=cond, steps=4,
                                      batch_branches=False)  # fmt: skip
            row, _ = solvers.sample(good, x[1:], {k: v[1:] for k, v in cond.items()}, guidance=spec, bad=bad,
                                    bad_cond={k: v[1:] for k, v in cond.items()}, steps=4)  # fmt: skip
        assert torch.isfinite(out).all() and (info.nfe, info.forwards) == (inner.nfe, inner.forwards)
        tol = 1e-4 * out.abs().max().item()  # float32 networks: batch shapes change the matmuls' rounding
        torch.testing.assert_close(naive, out, rtol=1e-4, atol=tol)
        torch.testing.assert_close(row, out[1:], rtol=1e-4, atol=tol)
