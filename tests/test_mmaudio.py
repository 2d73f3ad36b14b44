"""MMAudio flow network: checkpoint key compatibility, layout details, protocol (nulls, drop, stacked CFG)."""

from __future__ import annotations

import math

import pytest
import torch
from mmaudio_fixtures import load_fixture, prefixed

from v2a_sampler.denoisers import FlowSchedule, Prediction
from v2a_sampler.mmaudio.network import (
    STALE_KEYS,
    VARIANTS,
    MMAudio,
    TimeEmbedder,
    apply_rope,
    load_manifest,
    rope_tables,
    sequence_lengths,
    split_qkv,
    state_dict_shapes,
)
from v2a_sampler.models import build, from_pretrained, get_architecture, save_pretrained

TINY = dict(
    latent_dim=6,
    clip_dim=12,
    sync_dim=10,
    text_dim=14,
    hidden_dim=32,
    depth=3,
    fused_depth=1,
    num_heads=2,
    text_seq_len=7,
    sampling_rate=16000,
    spectrogram_frame_rate=256,
)

VIDEO_AND_TEXT = ("clip", "sync", "text")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _tiny(v2: bool = False, seed: int = 0) -> MMAudio:
    torch.manual_seed(seed)
    m = MMAudio(**TINY, v2=v2).eval()
    with torch.no_grad():  # the official init zeroes the output layers: randomise everything to test the wiring
        for p in m.parameters():
            p.normal_(0.0, 0.2)
    return m


def _inputs(m: MMAudio, duration: float, batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    n = m.sequence_lengths(duration)
    a = m.arch_kwargs
    x = torch.randn(batch, n["latent"], a["latent_dim"], generator=g)
    t = torch.rand(batch, generator=g)
    cond = {
        "clip": torch.randn(batch, n["clip"], a["clip_dim"], generator=g),
        "sync": torch.randn(batch, n["sync"], a["sync_dim"], generator=g),
        "text": torch.randn(batch, a["text_seq_len"], a["text_dim"], generator=g),
    }
    return x, t, cond


# -- checkpoint compatibility ----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_state_dict_matches_manifest(variant):
    """The manifest is written from the official modules (tools/mmaudio_ref_network.py); ours must equal it."""
    manifest = load_manifest()["variants"][variant]
    ours = state_dict_shapes(variant)
    assert ours == manifest["keys"]
    assert list(ours) == list(manifest["keys"])  # same order as the official module registers them
    with torch.device("meta"):
        n_params = sum(p.numel() for p in MMAudio.from_variant(variant).parameters())
    assert n_params == manifest["num_parameters"]


def test_manifest_spot_checks():
    """A few facts read directly off the official module definitions."""
    man = load_manifest()["variants"]
    small, large, v2 = man["small_16k"]["keys"], man["large_44k"]["keys"], man["large_44k_v2"]["keys"]
    assert len(small) == 251 and len(large) == 416 and len(v2) == 416
    assert small["audio_input_proj.0.weight"] == [448, 20, 7]
    assert small["joint_blocks.0.latent_block.attn.qkv.weight"] == [3 * 448, 448]
    assert small["joint_blocks.0.latent_block.attn.q_norm.weight"] == [64]
    assert small["joint_blocks.0.latent_block.ffn.w1.weight"] == [1280, 448, 3]  # SwiGLU 2/3 * 4d -> 256-multiple
    assert small["joint_blocks.0.text_block.ffn.w1.weight"] == [1280, 448]
    assert small["joint_blocks.0.text_block.linear1.weight"] == [448, 448]
    assert small["joint_blocks.3.clip_block.adaLN_modulation.1.weight"] == [2 * 448, 448]  # last joint: pre-only
    assert "joint_blocks.3.clip_block.ffn.w1.weight" not in small
    assert small["joint_blocks.3.latent_block.adaLN_modulation.1.weight"] == [6 * 448, 448]
    assert small["fused_blocks.7.linear1.weight"] == [448, 448, 3]
    assert small["t_embed.mlp.0.weight"] == [448, 256]  # v1: 256 frequencies
    assert v2["t_embed.mlp.0.weight"] == [896, 896]  # v2: hidden_dim frequencies
    assert small["sync_pos_emb"] == [1, 1, 8, 768]
    assert small["latent_mean"] == [1, 1, 20] and small["empty_string_feat"] == [77, 1024]
    assert small["empty_clip_feat"] == [1, 1024] and small["empty_sync_feat"] == [1, 768]
    assert "clip_input_proj.2.w1.weight" in v2 and "clip_input_proj.1.w1.weight" in large  # v2 adds a SiLU
    assert large["joint_blocks.6.text_block.adaLN_modulation.1.weight"] == [2 * 896, 896]
    assert "fused_blocks.13.ffn.w3.weight" in large
    for keys in man.values():
        assert not set(STALE_KEYS) & set(keys["keys"])
    # parameter counts reported in the MMAudio paper: 157M (S), 621M (M), 1.03B (L)
    counts = {k: sum(math.prod(s) for s in v["keys"].values()) / 1e6 for k, v in man.items()}
    assert round(counts["small_16k"]) == round(counts["small_44k"]) == 157
    assert round(counts["medium_44k"]) == 622 and round(counts["large_44k"] / 10) == 103  # 621.8M, 1030M


def test_strict_load_round_trip(tmp_path):
    m = _tiny()
    state = m.state_dict()
    fresh = MMAudio(**TINY)
    fresh.load_state_dict(state, strict=True)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, state[k]), k
    # older official checkpoints carry non-persistent buffers: tolerated by a strict load
    stale = {**state, "latent_rot": torch.zeros(1), "clip_rot": torch.zeros(1), "t_embed.freqs": torch.zeros(1)}
    MMAudio(**TINY).load_state_dict(stale, strict=True)
    assert "latent_rot" in stale  # the caller's dict is not modified
    with pytest.raises(RuntimeError):
        MMAudio(**TINY).load_state_dict({**state, "bogus": torch.zeros(1)}, strict=True)
    # through the registry
    assert get_architecture("mmaudio") is MMAudio
    save_pretrained(m, tmp_path / "mm")
    loaded = from_pretrained(tmp_path / "mm")
    assert isinstance(loaded, MMAudio) and loaded.schedule == FlowSchedule(0.0)
    x, t, cond = _inputs(m, 2.0)
    with torch.no_grad():
        assert torch.equal(loaded(x, t, cond), m(x, t, cond))


def test_protocol_and_variants():
    m = build("mmaudio", TINY)
    assert m.prediction is Prediction.VELOCITY and m.schedule == FlowSchedule(0.0)
    assert m.condition_names == ("clip", "sync", "text")
    with torch.device("meta"):
        big = MMAudio.from_variant("large_44k_v2")
    assert big.arch_kwargs["variant"] == "large_44k_v2" and big.v2
    with pytest.raises(ValueError):
        MMAudio.from_variant("huge")


def test_sequence_lengths_official_values():
    assert sequence_lengths(8.0, 16000, 256) == {"latent": 250, "clip": 64, "sync": 192}
    assert sequence_lengths(8.0, 44100, 512) == {"latent": 345, "clip": 64, "sync": 192}
    assert sequence_lengths(10.0, 44100, 512) == {"latent": 431, "clip": 80, "sync": 240}
    m = MMAudio(**TINY)
    for d in (2.0, 4.0, 8.0, 10.0):
        n = m.sequence_lengths(d)
        assert m._lengths_for_latent(n["latent"]) == n


# -- layout details --------------------------------------------------------------------------------------------


def test_rope_adjacent_pairs_float32():
    n, d, scale = 11, 8, 2.5
    cos, sin = rope_tables(n, d, scale)
    assert cos.dtype == torch.float32 and cos.shape == (n, d // 2)
    x = torch.randn(2, 3, n, d, dtype=torch.float64)
    got = apply_rope(x.float(), cos, sin).double()
    # direct formula: pair (2i, 2i+1) at position p is multiplied by exp(1j * p * scale / 10000 ** (2i / d))
    ref = torch.empty_like(x)
    for p in range(n):
        for i in range(d // 2):
            ang = p * scale / 10000 ** (2 * i / d)
            z = (
                complex(1, 0)
                * torch.complex(x[..., p, 2 * i], x[..., p, 2 * i + 1])
                * complex(math.cos(ang), math.sin(ang))
            )
            ref[..., p, 2 * i], ref[..., p, 2 * i + 1] = z.real, z.imag
    assert torch.allclose(got, ref, atol=1e-5)
    # low-precision inputs are rotated in float32 and cast back
    xb = x.to(torch.bfloat16)
    out = apply_rope(xb, cos, sin)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, apply_rope(xb.float(), cos, sin).to(torch.bfloat16))


def test_qkv_split_is_interleaved():
    b, n, h, d = 2, 5, 3, 4
    qkv = torch.randn(b, n, 3 * h * d)
    q, k, v = split_qkv(qkv, h)
    assert q.shape == (b, h, n, d)
    for j, part in enumerate((q, k, v)):
        for hh in range(h):
            for dd in range(d):
                assert torch.equal(part[:, hh, :, dd], qkv[:, :, (hh * d + dd) * 3 + j])


@pytest.mark.parametrize("v2", [False, True])
def test_time_embedding_raw_t(v2):
    dim = 16
    emb = TimeEmbedder(dim, n_freq=dim if v2 else 256, max_period=1 if v2 else 10000)
    nf = emb.freqs.numel()
    i = torch.arange(nf, dtype=torch.float64)
    ref = (10000.0 if v2 else 1.0) * 10000.0 ** (-2 * i / (2 * nf))
    assert torch.allclose(emb.freqs.double(), ref, rtol=1e-6)
    assert "freqs" not in emb.state_dict()


# -- forward and protocol --------------------------------------------------------------------------------------


@pytest.mark.parametrize("v2", [False, True])
def test_forward_two_durations(v2):
    m = _tiny(v2)
    for d in (8.0, 3.0):
        x, t, cond = _inputs(m, d)
        with torch.no_grad():
            y = m(x, t, cond)
        assert y.shape == x.shape and torch.isfinite(y).all()
    with pytest.raises(ValueError):
        m(torch.randn(1, 10, 5), torch.rand(1), None)


def test_nulls_and_drop():
    m = _tiny()
    x, t, cond = _inputs(m, 4.0)
    n = m.sequence_lengths(4.0)
    b = x.shape[0]
    explicit = {"clip": m.null("clip", b, n["clip"]), "sync": m.null("sync", b, n["sync"]), "text": m.null("text", b)}
    assert torch.equal(explicit["text"][0], m.empty_string_feat)
    assert m.drop(cond, ["text"])["text"] is None and m.drop(cond, ["text"])["clip"] is cond["clip"]
    with torch.no_grad():
        full = m(x, t, cond)
        uncond = m(x, t, m.drop(cond, ["clip", "sync", "text"]))
        assert torch.allclose(uncond, m(x, t, explicit), atol=1e-5)
        assert torch.allclose(uncond, m(x, t, None), atol=1e-5)
        no_text = m(x, t, m.drop(cond, ["text"]))
        assert torch.allclose(no_text, m(x, t, {**cond, "text": explicit["text"]}), atol=1e-5)
        no_video = m(x, t, m.drop(cond, ["clip", "sync"]))
        assert torch.allclose(no_video, m(x, t, {**explicit, "text": cond["text"]}), atol=1e-5)
    for a, c in [(full, no_text), (full, no_video), (no_text, no_video), (no_video, uncond)]:
        assert not torch.allclose(a, c, atol=1e-3)
    with pytest.raises(ValueError):
        m.drop(cond, ["video"])


def test_batch_conditions_equals_separate_forwards():
    m = _tiny(v2=True)
    x, t, cond = _inputs(m, 3.0)
    drops = [[], ["text"], ["clip", "sync"], ["clip", "sync", "text"]]
    conds = [m.drop(cond, d) for d in drops]
    stacked = m.batch_conditions(conds, x.shape[0])
    assert stacked is not NotImplemented and stacked["clip"].shape[0] == 4 * x.shape[0]
    k = len(drops)
    with torch.no_grad():
        together = m(x.repeat(k, 1, 1), t.repeat(k), stacked).split(x.shape[0])
        for c, y in zip(conds, together, strict=True):
            assert torch.allclose(y, m(x, t, c), atol=1e-5)
        # every branch dropping the video: the stacked condition leaves it to forward
        all_null = m.batch_conditions([m.drop(cond, VIDEO_AND_TEXT), m.drop(cond, VIDEO_AND_TEXT)], x.shape[0])
        assert all_null["clip"] is None
        y = m(x.repeat(2, 1, 1), t.repeat(2), all_null)
        assert torch.allclose(y[: x.shape[0]], m(x, t, None), atol=1e-5)
    bad = {**cond, "clip": cond["clip"][:, :5]}
    assert m.batch_conditions([cond, bad], x.shape[0]) is NotImplemented


def _official_fixture(v2: bool):
    tensors, meta = load_fixture(f"network_{'v2' if v2 else 'v1'}")
    model = MMAudio(**meta["config"]).eval()
    model.load_state_dict(prefixed(tensors, "weights/"), strict=True)
    return model, tensors, meta


@pytest.mark.parametrize("v2", [False, True])
def test_velocity_matches_official_code(v2):
    """The official network's output on a reduced config (tools/mmaudio_ref_network.py), 2.5 s at 16 kHz."""
    model, f, meta = _official_fixture(v2)
    official_lengths = {k.removesuffix("_seq_len"): v for k, v in meta["lengths"].items()}
    assert model.sequence_lengths(meta["duration"]) == official_lengths
    cond = {"clip": f["clip"], "sync": f["sync"], "text": f["text"]}
    with torch.no_grad():
        ours = model(f["x"], f["t"], cond)
    err = (ours - f["velocity"]).abs().max() / f["velocity"].abs().max()
    assert err < 1e-5, err


@pytest.mark.parametrize("v2", [False, True])
def test_cfg_euler_sampling_matches_official_loop(v2):
    """25 Euler steps of CFG 4.5 with a negative text feature equal the official FlowMatching loop."""
    from v2a_sampler import solvers

    model, f, meta = _official_fixture(v2)
    cond = {"clip": f["clip"], "sync": f["sync"], "text": f["text"]}
    with torch.no_grad():
        ours, info = solvers.sample(
            model, f["noise"], cond, guidance=f"cfg({meta['cfg_strength']})", solver="euler", steps=meta["steps"],
            negative={"text": f["negative_text"]},  # a negative prompt replaces only the null's text
        )  # fmt: skip
    assert info.nfe == 2 * meta["steps"]
    ref = f["cfg_sample"]
    assert (ours - ref).abs().max() / ref.abs().max() < 1e-4


def test_guided_sampling_batched_and_stacked():
    """The engine's one-forward CFG and the vmapped good/bad stack agree with branch-by-branch evaluation."""
    from v2a_sampler import solvers

    good, bad = _tiny(seed=0), _tiny(seed=1)
    x, _, cond = _inputs(good, 2.0)
    with torch.no_grad():
        a, ia = solvers.sample(good, x, cond, guidance="cfg(4.5)", steps=3, batch_branches=True)
        b, ib = solvers.sample(good, x, cond, guidance="cfg(4.5)", steps=3, batch_branches=False)
        assert ia.forwards == 3 and ib.forwards == 6
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
        outs = {
            s: solvers.sample(good, x, cond, guidance="hg", bad=bad, bad_cond=cond, steps=2, stack_models=s)
            for s in (False, True)
        }
    ref = outs[False][0]
    assert torch.allclose(outs[True][0], ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    assert outs[True][1].forwards < outs[False][1].forwards


def test_compiles_without_graph_breaks():
    """torch.compile(fullgraph=True) traces the network (rope cache, null features, sync upsampling) whole."""
    torch._dynamo.reset()
    m = _tiny(v2=True)
    x, t, cond = _inputs(m, 2.0)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        for c in (cond, m.drop(cond, VIDEO_AND_TEXT)):
            assert torch.allclose(compiled(x, t, c), m(x, t, c), atol=1e-6)


def test_prepared_conditions_equal_raw_and_are_checked():
    m = _tiny(v2=True)
    x, t, cond = _inputs(m, 2.0)
    with torch.no_grad():
        prepared = m.prepare_conditions(cond, x)
        assert prepared.sync.shape == (x.shape[0], x.shape[1], m.hidden_dim)  # upsampled to the latent length
        assert torch.equal(m(x, t, prepared), m(x, t, cond))
        null = m.prepare_conditions(None, x)
        assert torch.equal(m(x, t, null), m(x, t, None))
    with pytest.raises(ValueError, match="do not fit the prepared conditions"):
        m(x[:, :-1], t, prepared)


def test_video_group_drops_clip_and_sync_together():
    """``video`` names clip + sync: cfg(w, drop=video) and multi_cfg(video=..., text=...) on the real conditions."""
    from v2a_sampler import guidance as G
    from v2a_sampler import solvers

    m = _tiny()
    x, _, cond = _inputs(m, 2.0)
    ts = [0.0, 0.5]
    with torch.no_grad():
        out, info = solvers.sample(m, x, cond, guidance="multi_cfg(video=3,text=2)", timesteps=ts)
        t = torch.zeros(x.shape[0])
        full, no_text = m(x, t, cond), m(x, t, m.drop(cond, ["text"]))
        neither = m(x, t, m.drop(cond, ["clip", "sync", "text"]))
        v = neither + 3 * (no_text - neither) + 2 * (full - no_text)  # chain: video, then text
        assert torch.allclose(out, x + 0.5 * v, rtol=1e-4, atol=1e-4) and info.nfe == 3
        video_only, _ = solvers.sample(m, x, cond, guidance="cfg(4.5,drop=video)", timesteps=ts)
        no_video = m(x, t, m.drop(cond, ["clip", "sync"]))
        assert torch.allclose(video_only, x + 0.5 * (no_video + 4.5 * (full - no_video)), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"unknown condition\(s\) \['audio'\].*video \(= clip\+sync\)"):
        solvers.sample(m, x, cond, guidance=G.cfg(2, drop="audio"), steps=1)
