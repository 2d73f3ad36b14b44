"""MMAudio's flow network, key-compatible with the official flow checkpoints (``"mmaudio"``).

Our own implementation of the multimodal transformer of MMAudio (Cheng et al., "Taming Multimodal Joint Training for
High-Quality Video-to-Audio Synthesis"), written from the module definitions of the official repository
(hkchengrex/MMAudio, ``mmaudio/model/networks.py`` and friends) so that its parameter names and shapes match: the
state dict of an official flow checkpoint (``mmaudio_small_16k.pth`` ... ``mmaudio_large_44k_v2.pth``) loads with
``load_state_dict(state, strict=True)`` unchanged (stale buffers some checkpoints carry, ``latent_rot``,
``clip_rot`` and ``t_embed.freqs``, are ignored on load).

Inputs (channels last, as in the official code):

* ``x``: normalised VAE latents ``[B, N, latent_dim]`` (use :meth:`MMAudio.normalize` / :meth:`MMAudio.unnormalize`
  with the latent statistics stored in the checkpoint);
* ``t``: ``[B]`` (or a scalar) raw flow time in ``[0, 1]``, noise at ``t = 0`` (``FlowSchedule(noise_at=0.0)``:
  ``x_t = t x1 + (1 - t) x0``, prediction = velocity ``x1 - x0``);
* ``cond``: ``{"clip": [B, Nc, clip_dim], "sync": [B, Ns, sync_dim], "text": [B, Nt, text_dim]}`` (CLIP frame
  features at 8 fps, Synchformer features, CLIP text tokens). A missing or ``None`` entry is the learned null:
  ``empty_clip_feat`` / ``empty_sync_feat`` repeated over the sequence, and ``empty_string_feat`` (the stored text
  feature of the empty prompt) for text. Video (``clip`` + ``sync``) and text drop separately.

Any duration works: the sequence lengths come from the inputs (the sync features are upsampled to the latent
length) and the rotary tables are recomputed for them; :func:`sequence_lengths` gives the lengths the official
feature extractors produce for a duration.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.denoisers import Cond, FlowSchedule, Prediction
from ..models.base import AttentionCore, DenoiserModule
from ..models.registry import register_architecture

CONDITIONS = ("clip", "sync", "text")
#: The conditions that make up "the video" (drop both for video-free CFG branches).
VIDEO = ("clip", "sync")
#: Synchformer features come in segments of this many frames (one learned position embedding per frame).
SYNC_SEGMENT = 8
#: Non-persistent buffers that older official checkpoints may still hold; dropped on load.
STALE_KEYS = ("latent_rot", "clip_rot", "t_embed.freqs")
ROPE_THETA = 10000.0
MANIFEST_PATH = Path(__file__).parent / "manifests" / "network.json"

_COMMON = {"clip_dim": 1024, "sync_dim": 768, "text_dim": 1024, "text_seq_len": 77, "mlp_ratio": 4.0}
#: Hyper-parameters of the official variants (``get_my_mmaudio``); 16 kHz: 256-sample mel hop, 44.1 kHz: 512.
VARIANTS: dict[str, dict[str, Any]] = {
    "small_16k": {**_COMMON, "latent_dim": 20, "hidden_dim": 448, "depth": 12, "fused_depth": 8, "num_heads": 7,
                  "v2": False, "sampling_rate": 16000, "spectrogram_frame_rate": 256},
    "small_44k": {**_COMMON, "latent_dim": 40, "hidden_dim": 448, "depth": 12, "fused_depth": 8, "num_heads": 7,
                  "v2": False, "sampling_rate": 44100, "spectrogram_frame_rate": 512},
    "medium_44k": {**_COMMON, "latent_dim": 40, "hidden_dim": 896, "depth": 12, "fused_depth": 8, "num_heads": 14,
                   "v2": False, "sampling_rate": 44100, "spectrogram_frame_rate": 512},
    "large_44k": {**_COMMON, "latent_dim": 40, "hidden_dim": 896, "depth": 21, "fused_depth": 14, "num_heads": 14,
                  "v2": False, "sampling_rate": 44100, "spectrogram_frame_rate": 512},
    "large_44k_v2": {**_COMMON, "latent_dim": 40, "hidden_dim": 896, "depth": 21, "fused_depth": 14,
                     "num_heads": 14, "v2": True, "sampling_rate": 44100, "spectrogram_frame_rate": 512},
}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Sequence lengths
# ---------------------------------------------------------------------------------------------------------------


def sequence_lengths(
    duration: float,
    sampling_rate: int = 44100,
    spectrogram_frame_rate: int = 512,
    latent_downsample_rate: int = 2,
    clip_frame_rate: int = 8,
    sync_frame_rate: int = 25,
    sync_frames_per_segment: int = 16,
    sync_step: int = 8,
    sync_downsample_rate: int = 2,
) -> dict[str, int]:
    """``{"latent", "clip", "sync"}`` sequence lengths of a clip of ``duration`` seconds (official conventions).

    8 s gives 250 / 64 / 192 at 16 kHz and 345 / 64 / 192 at 44.1 kHz.
    """
    latent = int(math.ceil(duration * sampling_rate / spectrogram_frame_rate / latent_downsample_rate))
    frames = duration * sync_frame_rate
    segments = (frames - sync_frames_per_segment) // sync_step + 1
    return {
        "latent": latent,
        "clip": int(duration * clip_frame_rate),
        "sync": int(segments * sync_frames_per_segment / sync_downsample_rate),
    }


# ---------------------------------------------------------------------------------------------------------------
# Rotary position embedding (adjacent channel pairs, float32)
# ---------------------------------------------------------------------------------------------------------------


def rope_tables(length: int, head_dim: int, scaling: float = 1.0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` of shape ``[length, head_dim // 2]`` in float32.

    Channel pair ``(2i, 2i+1)`` at position ``p`` turns by ``p * scaling / theta ** (2i / head_dim)``. The clip
    stream uses ``scaling = latent_len / clip_len`` so that both streams span the same angles over the clip.
    """
    if head_dim % 2:
        raise ValueError(f"rotary embedding needs an even head dim, got {head_dim}")
    pos = torch.arange(length, dtype=torch.float32, device=device)
    freqs = 1.0 / (ROPE_THETA ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    freqs = freqs * scaling
    ang = pos[:, None] * freqs[None, :]
    return torch.cos(ang), torch.sin(ang)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of ``x [..., N, D]`` in float32; returns ``x``'s dtype."""
    xf = x.float().unflatten(-1, (-1, 2))
    a, b = xf[..., 0], xf[..., 1]
    out = torch.stack([cos * a - sin * b, sin * a + cos * b], dim=-1)
    return out.flatten(-2).to(x.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Layers (parameter names follow the official checkpoints)
# ---------------------------------------------------------------------------------------------------------------


def _swiglu_hidden(hidden: int, multiple_of: int = 256) -> int:
    """SwiGLU width: two thirds of ``hidden``, rounded up to a multiple of ``multiple_of``."""
    h = int(2 * hidden / 3)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


class ConvTokens(nn.Conv1d):
    """1-D convolution over the token axis of a ``[B, N, C]`` tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class SwiGLU(nn.Module):
    """``w2(silu(w1 x) * w3 x)`` with bias-free linear (``kernel_size=1``) or token-convolution projections."""

    def __init__(self, dim: int, hidden: int, kernel_size: int = 1) -> None:
        super().__init__()
        h = _swiglu_hidden(hidden)
        if kernel_size == 1:
            self.w1 = nn.Linear(dim, h, bias=False)
            self.w2 = nn.Linear(h, dim, bias=False)
            self.w3 = nn.Linear(dim, h, bias=False)
        else:
            pad = kernel_size // 2
            self.w1 = ConvTokens(dim, h, kernel_size, padding=pad, bias=False)
            self.w2 = ConvTokens(h, dim, kernel_size, padding=pad, bias=False)
            self.w3 = ConvTokens(dim, h, kernel_size, padding=pad, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def split_qkv(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a fused projection ``[B, N, 3 * H * D]`` into ``q, k, v`` of shape ``[B, H, N, D]``.

    The official layout is interleaved: channel ``(h * D + d) * 3 + j`` is head ``h``, channel ``d`` of q/k/v
    ``j`` (not three contiguous blocks).
    """
    b, n, c = qkv.shape
    parts = qkv.view(b, n, heads, c // (3 * heads), 3).permute(4, 0, 2, 1, 3)
    return parts[0], parts[1], parts[2]


class Attention(nn.Module):
    """Fused interleaved q/k/v projection and per-head RMSNorm of q and k (RoPE applied after the norm)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(dim // heads)
        self.k_norm = nn.RMSNorm(dim // heads)

    def project(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = split_qkv(self.qkv(x), self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v


def _attend(core: AttentionCore, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = core(q.contiguous(), k.contiguous(), v.contiguous())
    return out.transpose(1, 2).flatten(2)


class StreamBlock(nn.Module):
    """One stream of a (joint or single) MM-DiT block with AdaLN modulation.

    ``pre_only`` blocks only produce q/k/v (the clip/text streams of the last joint block): their modulation has
    shift and scale only, and they have no output projection or feed-forward.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, kernel_size: int, pre_only: bool = False) -> None:
        super().__init__()
        self.pre_only = pre_only
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = Attention(dim, heads)
        self.attend = AttentionCore()  # parameterless: where attention perturbations hook in
        if not pre_only:
            if kernel_size == 1:
                self.linear1 = nn.Linear(dim, dim)
            else:
                self.linear1 = ConvTokens(dim, dim, kernel_size, padding=kernel_size // 2)
            self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
            self.ffn = SwiGLU(dim, int(dim * mlp_ratio), kernel_size)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, (2 if pre_only else 6) * dim))

    def pre(self, x: torch.Tensor, c: torch.Tensor, rope) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        mod = self.adaLN_modulation(c).chunk(2 if self.pre_only else 6, dim=-1)
        h = self.norm1(x) * (1 + mod[1]) + mod[0]
        return self.attn.project(h, rope), mod[2:]

    def post(self, x: torch.Tensor, attn_out: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if self.pre_only:
            return x
        gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
        x = x + self.linear1(attn_out) * gate_msa
        return x + self.ffn(self.norm2(x) * (1 + scale_mlp) + shift_mlp) * gate_mlp

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope) -> torch.Tensor:
        qkv, mod = self.pre(x, c, rope)
        return self.post(x, _attend(self.attend, *qkv), mod)


class JointBlock(nn.Module):
    """Joint attention over the latent, clip and text streams (each with its own weights)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, pre_only: bool) -> None:
        super().__init__()
        self.pre_only = pre_only
        self.latent_block = StreamBlock(dim, heads, mlp_ratio, kernel_size=3)
        self.clip_block = StreamBlock(dim, heads, mlp_ratio, kernel_size=3, pre_only=pre_only)
        self.text_block = StreamBlock(dim, heads, mlp_ratio, kernel_size=1, pre_only=pre_only)

    def forward(self, latent, clip, text, global_c, extended_c, latent_rope, clip_rope):
        x_qkv, x_mod = self.latent_block.pre(latent, extended_c, latent_rope)
        c_qkv, c_mod = self.clip_block.pre(clip, global_c, clip_rope)
        t_qkv, t_mod = self.text_block.pre(text, global_c, None)
        n_lat, n_clip = latent.shape[1], clip.shape[1]
        out = _attend(self.latent_block.attend, *(torch.cat([x_qkv[i], c_qkv[i], t_qkv[i]], dim=2) for i in range(3)))
        latent = self.latent_block.post(latent, out[:, :n_lat], x_mod)
        if not self.pre_only:
            clip = self.clip_block.post(clip, out[:, n_lat : n_lat + n_clip], c_mod)
            text = self.text_block.post(text, out[:, n_lat + n_clip :], t_mod)
        return latent, clip, text


class FinalBlock(nn.Module):
    """AdaLN (shift, scale) then a width-7 token convolution to the latent channels."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.conv = ConvTokens(dim, out_dim, 7, padding=3)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.conv(self.norm(x) * (1 + scale) + shift)


class TimeEmbedder(nn.Module):
    """Sinusoidal features of the raw time ``t`` (in [0, 1]) followed by an MLP.

    Frequencies are ``(10000 / max_period) / 10000 ** (2i / n_freq)``; v1 uses ``n_freq = 256, max_period = 10000``,
    v2 ``n_freq = hidden_dim, max_period = 1``. Features are ``[cos, sin]``.
    """

    def __init__(self, dim: int, n_freq: int, max_period: float) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(n_freq, dim), nn.SiLU(), nn.Linear(dim, dim))
        freqs = 1.0 / (10000 ** (torch.arange(0, n_freq, 2, dtype=torch.float32) / n_freq))
        self.register_buffer("freqs", (10000 / max_period) * freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t[:, None].float() * self.freqs[None].float()
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


# ---------------------------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PreparedConditions:
    """MMAudio's condition streams for one batch, independent of the latents and the time (see
    :meth:`MMAudio.prepare_conditions`): projected tokens ``[B, L, D]`` (sync already upsampled to the latent
    length) and the pooled global condition ``[B, D]``."""

    clip: torch.Tensor
    sync: torch.Tensor
    text: torch.Tensor
    pooled: torch.Tensor


class MMAudio(DenoiserModule):
    """MMAudio flow network ``(x [B, N, latent_dim], t [B], {"clip", "sync", "text"}) -> velocity``.

    Build an official variant with :meth:`from_variant` (``small_16k``, ``small_44k``, ``medium_44k``,
    ``large_44k``, ``large_44k_v2``) or pass the hyper-parameters. ``sampling_rate`` and ``spectrogram_frame_rate``
    only serve :meth:`sequence_lengths` (and the null-sequence lengths when a video condition is absent).
    """

    def __init__(
        self,
        latent_dim: int = 40,
        clip_dim: int = 1024,
        sync_dim: int = 768,
        text_dim: int = 1024,
        hidden_dim: int = 448,
        depth: int = 12,
        fused_depth: int = 8,
        num_heads: int = 7,
        mlp_ratio: float = 4.0,
        text_seq_len: int = 77,
        v2: bool = False,
        sampling_rate: int = 44100,
        spectrogram_frame_rate: int = 512,
        variant: str | None = None,
    ) -> None:
        super().__init__()
        if hidden_dim % num_heads or (hidden_dim // num_heads) % 2:
            raise ValueError(f"hidden_dim {hidden_dim} must split into {num_heads} heads of even width")
        if not 0 <= fused_depth < depth:
            raise ValueError(f"need 0 <= fused_depth < depth (at least one joint block), got {fused_depth}, {depth}")
        self.arch_kwargs = {
            "latent_dim": latent_dim,
            "clip_dim": clip_dim,
            "sync_dim": sync_dim,
            "text_dim": text_dim,
            "hidden_dim": hidden_dim,
            "depth": depth,
            "fused_depth": fused_depth,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
            "text_seq_len": text_seq_len,
            "v2": v2,
            "sampling_rate": sampling_rate,
            "spectrogram_frame_rate": spectrogram_frame_rate,
            "variant": variant,
        }
        self.set_protocol(prediction=Prediction.VELOCITY, schedule=FlowSchedule(0.0))
        self.condition_names = CONDITIONS
        self.condition_groups = {"video": VIDEO}  # drop=video / multi_cfg(video=...) drop clip and sync together
        self.latent_dim, self.hidden_dim, self.num_heads, self.v2 = latent_dim, hidden_dim, num_heads, v2
        self.text_seq_len = text_seq_len
        d = hidden_dim
        act = nn.SiLU if v2 else nn.SELU
        self.audio_input_proj = nn.Sequential(ConvTokens(latent_dim, d, 7, padding=3), act(), SwiGLU(d, 4 * d, 7))
        if v2:
            clip_proj = nn.Sequential(nn.Linear(clip_dim, d), nn.SiLU(), SwiGLU(d, 4 * d, 3))
            text_proj = nn.Sequential(nn.Linear(text_dim, d), nn.SiLU(), SwiGLU(d, 4 * d))
        else:  # v1 has no activation between the input linear and the MLP
            clip_proj = nn.Sequential(nn.Linear(clip_dim, d), SwiGLU(d, 4 * d, 3))
            text_proj = nn.Sequential(nn.Linear(text_dim, d), SwiGLU(d, 4 * d))
        self.clip_input_proj = clip_proj  # registration order as in the official module (same state-dict order)
        self.sync_input_proj = nn.Sequential(ConvTokens(sync_dim, d, 7, padding=3), act(), SwiGLU(d, 4 * d, 3))
        self.text_input_proj = text_proj
        self.clip_cond_proj = nn.Linear(d, d)
        self.text_cond_proj = nn.Linear(d, d)
        self.global_cond_mlp = SwiGLU(d, 4 * d)
        self.sync_pos_emb = nn.Parameter(torch.zeros(1, 1, SYNC_SEGMENT, sync_dim))
        self.final_layer = FinalBlock(d, latent_dim)
        self.t_embed = TimeEmbedder(d, n_freq=d if v2 else 256, max_period=1 if v2 else 10000)
        n_joint = depth - fused_depth
        self.joint_blocks = nn.ModuleList(
            JointBlock(d, num_heads, mlp_ratio, pre_only=(i == n_joint - 1)) for i in range(n_joint)
        )
        self.fused_blocks = nn.ModuleList(
            StreamBlock(d, num_heads, mlp_ratio, kernel_size=3) for _ in range(fused_depth)
        )
        # Stored in the checkpoint: latent statistics (a fresh module uses 0 / 1), the CLIP text feature of the
        # empty prompt, and the learned empty video features.
        self.latent_mean = nn.Parameter(torch.zeros(1, 1, latent_dim), requires_grad=False)
        self.latent_std = nn.Parameter(torch.ones(1, 1, latent_dim), requires_grad=False)
        self.empty_string_feat = nn.Parameter(torch.zeros(text_seq_len, text_dim), requires_grad=False)
        self.empty_clip_feat = nn.Parameter(torch.zeros(1, clip_dim))
        self.empty_sync_feat = nn.Parameter(torch.zeros(1, sync_dim))
        self._rope_cache: dict[tuple, Any] = {}  # rotary tables and upsampling indices per length
        self.register_load_state_dict_pre_hook(_drop_stale_keys)
        self._init_weights()

    @classmethod
    def from_variant(cls, name: str, **overrides: Any) -> MMAudio:
        """The official variant ``name`` (hyper-parameters of ``get_my_mmaudio``), randomly initialised."""
        if name not in VARIANTS:
            raise ValueError(f"unknown MMAudio variant {name!r}; known: {', '.join(VARIANTS)}")
        return cls(**{**VARIANTS[name], "variant": name, **overrides})

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        mods = [b.adaLN_modulation[-1] for j in self.joint_blocks for b in (j.latent_block, j.clip_block, j.text_block)]
        mods += [b.adaLN_modulation[-1] for b in self.fused_blocks] + [self.final_layer.adaLN_modulation[-1]]
        for lin in [*mods, self.final_layer.conv]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # -- helpers -------------------------------------------------------------------------------------------------
    def sequence_lengths(self, duration: float) -> dict[str, int]:
        """Latent / clip / sync sequence lengths for ``duration`` seconds at this model's audio rate."""
        return sequence_lengths(duration, self.arch_kwargs["sampling_rate"], self.arch_kwargs["spectrogram_frame_rate"])

    def _lengths_for_latent(self, n_latent: int) -> dict[str, int]:
        """Clip/sync lengths for a latent length (exact for whole-second durations)."""
        hop = self.arch_kwargs["spectrogram_frame_rate"] * 2
        dur = n_latent * hop / self.arch_kwargs["sampling_rate"]
        guess = sequence_lengths(math.floor(dur * 8) / 8, self.arch_kwargs["sampling_rate"], hop // 2)
        return guess if guess["latent"] == n_latent else self.sequence_lengths(dur)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """VAE latents -> the network's normalised space (``(x - mean) / std``, not in place)."""
        return (x - self.latent_mean) / self.latent_std

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The network's normalised space -> VAE latents."""
        return x * self.latent_std + self.latent_mean

    def rope(self, length: int, scaling: float, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (length, float(scaling), str(device))
        if key not in self._rope_cache:
            self._rope_cache[key] = rope_tables(length, self.hidden_dim // self.num_heads, scaling, device)
        return self._rope_cache[key]

    def _upsample_index(self, length: int, n: int, device) -> torch.Tensor:
        """Source index of each of ``n`` targets for ``nearest-exact`` upsampling of ``length`` tokens.

        Taken from ``F.interpolate`` itself (on positions) so that it matches the official upsampling bit for bit,
        and applied as a gather (which, unlike the interpolation kernel, has a ``vmap`` batching rule).
        """
        key = ("upsample", length, n, str(device))
        if key not in self._rope_cache:
            pos = torch.arange(length, dtype=torch.float32, device=device).view(1, 1, -1)
            self._rope_cache[key] = F.interpolate(pos, size=n, mode="nearest-exact").view(-1).long()
        return self._rope_cache[key]

    def null(self, name: str, batch: int, length: int | None = None) -> torch.Tensor:
        """The learned null of a condition: ``[batch, length, dim]``."""
        if name == "text":
            return self.empty_string_feat.unsqueeze(0).expand(batch, -1, -1)
        feat = {"clip": self.empty_clip_feat, "sync": self.empty_sync_feat}[name]
        return feat.unsqueeze(0).expand(batch, length, -1)

    def batch_conditions(self, conds: Sequence[Cond | None], batch: int) -> Cond | None:
        """Stack per-branch conditions (``None`` entries become the learned nulls) for one forward."""
        out: dict[str, Any] = {}
        for name in CONDITIONS:
            vals = [None if c is None else c.get(name) for c in conds]
            ref = next((v for v in vals if v is not None), None)
            if ref is None:
                out[name] = None
                continue
            if not isinstance(ref, torch.Tensor) or ref.ndim != 3:
                return NotImplemented
            rows = []
            for v in vals:
                if v is None:
                    v = self.null(name, batch, ref.shape[1]).to(device=ref.device, dtype=ref.dtype)
                if not isinstance(v, torch.Tensor) or v.shape != ref.shape:
                    return NotImplemented
                rows.append(v)
            out[name] = torch.cat(rows)
        return out

    # -- network -------------------------------------------------------------------------------------------------
    def prepare_conditions(self, cond: Cond | None, x: torch.Tensor) -> PreparedConditions:
        """The condition streams for latents shaped like ``x``, projected once (they do not depend on x or t).

        :meth:`forward` accepts the result in place of ``cond``; the sampling engine prepares each branch's
        conditions once per sample and reuses them at every step (as the official ``preprocess_conditions``).
        """
        if x.ndim != 3 or x.shape[-1] != self.latent_dim:
            raise ValueError(f"MMAudio expects latents [B, N, {self.latent_dim}], got {tuple(x.shape)}")
        b, n, _ = x.shape
        dtype = self.audio_input_proj[0].weight.dtype
        cond = cond if isinstance(cond, Mapping) else {}
        feats = {k: cond.get(k) for k in CONDITIONS}
        if feats["clip"] is None or feats["sync"] is None:
            lengths = self._lengths_for_latent(n)
        for k in CONDITIONS:
            v = feats[k]
            if v is None:
                v = self.null(k, b, None if k == "text" else lengths[k])
            if v.ndim != 3 or v.shape[0] != b:
                raise ValueError(f"condition {k!r} must be [B={b}, L, C], got {tuple(v.shape)}")
            feats[k] = v.to(dtype)
        clip, sync, text = feats["clip"], feats["sync"], feats["text"]
        if sync.shape[1] % SYNC_SEGMENT:
            raise ValueError(f"sync features length {sync.shape[1]} is not a multiple of {SYNC_SEGMENT}")
        sync = (sync.unflatten(1, (-1, SYNC_SEGMENT)) + self.sync_pos_emb).flatten(1, 2)
        clip = self.clip_input_proj(clip)
        sync = self.sync_input_proj(sync)
        text = self.text_input_proj(text)
        sync = sync.index_select(1, self._upsample_index(sync.shape[1], n, x.device))  # nearest-exact to N
        clip_c = self.clip_cond_proj(clip.mean(dim=1))
        text_c = self.text_cond_proj(text.mean(dim=1))
        return PreparedConditions(clip=clip, sync=sync, text=text, pooled=self.global_cond_mlp(clip_c + text_c))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Cond | PreparedConditions | None) -> torch.Tensor:
        if isinstance(cond, PreparedConditions):
            if x.ndim != 3 or x.shape[0] != cond.clip.shape[0] or x.shape[1] != cond.sync.shape[1]:
                raise ValueError(f"latents {tuple(x.shape)} do not fit the prepared conditions")
            prepared = cond
        else:
            prepared = self.prepare_conditions(cond, x)
        b, n, _ = x.shape
        dtype = self.audio_input_proj[0].weight.dtype
        clip, text = prepared.clip, prepared.text
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(b)
        global_c = (self.t_embed(t) + prepared.pooled).unsqueeze(1)  # B 1 D
        extended_c = global_c + prepared.sync  # B N D: per-token conditioning of the audio stream
        latent_rope = self.rope(n, 1.0, x.device)
        clip_rope = self.rope(clip.shape[1], n / clip.shape[1], x.device)

        h = self.audio_input_proj(x.to(dtype))
        for blk in self.joint_blocks:
            h, clip, text = blk(h, clip, text, global_c, extended_c, latent_rope, clip_rope)
        for blk in self.fused_blocks:
            h = blk(h, extended_c, latent_rope)
        # the official network conditions its final layer on global_c (not extended_c); kept for compatibility
        return self.final_layer(h, global_c).to(x.dtype)

    def perturbation_sites(self) -> dict[str, list[nn.Module]]:
        """Where :mod:`~v2a_sampler.models.perturb` may perturb this network: its blocks, joint blocks first then
        the fused (audio-only) ones, and their attention cores (a joint block's joint attention is one site)."""
        blocks = [*self.joint_blocks, *self.fused_blocks]
        cores = [j.latent_block.attend for j in self.joint_blocks] + [f.attend for f in self.fused_blocks]
        return {"blocks": blocks, "attention": cores}

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"{super().extra_repr()}, variant={self.arch_kwargs['variant']}, params={n / 1e6:.2f}M"


def _drop_stale_keys(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    for k in STALE_KEYS:
        state_dict.pop(prefix + k, None)


register_architecture("mmaudio", MMAudio)


# ---------------------------------------------------------------------------------------------------------------
# Key manifest (written from the official module definitions by tools/mmaudio_ref_network.py)
# ---------------------------------------------------------------------------------------------------------------


def state_dict_shapes(variant: str) -> dict[str, list[int]]:
    """``{key: shape}`` of the state dict of our ``variant`` (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        model = MMAudio.from_variant(variant)
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def load_manifest() -> dict[str, Any]:
    """The committed manifest of the official flow checkpoints: ``{"variants": {name: {"keys": {key: shape}}}}``."""
    return json.loads(MANIFEST_PATH.read_text())
