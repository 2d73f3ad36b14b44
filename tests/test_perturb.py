"""Bad models made by perturbing the good one: each perturbation against a hand-written forward, per-row application,
one batched forward with the good branches, the spec grammar, and the pipelines / CLI spelling."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_mmaudio import _inputs as mm_inputs
from test_mmaudio import _tiny as mm_tiny
from test_pipeline import _tiny_model
from test_v2a_model import _inputs, _model

from v2a_sampler import guidance as G
from v2a_sampler import solvers
from v2a_sampler.core.engine import GuidedDenoiser
from v2a_sampler.models.mlp import ToyMLP
from v2a_sampler.models.perturb import Perturbation, perturb, perturbed
from v2a_sampler.pipelines import Pipeline, RunConfig


def _manual_v2a(m, x, t, cond, block_fn):
    """V2AFlow's forward written out, with ``block_fn(i, block, h, c)`` computing block ``i``."""
    prepared = m.prepare_conditions(cond, x)
    b, _, frames = x.shape
    pad = (-frames) % m.patch
    xp = F.pad(x, (0, pad)) if pad else x
    n_tok = xp.shape[-1] // m.patch
    tok = xp.unflatten(-1, (n_tok, m.patch)).permute(0, 2, 1, 3).flatten(2)
    h = m.tok_in(tok.transpose(1, 2)).transpose(1, 2) + prepared.tokens
    from v2a_sampler.models.v2a_flow import TIME_SCALE, _sinusoid

    c = m.time_mlp(_sinusoid(t.reshape(-1).expand(b) * TIME_SCALE, m.dim)) + prepared.pooled
    for i, blk in enumerate(m.blocks):
        h = block_fn(i, blk, h, c)
    shift, scale = m.mod_out(F.silu(c)).unsqueeze(1).chunk(2, dim=-1)
    out = m.tok_out(m.norm_out(h) * (1 + scale) + shift)
    return out.unflatten(-1, (m.n_mels, m.patch)).permute(0, 2, 1, 3).flatten(2)[..., :frames]


def _block(blk, h, c, attention):
    s1, g1, b1, s2, g2, b2 = blk.mod(F.silu(c)).unsqueeze(1).chunk(6, dim=-1)
    h = h + blk.local(h.transpose(1, 2)).transpose(1, 2)
    y = blk.norm1(h) * (1 + s1) + b1
    q, k, v = blk.qkv(y).unflatten(-1, (3, blk.heads, -1)).permute(2, 0, 3, 1, 4)
    h = h + g1 * blk.proj(attention(q, k, v).transpose(1, 2).flatten(2))
    y = blk.norm2(h) * (1 + s2) + b2
    return h + g2 * blk.mlp(y)


def _sdpa(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v


@torch.no_grad()
def test_each_perturbation_is_the_forward_written_out():
    m = _model()
    x, t, cond = _inputs()
    enc = m.encode_conditions(cond)
    plain = _manual_v2a(m, x, t, enc, lambda i, blk, h, c: _block(blk, h, c, _sdpa))
    assert torch.allclose(m(x, t, enc), plain, atol=1e-5)
    cases = {
        "perturb:skip=1": lambda i, blk, h, c: h if i == 1 else _block(blk, h, c, _sdpa),
        "perturb:identity=0": lambda i, blk, h, c: _block(blk, h, c, (lambda q, k, v: v) if i == 0 else _sdpa),
    }
    for spec, fn in cases.items():
        ours = perturbed(m, spec)(x, t, enc)
        assert torch.allclose(ours, _manual_v2a(m, x, t, enc, fn), atol=1e-5), spec
        assert not torch.allclose(ours, plain, atol=1e-3), spec
    # blurred queries: a Gaussian along the token axis; a tiny blur is (almost) no perturbation
    assert torch.allclose(perturbed(m, blur=1e-3)(x, t, enc), plain, atol=1e-5)
    assert not torch.allclose(perturbed(m, blur=2.0)(x, t, enc), plain, atol=1e-3)
    # dropout patterns are fixed by the seed and shared by every row
    a = perturbed(m, attn_dropout=0.3, seed=1)(x, t, enc)
    assert torch.equal(a, perturbed(m, attn_dropout=0.3, seed=1)(x, t, enc))
    assert not torch.allclose(a, perturbed(m, attn_dropout=0.3, seed=2)(x, t, enc))
    one = perturbed(m, dropout=0.2, seed=4)(x[:1], t[:1], {"video": enc["video"][:1]})
    assert torch.allclose(perturbed(m, dropout=0.2, seed=4)(x, t, enc)[:1], one, atol=1e-6)
    assert torch.allclose(m(x, t, enc), plain, atol=1e-5)  # no hook left behind


@torch.no_grad()
def test_rows_perturbs_only_the_masked_rows():
    m = _model()
    x, t, cond = _inputs(b=4)
    enc = m.encode_conditions(cond)
    rows = torch.tensor([False, True, False, True])
    plain = m(x, t, enc)
    for p in (Perturbation(skip=(0,), identity=(1,)), Perturbation(blur=1.5, attn_dropout=0.2, seed=3)):
        with perturb(m, p, rows):
            mixed = m(x, t, enc)
        full = perturbed(m, p)(x, t, enc)
        assert torch.allclose(mixed[rows], full[rows], atol=1e-5), p
        assert torch.allclose(mixed[~rows], plain[~rows], atol=1e-6), p


def test_perturbed_branches_run_in_one_forward_with_the_good_ones():
    m = _model()
    x, t, cond = _inputs(b=2)
    enc = m.encode_conditions(cond)
    bad = perturbed(m, skip=[1])
    outs = {}
    for batch in (True, False):
        out, info = solvers.sample(m, x, enc, guidance="hg", bad=bad, steps=3, batch_branches=batch)
        outs[batch] = out
        assert info.nfe == 12 and info.nfe_by_role == {"good": 6, "bad": 6}
        assert info.forwards == (3 if batch else 12)  # one forward per stage when batched
    assert torch.allclose(outs[True], outs[False], atol=1e-5)
    engine = GuidedDenoiser(m, G.hg(), cond=enc, bad=bad)
    engine(x, 0.5)
    assert engine.forwards == 1 and engine.nfe == 4


@torch.no_grad()
def test_mmaudio_network_blocks_and_joint_attention_can_be_perturbed():
    m = mm_tiny()
    x, t, cond = mm_inputs(m, 1.0)
    plain = m(x, t, cond)
    n_blocks = len(m.perturbation_sites()["blocks"])
    assert n_blocks == TINY_MM_DEPTH
    for spec in ("perturb:skip=0", f"perturb:skip={n_blocks - 1}", "perturb:identity=0", "perturb:blur=1.5"):
        out = perturbed(m, spec)(x, t, cond)
        assert torch.isfinite(out).all() and not torch.allclose(out, plain, atol=1e-4), spec
    g, info = solvers.sample(m, x, cond, guidance="ag(2)", bad=perturbed(m, skip=[2]), steps=2)
    s, _ = solvers.sample(m, x, cond, guidance="ag(2)", bad=perturbed(m, skip=[2]), steps=2, batch_branches=False)
    assert info.forwards == 2 and ((g - s).abs().max() / g.abs().max()).item() < 1e-5  # batched = separate


TINY_MM_DEPTH = 3  # test_mmaudio.TINY: depth 3 (joint + fused blocks)


def test_spec_grammar_and_errors():
    p = Perturbation.parse("perturb:skip=2+0,attn_dropout=0.1,seed=3")
    assert p == Perturbation(skip=(0, 2), attn_dropout=0.1, seed=3)
    assert Perturbation.parse(p.spec()) == p and p.spec() == "perturb:skip=0+2,attn_dropout=0.1,seed=3"
    assert Perturbation.parse("perturb:blur=2,layers=1").spec() == "perturb:blur=2,layers=1"
    with pytest.raises(ValueError, match="expected NAME=VALUE with NAME in skip, identity"):
        Perturbation.parse("perturb:skipp=1")
    with pytest.raises(ValueError, match="at least one of"):
        Perturbation.parse("perturb:")
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        Perturbation(dropout=1.0)
    with pytest.raises(ValueError, match=r"skip=\[5\] is out of range: V2AFlow has 2 blocks \(0-1\)"):
        perturbed(_model(), skip=[5])
    with pytest.raises(ValueError, match="ToyMLP has no attention to perturb"):
        perturbed(ToyMLP(), identity=[0])


def test_lab_mlp_layers_can_be_skipped():
    torch.manual_seed(0)
    m = ToyMLP(hidden_dim=16, num_layers=3).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
        x, t, cond = torch.randn(5, 2), torch.rand(5), {"label": torch.tensor([0, 1, 0, 1, -1])}
        assert not torch.allclose(perturbed(m, skip=[1])(x, t, cond), m(x, t, cond), atol=1e-4)
        dropped = perturbed(m, dropout=0.5, layers=[0], seed=2)
        assert torch.equal(dropped(x, t, cond), dropped(x, t, cond))


def test_pipeline_spelling_python_and_config():
    model = _tiny_model(0)
    pipe = Pipeline(model, perturbed(model, identity=[0]))
    frames = torch.randint(0, 255, (25, 32, 32, 3), dtype=torch.uint8)
    out = pipe(frames, guidance="hg", steps=2, griffin_lim_iters=1)
    assert out.info["nfe_by_role"] == {"good": 4, "bad": 4} and out.info["forwards"] == 2
    with pytest.raises(ValueError, match="must perturb this pipeline's model"):
        Pipeline(model, perturbed(_tiny_model(1), skip=[0]))
    assert RunConfig(bad_model="perturb:identity=0").bad_model == "perturb:identity=0"
    with pytest.raises(ValueError, match="bad perturbation 'perturb:skip=x'"):
        RunConfig(bad_model="perturb:skip=x")
    assert RunConfig(model="mmaudio:small_16k", bad_model="perturb:skip=3").is_mmaudio


def test_cli_bad_model_perturbation(tmp_path):
    from typer.testing import CliRunner

    from v2a_sampler.cli import app
    from v2a_sampler.media import io

    demo = Path(__file__).resolve().parent.parent / "examples" / "assets" / "demo_clip.mp4"
    wav = tmp_path / "demo.wav"
    res = CliRunner().invoke(app, [str(demo), "--bad-model", "perturb:identity=1", "-g", "ag(2)", "--steps", "2",
                                   "--duration", "2", "--out", str(wav), "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    audio, sr = io.read_audio(wav)
    assert abs(audio.shape[-1] / sr - 2.0) < 0.05 and "NFE 4" in res.stdout
    res = CliRunner().invoke(app, [str(demo), "--bad-model", "perturb:skip=9", "--steps", "2", "--quiet",
                                   "--out", str(tmp_path / "x.wav")])  # fmt: skip
    assert res.exit_code == 2 and "skip=[9] is out of range: V2AFlow has 6 blocks" in res.output
    assert not (tmp_path / "x.wav").exists()


def test_benchmark_pairs_each_bad_model_with_the_checkpoint_on_the_same_seeds():
    import perturbed_bad as PB

    rows = []
    for seed, (ref, other) in enumerate([(0.5, 0.7), (0.6, 0.9), (0.4, 0.5)]):
        base = {"task": "v2a", "method": "hg", "budget": 64, "nfe": 64, "seed": seed, "class_accuracy": 0.5, "fd": 1}
        rows.append({**base, "bad": "checkpoint", "onset_f1": ref})
        rows.append({**base, "bad": "perturb:skip=1", "onset_f1": other})
    table = PB.paired(rows, "v2a")
    mine = next(r for r in table if r["bad"] == "perturb:skip=1")
    diffs = [0.2, 0.3, 0.1]
    assert mine["onset_f1_diff"] == pytest.approx(0.2)
    assert mine["onset_f1_ci"] == pytest.approx(4.303 * torch.tensor(diffs).std().item() / math.sqrt(3))
    text = PB.summary_markdown(table, 3)
    assert "| hg | 64 | `perturb:skip=1` | 64 | 0.7 (+0.2 ± 0.25)" in text
