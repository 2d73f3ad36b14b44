"""MMAudio condition features: Synchformer (keys, official parity), the official video reader, CLIP features.

Reference data comes from the official code (tools/mmaudio_ref_synchformer.py, tools/mmaudio_ref_clip.py). Tests that
need open_clip (an optional dependency) are skipped without it.
"""

from __future__ import annotations

import math
from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch
from media import decode_index, make_video
from mmaudio_fixtures import load_fixture, prefixed
from torch import nn

from v2a_sampler.media.io import V2AInputError
from v2a_sampler.mmaudio import clip as clip_mod
from v2a_sampler.mmaudio import frames as fr
from v2a_sampler.mmaudio.checkpoints import CheckpointError
from v2a_sampler.mmaudio.encoders import MMAudioFeatures
from v2a_sampler.mmaudio.network import MMAudio, sequence_lengths
from v2a_sampler.mmaudio.synchformer import (
    CHECKPOINT_PREFIX,
    Synchformer,
    SynchformerConfig,
    load_manifest,
    normalize,
    state_dict_shapes,
)

#: Relative L2 error allowed against the official float32 outputs.
PARITY = 1e-4


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def pattern(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The uint8 hash pattern of tools/mmaudio_ref_synchformer.py (input frames of the fixtures)."""
    v = torch.arange(math.prod(shape), dtype=torch.int64) * 2654435761 + seed * 97531
    v = v % 2**32
    v = v ^ (v >> 13)
    v = (v * 1274126177) % 2**32
    v = v ^ (v >> 16)
    return (v % 256).to(torch.uint8).view(shape)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def reduced():
    """The reduced official extractor of the fixture, strictly loaded, and the fixture."""
    tensors, meta = load_fixture("synchformer_reduced")
    model = Synchformer(**meta["config"]).eval()
    model.load_state_dict({k: v.float() for k, v in prefixed(tensors, "weights/").items()}, strict=True)
    return model, tensors, meta


# -- Synchformer: checkpoint keys ------------------------------------------------------------------------------


def test_state_dict_matches_official_manifest():
    """Written from the official module (tools/mmaudio_ref_synchformer.py): same keys, shapes, order, count."""
    manifest = load_manifest()["variants"]["synchformer"]
    ours = state_dict_shapes()
    assert ours == manifest["keys"]
    assert list(ours) == list(manifest["keys"])
    with torch.device("meta"):
        n_params = sum(p.numel() for p in Synchformer().parameters())
    assert n_params == manifest["num_parameters"]


def test_manifest_spot_checks():
    """Facts read off the official definitions (divided_224_16x4.yaml, MotionFormer with extract_features)."""
    keys = load_manifest()["variants"]["synchformer"]["keys"]
    assert len(keys) == 238 and all(k.startswith(CHECKPOINT_PREFIX + ".") for k in keys)
    v = "vfeat_extractor."
    assert keys[v + "pos_embed"] == [1, 197, 768]  # CLS + 14 x 14 patch positions
    assert keys[v + "temp_embed"] == [1, 8, 768]  # 16 frames / 2-frame tubelets
    assert keys[v + "patch_embed_3d.proj.weight"] == [768, 3, 2, 16, 16]
    assert keys[v + "patch_embed.proj.weight"] == [768, 3, 16, 16]  # unused, but in the checkpoint
    assert keys[v + "blocks.11.timeattn.qkv.weight"] == [2304, 768]
    assert keys[v + "spatial_attn_agg.self_attn.in_proj_weight"] == [2304, 768]
    assert keys[v + "spatial_attn_agg.linear1.weight"] == [3072, 768]
    assert not any(s in k for k in keys for s in ("temp_attn_agg", "pre_logits", "head"))
    assert round(load_manifest()["variants"]["synchformer"]["num_parameters"] / 1e5) == 1224  # 122.4 M


def test_official_checkpoint_file_loads_strictly(tmp_path, reduced):
    """A synchformer_state_dict.pth-like file (extractor + audio branch etc.): the extra entries are dropped, as the
    official loader drops them; the extractor's own must all be there."""
    model, _, meta = reduced
    state = {k: v.clone() for k, v in model.state_dict().items()}
    foreign = {"afeat_extractor.patch_embed.proj.weight": torch.zeros(2, 2), "transformer.norm.bias": torch.zeros(3),
               "vproj.weight": torch.zeros(4, 4), "aproj.bias": torch.zeros(4)}  # fmt: skip
    path = tmp_path / "synchformer_state_dict.pth"
    torch.save({**foreign, **state}, path)
    loaded = Synchformer.from_official(path, **meta["config"])
    assert not loaded.training
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k
    del state["vfeat_extractor.norm.bias"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"Synchformer: .* does not fit: .*norm\.bias") as err:
        Synchformer.from_official(path, **meta["config"])
    assert "\n" not in str(err.value)
    bad = {**state, "vfeat_extractor.norm.bias": torch.zeros(5)}
    with pytest.raises(RuntimeError, match="size mismatch"):
        Synchformer(**meta["config"]).load_state_dict(bad, strict=True)


# -- Synchformer: numerical parity with the official code --------------------------------------------------------


def test_reduced_parity_with_official(reduced):
    """The official FeaturesUtils.encode_video_with_sync on a reduced official extractor (2 clips, 36 frames)."""
    model, tensors, meta = reduced
    spec = meta["input"]
    pixels = pattern(tuple(spec["shape"]), spec["pattern_seed"])
    assert int(pixels.sum()) == spec["pixel_sum"]
    frames = normalize(fr.to_unit(pixels))
    assert float(frames.double().sum()) == pytest.approx(spec["frames_sum"], rel=1e-9)
    with torch.no_grad():
        sync = model.encode(frames)
        chunked = model.encode(frames, batch_size=4)
        windows = torch.stack([frames[:1, i : i + 16] for i in (0, 8, 16)], dim=1)
        direct = model(windows)
    assert sync.shape == (2, 24, 16) == tensors["sync"].shape
    assert rel_err(sync, tensors["sync"]) <= PARITY
    assert rel_err(direct, tensors["forward_first"]) <= PARITY
    torch.testing.assert_close(chunked, sync, rtol=1e-5, atol=1e-6)
    # the 4 trailing frames (32..35) fill no window: changing them changes nothing
    changed = frames.clone()
    changed[:, 32:] = 0
    with torch.no_grad():
        torch.testing.assert_close(model.encode(changed), sync, rtol=0, atol=0)


def test_encode_rejects_bad_input(reduced):
    model = reduced[0]
    with pytest.raises(ValueError, match="at least 16 frames"):
        model.encode(torch.zeros(1, 15, 3, 224, 224))
    with pytest.raises(ValueError, match=r"\[B, T, 3, 224, 224\]"):
        model.encode(torch.zeros(1, 16, 3, 112, 112))
    with pytest.raises(ValueError, match="inconsistent Synchformer config"):
        SynchformerConfig(img_size=200)


@pytest.mark.parametrize("duration", [8.0, 10.0, 7.96, 5.0, 3.28, 2.5, 1.04, 0.64, 0.9])
def test_feature_counts_follow_sequence_lengths(duration):
    """``int(25 d)`` frames give exactly the sync length the network expects, ``int(8 d)`` the clip length."""
    lengths = sequence_lengths(duration)
    with torch.device("meta"):
        model = Synchformer()
    assert model.num_features(int(fr.SYNC_FPS * duration)) == lengths["sync"]
    assert int(fr.CLIP_FPS * duration) == lengths["clip"]


# -- the official video reader ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frames_fixture():
    return load_fixture("synchformer_frames")


def test_frame_selection_matches_official(frames_fixture):
    """Official read_frames/load_video on fake containers: same source frames, durations and counts."""
    _, meta = frames_fixture
    for name, case in meta["cases"].items():
        clip = fr.select_frames(case["times"], fr.CLIP_FPS, case["duration"])
        sync = fr.select_frames(case["times"], fr.SYNC_FPS, case["duration"])
        assert clip == case["clip_indices"], name
        assert sync == case["sync_indices"], name
        final = fr.truncated_duration(case["duration"], len(clip), len(sync))
        assert final == case["final_duration"], name
        assert (int(fr.CLIP_FPS * final), int(fr.SYNC_FPS * final)) == (case["clip_frames"], case["sync_frames"])
        lengths = sequence_lengths(final)
        assert case["clip_frames"] == lengths["clip"], name
    # the float accumulation of 1/25 makes an exactly 8 s, 25 fps video 199 frames (7.96 s) long, as official
    assert meta["cases"]["25fps_8s_d8"]["final_duration"] == 7.96


def _levels_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """uint8 levels equal (1 level and 1% of the grid allowed for CPUs whose uint8 resize kernel rounds otherwise)."""
    diff = (ours - ref).abs()
    assert diff.max() <= 1 and (diff > 0).double().mean() <= 0.01


@pytest.mark.parametrize("kind", ["sync", "clip"])
def test_transforms_match_official(kind):
    """torchvision's bicubic (antialiased) resize + crop of the official transforms, without torchvision."""
    tensors, meta = load_fixture(f"{'synchformer' if kind == 'sync' else 'clip'}_frames")
    spec = meta["transform"]
    for j, (h, w) in enumerate(spec["sizes"]):
        image = pattern((h, w, 3), spec["pattern_seed_base"] + j).permute(2, 0, 1)[None]
        if kind == "sync":
            out = fr.sync_transform(image)[0]
            assert out.shape == (3, 224, 224)
            levels = (out.double() * 0.5 + 0.5) * 255
        else:
            out = fr.clip_transform(image)[0]
            assert out.shape == (3, 384, 384)
            levels = out.double() * 255
        s = spec["grid_stride"]
        _levels_close(levels[:, ::s, ::s].round(), tensors[f"{kind}_{h}x{w}"].double())
        tol = 0.01 * out.numel() * (2 if kind == "sync" else 1) / 255
        assert abs(float(out.double().sum()) - spec["sums"][f"{h}x{w}"]) <= tol


#: Real test videos for cases of the official fixture: (rate, frames, pts in ms or None).
VIDEOS = {
    "25fps_8s_d8": (25, 200, None),
    "ntsc_5s_d8": (Fraction(30000, 1001), 150, None),
    "30fps_3s_d2.5": (30, 90, None),
    "2fps_5s_d4": (2, 10, None),
    "vfr_ms": (25, None, "times"),
}


@pytest.mark.parametrize("name", list(VIDEOS))
def test_read_video_matches_official(tmp_path, frames_fixture, name):
    """Coded test videos (constant, NTSC, low and variable rates): the official picks, counts and duration."""
    case = frames_fixture[1]["cases"][name]
    rate, n, vfr = VIDEOS[name]
    pts_ms = [round(t * 1000) for t in case["times"]] if vfr else None
    path = make_video(tmp_path / f"{name}.mp4", rate, len(pts_ms) if vfr else n, pts_ms=pts_ms)
    video = fr.read_video(path, case["duration"])
    assert video.duration == case["final_duration"]
    assert list(video.clip_indices) == case["clip_indices"][: case["clip_frames"]]
    assert list(video.sync_indices) == case["sync_indices"][: case["sync_frames"]]
    assert video.clip.shape == (case["clip_frames"], 3, 384, 384) and video.clip.dtype == torch.float32
    assert video.sync.shape == (case["sync_frames"], 3, 224, 224)
    assert 0 <= video.clip.min() and video.clip.max() <= 1 and -1 <= video.sync.min() and video.sync.max() <= 1
    # the pixels are those of the picked frames (flat colours coding the frame index)
    step = max(1, len(video.sync_indices) // 12)
    sync_rgb = ((video.sync[::step] * 0.5 + 0.5) * 255).permute(0, 2, 3, 1)
    assert decode_index(sync_rgb) == list(video.sync_indices[::step])
    assert decode_index((video.clip[::4] * 255).permute(0, 2, 3, 1)) == list(video.clip_indices[::4])
    lengths = video.sequence_lengths()
    assert video.clip.shape[0] == lengths["clip"]
    with torch.device("meta"):
        assert Synchformer().num_features(video.sync.shape[0]) == lengths["sync"]


def test_read_video_errors(tmp_path):
    short = make_video(tmp_path / "short.mp4", 25, 13)  # 0.52 s: 13 frames at 25 fps
    with pytest.raises(V2AInputError, match="needs at least 16") as err:
        fr.read_video(short)
    assert "\n" not in str(err.value)
    with pytest.raises(V2AInputError, match="duration must be a positive"):
        fr.read_video(short, duration=0)
    with pytest.raises(V2AInputError, match="not found"):
        fr.read_video(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="different lengths"):
        fr.stack([SimpleNamespace(clip=torch.zeros(n), sync=torch.zeros(6)) for n in (2, 3)])


# -- CLIP features -------------------------------------------------------------------------------------------


class FakeClip(nn.Module):
    """A stand-in for open_clip's CLIP (no open_clip needed): per-channel means as image features, a one-layer text
    tower with open_clip's attribute names."""

    def __init__(self, width: int = 6, vocab: int = 64, context: int = 77, image_size: int = 384) -> None:
        super().__init__()
        self.visual = nn.Module()
        self.visual.image_size = image_size
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(context, width))
        self.transformer = FakeTextTransformer(width)
        self.ln_final = nn.LayerNorm(width)
        self.register_buffer("attn_mask", torch.full((context, context), float("-inf")).triu_(1), persistent=False)

    def encode_image(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        feats = x.mean(dim=(2, 3))
        return nn.functional.normalize(feats, dim=-1) if normalize else feats


class FakeTextTransformer(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.attn(x, x, x, attn_mask=attn_mask, need_weights=False)[0]


def fake_tokenizer(prompts: list[str], context: int = 77, vocab: int = 64) -> torch.Tensor:
    out = torch.zeros(len(prompts), context, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids = [1 + ord(c) % (vocab - 1) for c in p][:context]
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def test_clip_features_without_open_clip():
    torch.manual_seed(0)
    features = clip_mod.ClipFeatures(FakeClip(), fake_tokenizer)
    frames = torch.full((2, 3, 3, 384, 384), 0.5)
    frames[1] = 0.25
    out = features.encode_frames(frames)
    assert out.shape == (2, 3, 3)
    mean, std = torch.tensor(clip_mod.CLIP_MEAN), torch.tensor(clip_mod.CLIP_STD)
    expected = nn.functional.normalize((0.5 - mean) / std, dim=0)  # normalised pixels, then unit norm
    torch.testing.assert_close(out[0, 1], expected)
    torch.testing.assert_close(features.encode_frames(frames, batch_size=4), out)
    text = features.encode_text(["a dog", "", "rain"])
    assert text.shape == (3, 77, 6)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3, 77))  # every token L2-normalised
    causal = features.encode_text(["a dog barks"])  # causal mask: a later token does not change earlier ones
    torch.testing.assert_close(causal[0, :5], features.encode_text(["a dog"])[0, :5])
    with pytest.raises(ValueError, match="384 x 384"):
        features.encode_frames(torch.zeros(1, 2, 3, 224, 224))
    with pytest.raises(TypeError, match="sequence of strings"):
        features.encode_text("a dog")
    with pytest.raises(TypeError, match="text tower"):
        clip_mod.ClipFeatures(nn.Linear(2, 2), fake_tokenizer)


def test_missing_open_clip_names_the_extra(monkeypatch):
    real = clip_mod.importlib.import_module

    def fail(name, *args):
        if name == "open_clip":
            raise ImportError("No module named 'open_clip'")
        return real(name, *args)

    monkeypatch.setattr(clip_mod.importlib, "import_module", fail)
    with pytest.raises(ImportError, match=r"v2a-sampler\[mmaudio\]") as err:
        clip_mod.ClipFeatures.from_pretrained()
    assert "\n" not in str(err.value)


def test_tiny_open_clip_parity_with_official():
    """The official FeaturesUtils.encode_video_with_clip / encode_text on a tiny open_clip CLIP."""
    open_clip = pytest.importorskip("open_clip")
    tensors, meta = load_fixture("clip_tiny")
    cfg = meta["config"]
    model = open_clip.model.CLIP(**cfg).eval()
    weights = {k: v.float() for k, v in prefixed(tensors, "weights/").items()}
    table = torch.zeros(cfg["text_cfg"]["vocab_size"], cfg["text_cfg"]["width"])
    table[tensors["token_ids"].long()] = tensors["token_rows"].float()
    model.load_state_dict({**weights, "token_embedding.weight": table}, strict=True)
    features = clip_mod.ClipFeatures(model, open_clip.get_tokenizer(clip_mod.TOKENIZER_NAME))
    assert meta["tokenizer"] == clip_mod.TOKENIZER_NAME
    assert torch.equal(features.tokenize(meta["prompts"]), tensors["tokens"].long())
    spec = meta["input"]
    pixels = pattern(tuple(spec["shape"]), spec["pattern_seed"])
    assert int(pixels.sum()) == spec["pixel_sum"]
    image = features.encode_frames(fr.to_unit(pixels))
    text = features.encode_text(meta["prompts"])
    assert image.shape == (2, 3, 16) and text.shape == (3, 77, 16)
    assert rel_err(image, tensors["image"]) <= PARITY
    assert rel_err(text, tensors["text"]) <= PARITY


# -- bundled features into the network ---------------------------------------------------------------------


def test_features_feed_the_network(tmp_path, reduced):
    """Video -> read_video -> MMAudioFeatures -> MMAudio: lengths and widths fit, nulls where inputs are absent."""
    torch.manual_seed(0)
    sync_model = reduced[0]
    features = MMAudioFeatures(clip_mod.ClipFeatures(FakeClip(), fake_tokenizer), sync_model)
    video = fr.read_video(make_video(tmp_path / "v.mp4", 30, 75), duration=2.4)  # 2.5 s of video, 2.4 s read
    lengths = video.sequence_lengths(16000, 256)
    cond, negative = features.encode_videos([video, video], ["a dog", "rain"], ["noise", "static"])
    assert cond["clip"].shape == (2, lengths["clip"], 3)
    assert cond["sync"].shape == (2, lengths["sync"], 16)
    assert cond["text"].shape == (2, 77, 6) and negative["text"].shape == (2, 77, 6)
    net = MMAudio(latent_dim=6, clip_dim=3, sync_dim=16, text_dim=6, hidden_dim=16, depth=2, fused_depth=1,
                  num_heads=2, sampling_rate=16000, spectrogram_frame_rate=256).eval()  # fmt: skip
    x = torch.randn(2, lengths["latent"], 6)
    with torch.no_grad():
        assert net(x, torch.rand(2), cond).shape == x.shape
    only_text, none = features.encode(prompts=["a dog"])
    assert set(only_text) == {"text"} and none is None
    with pytest.raises(ValueError, match="batch sizes differ"):
        features.encode(video.clip[None], prompts=["a", "b"])
    with pytest.raises(ValueError, match="no clip extractor"):
        MMAudioFeatures(None, sync_model).encode(prompts=["a"])
