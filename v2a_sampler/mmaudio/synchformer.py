"""Synchformer's visual feature extractor as MMAudio uses it: video frames -> ``[B, Ns, 768]`` sync features.

Our own implementation (plain torch) of the visual branch of Synchformer (Iashin et al., "Synchformer: Efficient
Synchronization from Sparse Cues"), written from the module definitions of the official MMAudio repository
(hkchengrex/MMAudio, ``mmaudio/ext/synchformer/``) so that parameter names and shapes match:

* the backbone is a MotionFormer with *divided* space-time attention (config ``divided_224_16x4.yaml``): 224 px
  frames cut into 16 x 16 px patches by 2-frame tubelets (a 3-D convolution), one learned spatial position
  embedding per patch shared by all time steps plus one learned temporal embedding per time step, a CLS token, and
  12 blocks that attend first over time (each patch position with itself across the 8 time steps) then over space
  (each time step's 196 patches), the CLS token attending to all tokens in both;
* the per-time-step output tokens come from an attention pooling layer (a pre-norm transformer encoder layer with
  its own CLS token) over the 196 patch tokens of each time step; time is not pooled.

MMAudio cuts 25 fps, 224 x 224 frames (normalised to ``[-1, 1]``) into windows of 16 frames with a stride of 8,
runs each window through the extractor (8 tokens each) and concatenates the windows' tokens: ``T`` frames give
``8 * ((T - 16) // 8 + 1)`` features (:meth:`Synchformer.encode`).

Checkpoint: the official ``synchformer_state_dict.pth`` holds the whole Synchformer synchronisation model (audio
branch, projections and transformer too). The official loader keeps the entries whose key starts with
``vfeat_extractor`` and loads them strictly; :meth:`Synchformer.load_state_dict` does the same, so the file loads
with ``strict=True`` unchanged. The extractor's own keys are exactly the official ones (same order), including the
2-D patch embedding that the official module keeps (unused) because it sizes the position embedding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import load_into, read_state_dict

#: Frames per Synchformer window and the stride between windows (MMAudio's ``encode_video_with_sync``).
SEGMENT_FRAMES = 16
SEGMENT_STEP = 8
#: Side of the square frames Synchformer takes, and the frame rate MMAudio samples them at.
SYNC_SIZE = 224
SYNC_FPS = 25.0
#: Per-channel mean and standard deviation that map ``[0, 1]`` pixels to Synchformer's ``[-1, 1]`` input.
SYNC_MEAN = (0.5, 0.5, 0.5)
SYNC_STD = (0.5, 0.5, 0.5)
#: Epsilon of every LayerNorm in the extractor.
LN_EPS = 1e-6
#: Standard deviation of the truncated-normal initialisation (a fresh module; checkpoints overwrite it).
INIT_STD = 0.02
#: The state-dict prefix the official loader keeps from ``synchformer_state_dict.pth``.
CHECKPOINT_PREFIX = "vfeat_extractor"
MANIFEST_PATH = Path(__file__).parent / "manifests" / "synchformer.json"


@dataclass(frozen=True)
class SynchformerConfig:
    """Hyper-parameters of the extractor; the defaults are the official ones (``divided_224_16x4.yaml``)."""

    img_size: int = SYNC_SIZE  # square input side (pixels)
    patch_size: int = 16  # square patch side (pixels)
    tubelet: int = 2  # frames per patch (the temporal kernel of the patch embedding)
    frames: int = SEGMENT_FRAMES  # frames per window
    step: int = SEGMENT_STEP  # stride between windows, in frames (:meth:`Synchformer.encode`)
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: int = 4
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size or self.frames % self.tubelet or self.dim % self.heads:
            raise ValueError(
                f"inconsistent Synchformer config: img_size {self.img_size} must be a multiple of patch_size "
                f"{self.patch_size}, frames {self.frames} of tubelet {self.tubelet}, dim {self.dim} of heads "
                f"{self.heads}"
            )
        if not 0 < self.step:
            raise ValueError(f"window step must be positive, got {self.step}")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patches per time step."""
        return self.grid**2

    @property
    def time_steps(self) -> int:
        """Time steps (tokens out) per window."""
        return self.frames // self.tubelet


# ---------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """2-D patch embedding of the image ViT the extractor descends from: kept for its checkpoint entries only."""

    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)


class TubeletEmbed(nn.Module):
    """``[N, 3, T, H, W]`` -> ``[N, (T / tubelet) * grid * grid, dim]`` tokens, time-major then row-major."""

    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        kernel = (cfg.tubelet, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(3, cfg.dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention over the last two axes, any leading batch shape (scaled by ``head_dim ** -0.5``)."""
    lead = q.shape[:-2]
    out = F.scaled_dot_product_attention(
        q.reshape(-1, *q.shape[-2:]), k.reshape(-1, *k.shape[-2:]), v.reshape(-1, *v.shape[-2:])
    )
    return out.view(*lead, *out.shape[-2:])


class DividedAttention(nn.Module):
    """Attention along time or along space on ``[N, 1 + T * P, dim]`` tokens (CLS first, then time-major patches).

    The CLS token attends to every token; each patch token attends to the CLS token and to the tokens of its own
    group: the same patch position at every time step (``"time"``) or the patches of its own time step
    (``"space"``).
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, axis: str, time_steps: int, patches: int) -> torch.Tensor:
        n, length, dim = x.shape
        h = self.heads
        # q/k/v are three contiguous blocks of channels, heads outer: [3, N, H, L, d]
        q, k, v = self.qkv(x).view(n, length, 3, h, dim // h).permute(2, 0, 3, 1, 4)
        cls_out = _attend(q[:, :, :1], k, v)  # [N, H, 1, d]

        def grouped(t: torch.Tensor) -> torch.Tensor:  # [N, H, T * P, d] -> [N, groups, H, members, d]
            t = t.unflatten(2, (time_steps, patches))
            return t.permute(0, 3, 1, 2, 4) if axis == "time" else t.permute(0, 2, 1, 3, 4)

        def with_cls(t: torch.Tensor) -> torch.Tensor:  # prepend the CLS key/value to every group
            groups = grouped(t[:, :, 1:])
            cls = t[:, :, :1].unsqueeze(1).expand(-1, groups.shape[1], -1, -1, -1)
            return torch.cat((cls, groups), dim=3)

        out = _attend(grouped(q[:, :, 1:]), with_cls(k), with_cls(v))  # [N, groups, H, members, d]
        out = out.permute(0, 2, 3, 1, 4) if axis == "time" else out.permute(0, 2, 1, 3, 4)  # [N, H, T, P, d]
        out = torch.cat((cls_out, out.flatten(2, 3)), dim=2)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Mlp(nn.Module):
    """``fc2(gelu(fc1 x))`` (exact GELU)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DividedBlock(nn.Module):
    """Pre-norm block: time attention (``norm3``/``timeattn``), space attention (``norm1``/``attn``), MLP."""

    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        d = cfg.dim
        # registration order as in the official module (same state-dict order)
        self.norm1 = nn.LayerNorm(d, eps=LN_EPS)
        self.attn = DividedAttention(d, cfg.heads, cfg.qkv_bias)
        self.timeattn = DividedAttention(d, cfg.heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(d, eps=LN_EPS)
        self.mlp = Mlp(d, int(d * cfg.mlp_ratio))
        self.norm3 = nn.LayerNorm(d, eps=LN_EPS)

    def forward(self, x: torch.Tensor, time_steps: int, patches: int) -> torch.Tensor:
        x = x + self.timeattn(self.norm3(x), "time", time_steps, patches)
        x = x + self.attn(self.norm1(x), "space", time_steps, patches)
        return x + self.mlp(self.norm2(x))


class PoolAttention(nn.Module):
    """Multi-head attention with a fused ``in_proj`` (the parameter layout of ``nn.MultiheadAttention``)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Attention of ``query`` ``[N, Lq, dim]`` over ``x`` ``[N, L, dim]``."""
        dim = x.shape[-1]
        wq, wkv = self.in_proj_weight.split((dim, 2 * dim))
        bq, bkv = self.in_proj_bias.split((dim, 2 * dim))
        q = F.linear(query, wq, bq).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        k, v = F.linear(x, wkv, bkv).unflatten(-1, (2, self.heads, -1)).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class AttentionPool(nn.Module):
    """``[N, L, dim]`` -> ``[N, dim]``: a learned CLS token prepended, one pre-norm transformer encoder layer
    (GELU feed-forward), the CLS output kept."""

    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.self_attn = PoolAttention(d, cfg.heads)
        self.linear1 = nn.Linear(d, cfg.mlp_ratio * d)
        self.linear2 = nn.Linear(cfg.mlp_ratio * d, d)
        self.norm1 = nn.LayerNorm(d, eps=LN_EPS)
        self.norm2 = nn.LayerNorm(d, eps=LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        h = self.norm1(torch.cat((cls, x), dim=1))
        y = cls + self.self_attn(h[:, :1], h)  # only the CLS row is kept, so only it is computed
        y = y + self.linear2(F.gelu(self.linear1(self.norm2(y))))
        return y[:, 0]


class MotionFormer(nn.Module):
    """Windows ``[N, 3, frames, H, W]`` (normalised) -> per-time-step features ``[N, frames / tubelet, dim]``."""

    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, d))  # CLS, then one per patch position
        self.temp_embed = nn.Parameter(torch.zeros(1, cfg.time_steps, d))
        self.patch_embed = PatchEmbed(cfg)
        self.patch_embed_3d = TubeletEmbed(cfg)
        self.blocks = nn.ModuleList(DividedBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=LN_EPS)
        self.spatial_attn_agg = AttentionPool(cfg)
        self.patch_embed.requires_grad_(False)

    def position_embedding(self) -> torch.Tensor:
        """``[1, 1 + T * P, dim]``: the CLS embedding, then patch-position + time-step embeddings (time-major)."""
        p, t = self.cfg.num_patches, self.cfg.time_steps
        grid = self.pos_embed[:, 1:].unsqueeze(1) + self.temp_embed.unsqueeze(2)  # [1, T, P, dim]
        return torch.cat((self.pos_embed[:, :1], grid.reshape(1, t * p, -1)), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        expected = (3, cfg.frames, cfg.img_size, cfg.img_size)
        if x.ndim != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"MotionFormer takes windows [N, {', '.join(map(str, expected))}], got {list(x.shape)}")
        tokens = self.patch_embed_3d(x)
        tokens = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), tokens), dim=1) + self.position_embedding()
        for block in self.blocks:
            tokens = block(tokens, cfg.time_steps, cfg.num_patches)
        tokens = self.norm(tokens[:, 1:])  # [N, T * P, dim]
        n, t = x.shape[0], cfg.time_steps
        pooled = self.spatial_attn_agg(tokens.reshape(n * t, cfg.num_patches, -1))
        return pooled.view(n, t, -1)


# ---------------------------------------------------------------------------------------------------------------
# The extractor
# ---------------------------------------------------------------------------------------------------------------


class Synchformer(nn.Module):
    """Synchformer's visual feature extractor (official state-dict layout: everything under ``vfeat_extractor``).

    :meth:`forward` takes windows ``[B, S, frames, 3, H, W]`` and returns ``[B, S, frames / tubelet, dim]``
    (the official module's signature); :meth:`encode` takes whole clips ``[B, T, 3, H, W]`` and returns MMAudio's
    sync features ``[B, Ns, dim]``. Frames are normalised with :func:`normalize` (``[0, 1]`` -> ``[-1, 1]``).
    """

    def __init__(self, config: SynchformerConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = SynchformerConfig(**{**asdict(config or SynchformerConfig()), **overrides})
        self.config = cfg
        self.vfeat_extractor = MotionFormer(cfg)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=INIT_STD)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, PoolAttention):
                nn.init.xavier_uniform_(m.in_proj_weight)
        v = self.vfeat_extractor
        for p in (v.cls_token, v.pos_embed, v.spatial_attn_agg.cls_token):
            nn.init.trunc_normal_(p, std=INIT_STD)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load the entries under ``vfeat_extractor`` (the others, e.g. the audio branch, are ignored: as official)."""
        state = {k: v for k, v in state_dict.items() if k.startswith(CHECKPOINT_PREFIX)}
        return super().load_state_dict(state, strict=strict, assign=assign)

    @classmethod
    def from_official(cls, path: str | os.PathLike | None = None, **overrides: Any) -> Synchformer:
        """The official ``synchformer_state_dict.pth`` (downloaded into the hub cache when ``path`` is None), strictly
        loaded, in eval mode."""
        from .hub import download

        path = download("synchformer") if path is None else Path(path)
        model = cls(**overrides)
        what = "Synchformer"
        load_into(model, read_state_dict(path, what, "synchformer_state_dict.pth"), path, what)
        return model.eval()

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """``[B, S, frames, 3, H, W]`` normalised windows -> ``[B, S, frames / tubelet, dim]``."""
        if windows.ndim != 6:
            raise ValueError(f"Synchformer takes windows [B, S, T, 3, H, W], got {list(windows.shape)}")
        b, s = windows.shape[:2]
        out = self.vfeat_extractor(windows.flatten(0, 1).transpose(1, 2))  # [B*S, 3, T, H, W]
        return out.view(b, s, *out.shape[1:])

    def num_windows(self, num_frames: int) -> int:
        """Windows MMAudio cuts from ``num_frames`` frames: ``(num_frames - frames) // step + 1`` (0 if too few)."""
        cfg = self.config
        return max(0, (num_frames - cfg.frames) // cfg.step + 1)

    def num_features(self, num_frames: int) -> int:
        """Sync features :meth:`encode` returns for ``num_frames`` frames."""
        return self.num_windows(num_frames) * self.config.time_steps

    def encode(self, frames: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """MMAudio's sync features of clips ``[B, T, 3, H, W]`` (normalised): ``[B, num_features(T), dim]``.

        Windows of ``frames`` frames every ``step`` frames (trailing frames that fill no window are unused) go
        through the extractor ``batch_size`` windows at a time (default: all at once); their tokens are
        concatenated in time order.
        """
        cfg = self.config
        if frames.ndim != 5 or tuple(frames.shape[2:]) != (3, cfg.img_size, cfg.img_size):
            raise ValueError(
                f"Synchformer.encode takes frames [B, T, 3, {cfg.img_size}, {cfg.img_size}], got {list(frames.shape)}"
            )
        b, t = frames.shape[:2]
        s = self.num_windows(t)
        if s == 0:
            raise ValueError(
                f"Synchformer needs at least {cfg.frames} frames ({cfg.frames / SYNC_FPS:.2f} s at {SYNC_FPS:g} fps), "
                f"got {t}"
            )
        windows = frames.unfold(1, cfg.frames, cfg.step)  # [B, S, 3, H, W, frames] (a view)
        windows = windows.permute(0, 1, 5, 2, 3, 4).reshape(b * s, 1, cfg.frames, 3, cfg.img_size, cfg.img_size)
        step = b * s if batch_size is None else int(batch_size)
        if step <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        out = torch.cat([self(windows[i : i + step]) for i in range(0, b * s, step)])  # [B*S, 1, T', dim]
        return out.view(b, s * cfg.time_steps, -1)

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"config={self.config}, params={n / 1e6:.2f}M"


def normalize(frames: torch.Tensor) -> torch.Tensor:
    """``[..., 3, H, W]`` pixels in ``[0, 1]`` -> Synchformer's input range (``(x - 0.5) / 0.5``, not in place)."""
    mean = torch.tensor(SYNC_MEAN, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
    std = torch.tensor(SYNC_STD, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
    return frames.sub(mean).div_(std)


# ---------------------------------------------------------------------------------------------------------------
# Key manifest (written from the official module by tools/mmaudio_ref_synchformer.py)
# ---------------------------------------------------------------------------------------------------------------


def state_dict_shapes(config: SynchformerConfig | None = None) -> dict[str, list[int]]:
    """``{key: shape}`` of our extractor's state dict (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        model = Synchformer(config)
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def load_manifest() -> dict[str, Any]:
    """The committed manifest of the official extractor: ``{"variants": {"synchformer": {"keys": ...}}}``."""
    return json.loads(MANIFEST_PATH.read_text())
