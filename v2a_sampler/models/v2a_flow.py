"""A small video-conditioned flow transformer over log-mel frames (the embedded V2A model).

Audio is a normalised log-mel spectrogram ``x: [B, n_mels, T]``; every ``patch`` consecutive mel frames form one
token. There are no absolute positions: a token-embedding convolution and depthwise convolutions in every block
carry local order, so the model is translation-equivariant and generates any duration (it is trained on short
crops). Video arrives as frames ``[B, Tv, H, W, 3]`` (uint8 or float in [0, 1]) sampled at a fixed rate; a small
frame encoder (per-frame CNN on the frame and its temporal difference, then a temporal convolution) turns them into
features ``[B, Tv, video_dim]`` once per sample (:meth:`V2AFlow.encode_conditions`), which are resampled to the
token rate and added to the audio tokens. A pooled copy joins the time embedding in the adaptive layer norms
(DiT-style AdaLN-zero blocks). The null condition is a learned feature vector (MMAudio-style learned empty tokens).

Protocol: velocity prediction with noise at t=1 (``x_t = (1 - t) x0 + t eps``), condition ``"video"``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.denoisers import Cond, FlowSchedule, Prediction
from ..media.specs import AudioSpec, VideoSpec
from .base import AttentionCore, DenoiserModule
from .registry import register_architecture

#: Key of the per-row "condition kept" mask used when branches are stacked into one batch.
KEEP_KEY = "video_keep"
#: Scale of the time argument of the sinusoidal embedding (t in [0, 1]).
TIME_SCALE = 1000.0
#: Width (in tokens) of the depthwise convolutions that give the blocks local temporal order. The model has no
#: absolute positions, so it is translation-equivariant and runs on any duration (it is trained on short crops).
LOCAL_KERNEL = 5


def _sinusoid(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """``[..., dim]`` sinusoidal features of ``pos`` (any float tensor)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=pos.device, dtype=torch.float32) / half)
    ang = pos.float().unsqueeze(-1) * freqs
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1)


@dataclasses.dataclass
class PreparedVideo:
    """The video condition of one batch projected for the network: per-token ``[B, N, D]`` and pooled ``[B, D]``."""

    tokens: torch.Tensor
    pooled: torch.Tensor


class FrameEncoder(nn.Module):
    """Frames ``[B, Tv, H, W, 3]`` -> features ``[B, Tv, out_dim]`` (appearance + motion, then temporal mixing)."""

    def __init__(self, out_dim: int, frame_size: int, width: int = 32) -> None:
        super().__init__()
        self.frame_size = frame_size
        layers: list[nn.Module] = []
        ch = 6  # RGB of the frame and of its difference to the previous frame
        size = frame_size
        for i in range(3):
            nxt = width * (2**i)
            layers += [nn.Conv2d(ch, nxt, 3, stride=2, padding=1), nn.GroupNorm(8, nxt), nn.SiLU()]
            ch, size = nxt, (size + 1) // 2
        self.cnn = nn.Sequential(*layers)
        self.proj = nn.Linear(ch * 4, out_dim)  # mean and max pooled, plus a 2x2 spatial grid (ch * 2)
        self.temporal = nn.Sequential(
            nn.Conv1d(out_dim, out_dim, 5, padding=2), nn.SiLU(), nn.Conv1d(out_dim, out_dim, 5, padding=2)
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [B, T, H, W, 3], got {tuple(frames.shape)}")
        b, tv = frames.shape[:2]
        f = frames.float() / 255.0 if not torch.is_floating_point(frames) else frames.float()
        f = f.permute(0, 1, 4, 2, 3)  # B T 3 H W
        if f.shape[-1] != self.frame_size or f.shape[-2] != self.frame_size:
            f = F.interpolate(f.flatten(0, 1), size=(self.frame_size, self.frame_size), mode="area").unflatten(
                0, (b, tv)
            )
        diff = torch.cat([torch.zeros_like(f[:, :1]), f[:, 1:] - f[:, :-1]], dim=1)
        # pixels are prepared in float32 and enter the network in its own precision (float16/bfloat16 pipelines)
        x = torch.cat([f - 0.5, diff], dim=2).flatten(0, 1).to(self.proj.weight.dtype)
        h = self.cnn(x)  # [B*T, C, h, w]
        grid = F.adaptive_avg_pool2d(h, 2).flatten(1)  # coarse position of things in the frame
        pooled = torch.cat([h.mean((2, 3)), h.amax((2, 3)), grid[:, : h.shape[1] * 2]], dim=1)
        feats = self.proj(pooled).unflatten(0, (b, tv))  # B T D
        return feats + self.temporal(feats.transpose(1, 2)).transpose(1, 2)


class Block(nn.Module):
    """Pre-norm transformer block with AdaLN-zero modulation from a conditioning vector."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attend = AttentionCore()
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.local = nn.Conv1d(dim, dim, LOCAL_KERNEL, padding=LOCAL_KERNEL // 2, groups=dim)
        self.mod = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s1, g1, b1, s2, g2, b2 = self.mod(F.silu(c)).unsqueeze(1).chunk(6, dim=-1)
        h = h + self.local(h.transpose(1, 2)).transpose(1, 2)  # local order (there are no absolute positions)
        y = self.norm1(h) * (1 + s1) + b1
        q, k, v = self.qkv(y).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        a = self.attend(q, k, v).transpose(1, 2).flatten(2)
        h = h + g1 * self.proj(a)
        y = self.norm2(h) * (1 + s2) + b2
        return h + g2 * self.mlp(y)


class V2AFlow(DenoiserModule):
    """Video-conditioned flow transformer ``(x [B, n_mels, T], t [B], {"video": ...}) -> velocity``.

    Args:
        n_mels: mel bands of the audio representation.
        patch: mel frames per token.
        dim: transformer width.
        depth: number of transformer blocks.
        heads: attention heads.
        mlp_ratio: MLP hidden width relative to ``dim``.
        video_dim: width of the encoded video features.
        frame_size: frames are resized to ``frame_size x frame_size`` before encoding.
        encoder_width: channels of the first frame-encoder convolution.
        audio: the :class:`~v2a_sampler.media.specs.AudioSpec` (as a dict, with normalisation statistics) of the data
            the model was trained on; needed to turn its outputs into sound.
        video: the :class:`~v2a_sampler.media.specs.VideoSpec` (frame rate and size) the model was trained with.
    """

    def __init__(
        self,
        n_mels: int = 64,
        patch: int = 2,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 3.0,
        video_dim: int = 128,
        frame_size: int = 32,
        encoder_width: int = 16,
        audio: Mapping[str, Any] | None = None,
        video: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.audio_spec = AudioSpec.from_dict(audio) if audio is not None else None
        self.video_spec = VideoSpec.from_dict(video) if video is not None else None
        if self.audio_spec is not None and self.audio_spec.n_mels != n_mels:
            raise ValueError(f"audio spec has {self.audio_spec.n_mels} mel bands but n_mels={n_mels}")
        if self.video_spec is not None and self.video_spec.frame_size != frame_size:
            raise ValueError(f"video spec frame_size {self.video_spec.frame_size} != frame_size={frame_size}")
        self.arch_kwargs = {
            "n_mels": n_mels,
            "patch": patch,
            "dim": dim,
            "depth": depth,
            "heads": heads,
            "mlp_ratio": mlp_ratio,
            "video_dim": video_dim,
            "frame_size": frame_size,
            "encoder_width": encoder_width,
            "audio": None if audio is None else dict(self.audio_spec.to_dict()),
            "video": None if video is None else dict(self.video_spec.to_dict()),
        }
        self.set_protocol(prediction=Prediction.VELOCITY, schedule=FlowSchedule(1.0))
        self.condition_names = ("video",)
        self.n_mels, self.patch, self.dim = n_mels, patch, dim
        self.encoder = FrameEncoder(video_dim, frame_size, encoder_width)
        self.null_video = nn.Parameter(torch.zeros(video_dim))
        self.tok_in = nn.Conv1d(n_mels * patch, dim, 3, padding=1)
        self.video_in = nn.Linear(video_dim, dim)
        self.global_in = nn.Linear(video_dim, dim)
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False)
        self.mod_out = nn.Linear(dim, 2 * dim)
        self.tok_out = nn.Linear(dim, n_mels * patch)
        for lin in (self.mod_out, self.tok_out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # -- conditions ----------------------------------------------------------------------------------------------
    def encode_conditions(self, cond: Cond | None) -> Cond | None:
        """Encode raw frames once (``{"video": frames}`` -> ``{"video": features}``); features pass through."""
        if cond is None or cond.get("video") is None:
            return cond
        v = cond["video"]
        if v.ndim == 5:
            return {**cond, "video": self.encoder(v)}
        return cond

    def batch_conditions(self, conds: Sequence[Cond | None], batch: int) -> Cond | None:
        """Stack per-branch conditions into one batch; dropped rows are flagged in ``video_keep``."""
        feats, keep = [], []
        ref = next((c["video"] for c in conds if c is not None and c.get("video") is not None), None)
        if ref is None or ref.ndim != 3:
            return NotImplemented
        for c in conds:
            v = None if c is None else c.get("video")
            if v is None:
                feats.append(torch.zeros_like(ref))
                keep.append(torch.zeros(batch, dtype=torch.bool, device=ref.device))
            else:
                if v.shape != ref.shape:
                    return NotImplemented
                feats.append(v)
                k = c.get(KEEP_KEY)
                keep.append(torch.ones(batch, dtype=torch.bool, device=ref.device) if k is None else k)
        return {"video": torch.cat(feats), KEEP_KEY: torch.cat(keep)}

    def _video_features(self, cond: Cond | None, batch: int, dtype: torch.dtype, device) -> torch.Tensor:
        v = None if cond is None else cond.get("video")
        null = self.null_video.to(dtype).view(1, 1, -1)
        if v is None:
            return null.expand(batch, 1, -1)
        if v.ndim == 5:
            v = self.encoder(v)
        if v.shape[0] != batch:
            raise ValueError(f"video features have batch {v.shape[0]}, audio has {batch}")
        v = v.to(dtype)
        keep = cond.get(KEEP_KEY) if isinstance(cond, Mapping) else None
        if keep is not None:
            v = torch.where(keep.view(-1, 1, 1), v, null.expand_as(v))
        return v

    # -- network -------------------------------------------------------------------------------------------------
    def prepare_conditions(self, cond: Cond | None, x: torch.Tensor) -> PreparedVideo:
        """The video condition for audio shaped like ``x``, projected once (independent of x's values and t)."""
        if x.ndim != 3 or x.shape[1] != self.n_mels:
            raise ValueError(f"V2AFlow expects x of shape [B, {self.n_mels}, T], got {tuple(x.shape)}")
        b, _, frames = x.shape
        n_tok = -(-frames // self.patch)
        dtype = self.tok_in.weight.dtype
        video = self._video_features(cond, b, dtype, x.device)  # B Tv D
        aligned = F.interpolate(video.transpose(1, 2), size=n_tok, mode="linear", align_corners=False)
        return PreparedVideo(tokens=self.video_in(aligned.transpose(1, 2)), pooled=self.global_in(video.mean(1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Cond | PreparedVideo | None) -> torch.Tensor:
        prepared = cond if isinstance(cond, PreparedVideo) else self.prepare_conditions(cond, x)
        b, _, frames = x.shape
        pad = (-frames) % self.patch
        xp = F.pad(x, (0, pad)) if pad else x
        n_tok = xp.shape[-1] // self.patch
        if prepared.tokens.shape[:2] != (b, n_tok):
            raise ValueError(f"audio {tuple(x.shape)} does not fit the prepared video condition")
        dtype = self.tok_in.weight.dtype
        tok = xp.to(dtype).unflatten(-1, (n_tok, self.patch)).permute(0, 2, 1, 3).flatten(2)  # B N (mels*patch)
        h = self.tok_in(tok.transpose(1, 2)).transpose(1, 2) + prepared.tokens
        c = self.time_mlp(_sinusoid(t.reshape(-1).expand(b) * TIME_SCALE, self.dim).to(dtype))
        c = c + prepared.pooled
        for blk in self.blocks:
            h = blk(h, c)
        shift, scale = self.mod_out(F.silu(c)).unsqueeze(1).chunk(2, dim=-1)
        out = self.tok_out(self.norm_out(h) * (1 + scale) + shift)  # B N (mels*patch)
        out = out.unflatten(-1, (self.n_mels, self.patch)).permute(0, 2, 1, 3).flatten(2)
        return out[..., :frames].to(x.dtype)

    def deepened(self, depth: int) -> V2AFlow:
        """A copy with ``depth`` blocks computing the same function: the blocks of this network, then new blocks that
        start as the identity (AdaLN-zero gates and the local convolution zeroed), so training continues from this
        network's function (progressive growing of depth)."""
        if depth < len(self.blocks):
            raise ValueError(f"deepened({depth}) cannot remove blocks: the network has {len(self.blocks)}")
        grown = type(self)(**{**self.arch_kwargs, "depth": int(depth)})
        grown.set_protocol(prediction=self.prediction, schedule=self.schedule, amg_weight=self.amg_weight)
        missing, unexpected = grown.load_state_dict(self.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("blocks.") for k in missing)
        for block in list(grown.blocks)[len(self.blocks) :]:
            for p in (*block.mod.parameters(), *block.local.parameters()):
                nn.init.zeros_(p)
        dtype = self.tok_in.weight.dtype
        return grown.to(device=self.tok_in.weight.device, dtype=dtype)

    def perturbation_sites(self) -> dict[str, list[nn.Module]]:
        """Where :mod:`~v2a_sampler.models.perturb` may perturb this network: its transformer blocks (``h -> h``)
        and their attention cores."""
        return {"blocks": list(self.blocks), "attention": [b.attend for b in self.blocks]}

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"{super().extra_repr()}, params={n / 1e6:.2f}M"


register_architecture("v2a_flow", V2AFlow)


def model_summary(model: V2AFlow) -> dict[str, Any]:
    """Parameter counts per part (for docs and logs)."""
    parts = {"encoder": model.encoder, "blocks": model.blocks}
    out = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
    out["total"] = sum(p.numel() for p in model.parameters())
    return out
