"""MMAudio's 1-D mel VAE, key-compatible with the official ``v1-16.pth`` and ``v1-44.pth``.

Our own implementation of the magnitude-preserving (EDM2-style) convolutional VAE that MMAudio uses to map log-mel
spectrograms to the latents of its flow network, written from the module definitions of the official repository
(hkchengrex/MMAudio, ``mmaudio/ext/autoencoder/``) so that parameter names and shapes match. An official VAE file is
a flat state dict of the whole VAE (``data_mean``, ``data_std``, ``encoder.*``, ``decoder.*``); it loads with
``load_state_dict(state, strict=True)`` unchanged. A decoder-only :class:`AudioVAE` (``with_encoder=False``, for
inference) ignores the ``encoder.*`` entries on load, as the official loader does when it drops the encoder.

Weights are stored un-normalised (as in the checkpoints); every :class:`MPConv1d` normalises its weight in float32
at each forward, exactly as the official ``MPConv1D.remove_weight_norm()`` does once in place.

Layout: channels first, ``mel [B, data_dim, T]`` and ``latents [B, embed_dim, T / 2]``. The mel is MMAudio's log-mel
(``log10`` magnitudes at 16 kHz, natural ``log`` at 44.1 kHz), normalised inside the VAE with per-band statistics
(:meth:`AudioVAE.normalize` / :meth:`AudioVAE.unnormalize`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import CheckpointError, load_into, read_state_dict

MANIFEST_PATH = Path(__file__).parent / "manifests" / "vae.json"
NORM_EPS = 1e-4  # epsilon of the magnitude-preserving normalisation (EDM2 ``normalize``)
SILU_GAIN = 0.596  # std of silu(x) for x ~ N(0, 1): mp_silu divides by it to preserve magnitudes
RESIDUAL_T = 0.3  # weight of the residual branch in the magnitude-preserving sum of res and attention blocks
LOGVAR_RANGE = (-30.0, 20.0)  # clamp of the posterior log-variance (official DiagonalGaussianDistribution)

# Per-band statistics of the official training mels (``DATA_MEAN_80D`` ... in the official vae.py): the 16 kHz VAE
# sees 80 log10-mel bands, the 44.1 kHz VAE 128 natural-log mel bands. Checkpoints store them as well.
_MEAN_80 = (
    "-1.6058 -1.3676 -1.2520 -1.2453 -1.2078 -1.2224 -1.2419 -1.2439 -1.2922 -1.2927 -1.3170 -1.3543 -1.3401 -1.3836 "
    "-1.3907 -1.3912 -1.4313 -1.4152 -1.4527 -1.4728 -1.4568 -1.5101 -1.5051 -1.5172 -1.5623 -1.5373 -1.5746 -1.5687 "
    "-1.6032 -1.6131 -1.6081 -1.6331 -1.6489 -1.6489 -1.6700 -1.6738 -1.6953 -1.6969 -1.7048 -1.7280 -1.7361 -1.7495 "
    "-1.7658 -1.7814 -1.7889 -1.8064 -1.8221 -1.8377 -1.8417 -1.8643 -1.8857 -1.8929 -1.9173 -1.9379 -1.9531 -1.9673 "
    "-1.9824 -2.0042 -2.0215 -2.0436 -2.0766 -2.1064 -2.1418 -2.1855 -2.2319 -2.2767 -2.3161 -2.3572 -2.3954 -2.4282 "
    "-2.4659 -2.5072 -2.5552 -2.6074 -2.6584 -2.7107 -2.7634 -2.8266 -2.8981 -2.9673"
)
_STD_80 = (
    "1.0291 1.0411 1.0043 0.9820 0.9677 0.9543 0.9450 0.9392 0.9343 0.9297 0.9276 0.9263 0.9242 0.9254 0.9232 0.9281 "
    "0.9263 0.9315 0.9274 0.9247 0.9277 0.9199 0.9188 0.9194 0.9160 0.9161 0.9146 0.9161 0.9100 0.9095 0.9145 0.9076 "
    "0.9066 0.9095 0.9032 0.9043 0.9038 0.9011 0.9019 0.9010 0.8984 0.8983 0.8986 0.8961 0.8962 0.8978 0.8962 0.8973 "
    "0.8993 0.8976 0.8995 0.9016 0.8982 0.8972 0.8974 0.8949 0.8940 0.8947 0.8936 0.8939 0.8951 0.8956 0.9017 0.9167 "
    "0.9436 0.9690 1.0003 1.0225 1.0381 1.0491 1.0545 1.0604 1.0761 1.0929 1.1089 1.1196 1.1176 1.1156 1.1117 1.1070"
)
_MEAN_128 = (
    "-3.3462 -2.6723 -2.4893 -2.3143 -2.2664 -2.3317 -2.1802 -2.4006 -2.2357 -2.4597 -2.3717 -2.4690 -2.5142 -2.4919 "
    "-2.6610 -2.5047 -2.7483 -2.5926 -2.7462 -2.7033 -2.7386 -2.8112 -2.7502 -2.9594 -2.7473 -3.0035 -2.8891 -2.9922 "
    "-2.9856 -3.0157 -3.1191 -2.9893 -3.1718 -3.0745 -3.1879 -3.2310 -3.1424 -3.2296 -3.2791 -3.2782 -3.2756 -3.3134 "
    "-3.3509 -3.3750 -3.3951 -3.3698 -3.4505 -3.4509 -3.5089 -3.4647 -3.5536 -3.5788 -3.5867 -3.6036 -3.6400 -3.6747 "
    "-3.7072 -3.7279 -3.7283 -3.7795 -3.8259 -3.8447 -3.8663 -3.9182 -3.9605 -3.9861 -4.0105 -4.0373 -4.0762 -4.1121 "
    "-4.1488 -4.1874 -4.2461 -4.3170 -4.3639 -4.4452 -4.5282 -4.6297 -4.7019 -4.7960 -4.8700 -4.9507 -5.0303 -5.0866 "
    "-5.1634 -5.2342 -5.3242 -5.4053 -5.4927 -5.5712 -5.6464 -5.7052 -5.7619 -5.8410 -5.9188 -6.0103 -6.0955 -6.1673 "
    "-6.2362 -6.3120 -6.3926 -6.4797 -6.5565 -6.6511 -6.8130 -6.9961 -7.1275 -7.2457 -7.3576 -7.4663 -7.6136 -7.7469 "
    "-7.8815 -8.0132 -8.1515 -8.3071 -8.4722 -8.7418 -9.3975 -9.6628 -9.7671 -9.8863 -9.9992 -10.0860 -10.1709 "
    "-10.5418 -11.2795 -11.3861"
)
_STD_128 = (
    "2.3804 2.4368 2.3772 2.3145 2.2803 2.2510 2.2316 2.2083 2.1996 2.1835 2.1769 2.1659 2.1631 2.1618 2.1540 2.1606 "
    "2.1571 2.1567 2.1612 2.1579 2.1679 2.1683 2.1634 2.1557 2.1668 2.1518 2.1415 2.1449 2.1406 2.1350 2.1313 2.1415 "
    "2.1281 2.1352 2.1219 2.1182 2.1327 2.1195 2.1137 2.1080 2.1179 2.1036 2.1087 2.1036 2.1015 2.1068 2.0975 2.0991 "
    "2.0902 2.1015 2.0857 2.0920 2.0893 2.0897 2.0910 2.0881 2.0925 2.0873 2.0960 2.0900 2.0957 2.0958 2.0978 2.0936 "
    "2.0886 2.0905 2.0845 2.0855 2.0796 2.0840 2.0813 2.0817 2.0838 2.0840 2.0917 2.1061 2.1431 2.1976 2.2482 2.3055 "
    "2.3700 2.4088 2.4372 2.4609 2.4731 2.4847 2.5072 2.5451 2.5772 2.6147 2.6529 2.6596 2.6645 2.6726 2.6803 2.6812 "
    "2.6899 2.6916 2.6931 2.6998 2.7062 2.7262 2.7222 2.7158 2.7041 2.7485 2.7491 2.7451 2.7485 2.7233 2.7297 2.7233 "
    "2.7145 2.6958 2.6788 2.6439 2.6007 2.4786 2.2469 2.1877 2.1392 2.0717 2.0107 1.9676 1.9140 1.7102 0.9101 0.7164"
)
#: ``{data_dim: (mean, std)}`` per-band mel statistics as text (parsed by :func:`mel_statistics`).
MEL_STATISTICS = {80: (_MEAN_80, _STD_80), 128: (_MEAN_128, _STD_128)}


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Hyper-parameters of :class:`AudioVAE` (defaults: the official ``Encoder1D`` / ``Decoder1D`` settings)."""

    data_dim: int  # mel bands (80 at 16 kHz, 128 at 44.1 kHz)
    embed_dim: int  # latent channels (the flow network's latent_dim)
    hidden_dim: int  # channels of the first level; level i has hidden_dim * ch_mult[i]
    ch_mult: tuple[int, ...] = (1, 2, 4)  # channel multiplier per level
    num_res_blocks: int = 2  # res blocks per encoder level (the decoder has one more per level)
    attn_layers: tuple[int, ...] = (3,)  # levels with self-attention after each res block (3: none of the three)
    down_layers: tuple[int, ...] = (0,)  # encoder levels followed by a 2x downsampling (decoder: 2x upsampling)
    kernel_size: int = 3  # width of the convolutions
    clip_act: float = 256.0  # activations are clamped to [-clip_act, clip_act] after each block

    @property
    def downsample(self) -> int:
        """Mel frames per latent frame."""
        return 2 ** len(self.down_layers)


#: The official VAEs (``get_my_vae``): ``v1-16.pth`` (16 kHz, 80 bands) and ``v1-44.pth`` (44.1 kHz, 128 bands).
VAE_CONFIGS: dict[str, VAEConfig] = {
    "16k": VAEConfig(data_dim=80, embed_dim=20, hidden_dim=384),
    "44k": VAEConfig(data_dim=128, embed_dim=40, hidden_dim=512),
}


def mel_statistics(data_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` of shape ``[data_dim]`` (official tables for 80 and 128 bands; 0 and 1 otherwise)."""
    if data_dim not in MEL_STATISTICS:
        return torch.zeros(data_dim), torch.ones(data_dim)
    mean, std = MEL_STATISTICS[data_dim]
    return (torch.tensor([float(v) for v in mean.split()]), torch.tensor([float(v) for v in std.split()]))


# ---------------------------------------------------------------------------------------------------------------
# Magnitude-preserving primitives (EDM2, Karras et al. 2024)
# ---------------------------------------------------------------------------------------------------------------


def mp_normalize(x: torch.Tensor, dim: int | Sequence[int] | None = None, eps: float = NORM_EPS) -> torch.Tensor:
    """``x`` scaled to unit RMS over ``dim`` (default: all but the first); the norm is taken in float32."""
    if dim is None:
        dim = list(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU rescaled to unit output magnitude for unit-variance inputs."""
    return F.silu(x) / SILU_GAIN


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """``lerp(a, b, t)`` rescaled so that the sum of two independent unit-magnitude inputs has unit magnitude."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


class MPConv1d(nn.Module):
    """Bias-free 1-D convolution ("same" padding) whose weight is normalised per output channel at forward time.

    The effective weight is ``w / (eps + |w| / sqrt(fan_in)) / sqrt(fan_in)`` computed in float32 and cast back to
    the parameter dtype, times an optional ``gain``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size))

    def normalized_weight(self) -> torch.Tensor:
        """The effective (unit-fan-in-norm) weight, in the parameter dtype."""
        w = mp_normalize(self.weight.to(torch.float32))
        w = w / math.sqrt(w[0].numel())
        return w.to(self.weight.dtype)

    def forward(self, x: torch.Tensor, gain: torch.Tensor | float | None = None) -> torch.Tensor:
        w = self.normalized_weight()
        if gain is not None:
            w = w * gain
        return F.conv1d(x, w, padding=w.shape[-1] // 2)


# ---------------------------------------------------------------------------------------------------------------
# Blocks (parameter names follow the official checkpoints)
# ---------------------------------------------------------------------------------------------------------------


class ResBlock1d(nn.Module):
    """Pixel norm, two (mp_silu, MPConv) layers, 1x1 shortcut when the width changes, magnitude-preserving sum."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv1 = MPConv1d(in_dim, out_dim, kernel_size)
        self.conv2 = MPConv1d(out_dim, out_dim, kernel_size)
        if in_dim != out_dim:
            self.nin_shortcut = MPConv1d(in_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = mp_normalize(x, dim=1)
        h = self.conv2(mp_silu(self.conv1(mp_silu(x))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return mp_sum(x, h, RESIDUAL_T)


class AttnBlock1d(nn.Module):
    """Single-head self-attention over time with unit-normalised q, k, v and a magnitude-preserving residual.

    The fused projection is interleaved: channel ``3 c + j`` is channel ``c`` of q (j=0), k (j=1) or v (j=2).
    """

    heads = 1  # the official block is always built with one head

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.qkv = MPConv1d(channels, 3 * channels, 1)
        self.proj_out = MPConv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, n = x.shape
        y = self.qkv(x).reshape(b, self.heads, -1, 3, n)
        q, k, v = (t.transpose(-1, -2) for t in mp_normalize(y, dim=2).unbind(3))  # [B, heads, N, C]
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(-1, -2).reshape(b, -1, n)
        return mp_sum(x, self.proj_out(h), RESIDUAL_T)


class Downsample1d(nn.Module):
    """1x1 conv, 2x average pooling, 1x1 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = MPConv1d(channels, channels, 1)
        self.conv2 = MPConv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.avg_pool1d(self.conv1(x), kernel_size=2, stride=2))


class Upsample1d(nn.Module):
    """2x nearest-neighbour repetition then a width-3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = MPConv1d(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.repeat_interleave(2, dim=-1))  # == F.interpolate(scale_factor=2, mode="nearest-exact")


class _Level(nn.Module):
    """One resolution level: ``block`` (res blocks), ``attn`` (one per block, or empty), optional resampling."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def run(self, h: torch.Tensor, clip: float) -> torch.Tensor:
        for i, blk in enumerate(self.block):
            h = blk(h)
            if len(self.attn):
                h = self.attn[i](h)
            h = h.clamp(-clip, clip)
        return h


class _Middle(nn.Module):
    """Res block, attention, res block at the lowest resolution."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.block_1 = ResBlock1d(channels, channels, kernel_size)
        self.attn_1 = AttnBlock1d(channels)
        self.block_2 = ResBlock1d(channels, channels, kernel_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


def _check_levels(cfg: VAEConfig) -> None:
    n = len(cfg.ch_mult)
    if any(not 0 <= i < n - 1 for i in cfg.down_layers):
        # the official decoder upsamples after level i + 1: a downsampling after the last level is never undone
        raise ValueError(f"down_layers {cfg.down_layers} must lie in [0, {n - 2}] for {n} levels")


class Encoder1d(nn.Module):
    """Normalised mel ``[B, data_dim, T]`` -> posterior moments ``[B, 2 * embed_dim, T / downsample]``."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        _check_levels(cfg)
        self.cfg = cfg
        k, dim = cfg.kernel_size, cfg.hidden_dim
        self.conv_in = MPConv1d(cfg.data_dim, dim, k)
        self.down = nn.ModuleList()
        ch = dim
        for i, mult in enumerate(cfg.ch_mult):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock1d(ch, dim * mult, k))
                ch = dim * mult
                if i in cfg.attn_layers:
                    attns.append(AttnBlock1d(ch))
            level = _Level(blocks, attns)
            if i in cfg.down_layers:
                level.downsample = Downsample1d(ch)
            self.down.append(level)
        self.mid = _Middle(ch, k)
        self.conv_out = MPConv1d(ch, 2 * cfg.embed_dim, k)
        self.learnable_gain = nn.Parameter(torch.zeros([]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clip = self.cfg.clip_act
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            h = level.run(h, clip)
            if i in self.cfg.down_layers:
                h = level.downsample(h)
        h = self.mid(h).clamp(-clip, clip)
        return self.conv_out(mp_silu(h), gain=self.learnable_gain + 1)


class Decoder1d(nn.Module):
    """Latents ``[B, embed_dim, N]`` -> normalised mel ``[B, data_dim, N * downsample]``."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        _check_levels(cfg)
        self.cfg = cfg
        self.up_layers = tuple(i + 1 for i in cfg.down_layers)
        k, dim = cfg.kernel_size, cfg.hidden_dim
        ch = dim * cfg.ch_mult[-1]
        self.conv_in = MPConv1d(cfg.embed_dim, ch, k)
        self.mid = _Middle(ch, 3)  # the official decoder's middle blocks use the default width 3
        levels: list[nn.Module] = []
        for i in reversed(range(len(cfg.ch_mult))):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock1d(ch, dim * cfg.ch_mult[i]))  # default width 3, as in the official decoder
                ch = dim * cfg.ch_mult[i]
                if i in cfg.attn_layers:
                    attns.append(AttnBlock1d(ch))
            level = _Level(blocks, attns)
            if i in self.up_layers:
                level.upsample = Upsample1d(ch)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)  # up[i] is level i (run from the last level down to level 0)
        self.conv_out = MPConv1d(ch, cfg.data_dim, k)
        self.learnable_gain = nn.Parameter(torch.zeros([]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        clip = self.cfg.clip_act
        h = self.mid(self.conv_in(z)).clamp(-clip, clip)
        for i in reversed(range(len(self.up))):
            h = self.up[i].run(h, clip)
            if i in self.up_layers:
                h = self.up[i].upsample(h)
        return self.conv_out(mp_silu(h), gain=self.learnable_gain + 1)


# ---------------------------------------------------------------------------------------------------------------
# The VAE
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LatentDistribution:
    """Diagonal Gaussian posterior ``N(mean, exp(logvar))`` over latents ``[B, embed_dim, N]``."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> LatentDistribution:
        """Split encoder moments ``[B, 2 * C, N]`` into mean and (clamped) log-variance."""
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar.clamp(*LOGVAR_RANGE))

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """``mean + std * eps`` with ``eps`` drawn from ``generator`` (same draw as the official ``sample``)."""
        eps = torch.empty_like(self.mean).normal_(generator=generator)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """Element-wise KL term against ``N(0, 1)`` as the official code computes it (no reduction)."""
        return 0.5 * self.mean.pow(2) + torch.exp(self.logvar) - 1.0 - self.logvar


class AudioVAE(nn.Module):
    """MMAudio mel VAE: ``encode(mel) -> LatentDistribution``, ``decode(latents) -> mel`` (channels first).

    ``AudioVAE("16k")`` / ``AudioVAE("44k")`` build the official sizes (random weights; load ``v1-16.pth`` /
    ``v1-44.pth`` with :func:`load_vae`); a :class:`VAEConfig` builds any other size. ``with_encoder=False`` builds
    the decoder only (inference); such a module still loads a full official state dict (``encoder.*`` is ignored).
    Inputs of any floating dtype are cast to the module's dtype.
    """

    def __init__(self, config: VAEConfig | str, with_encoder: bool = True) -> None:
        super().__init__()
        if isinstance(config, str):
            if config not in VAE_CONFIGS:
                raise ValueError(f"unknown MMAudio VAE {config!r}; known: {', '.join(VAE_CONFIGS)}")
            config = VAE_CONFIGS[config]
        self.config = config
        mean, std = mel_statistics(config.data_dim)
        self.register_buffer("data_mean", mean.view(1, -1, 1))
        self.register_buffer("data_std", std.view(1, -1, 1))
        if with_encoder:
            self.encoder = Encoder1d(config)
        self.decoder = Decoder1d(config)
        self.register_load_state_dict_pre_hook(_drop_encoder_keys)

    @property
    def has_encoder(self) -> bool:
        return hasattr(self, "encoder")

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.learnable_gain.dtype

    @property
    def downsample(self) -> int:
        """Mel frames per latent frame (2 for the official VAEs)."""
        return self.config.downsample

    def normalize(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel -> the VAE's per-band standardised input."""
        return (mel - self.data_mean) / self.data_std

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's standardised output -> log-mel."""
        return x * self.data_std + self.data_mean

    def encode(self, mel: torch.Tensor, normalize: bool = True) -> LatentDistribution:
        """Posterior over latents ``[B, embed_dim, T / downsample]`` of a log-mel ``[B, data_dim, T]``."""
        if not self.has_encoder:
            raise RuntimeError("this AudioVAE was built without its encoder (with_encoder=False)")
        mel = mel.to(self.dtype)
        if normalize:
            mel = self.normalize(mel)
        return LatentDistribution.from_moments(self.encoder(mel))

    def decode(self, latents: torch.Tensor, unnormalize: bool = True) -> torch.Tensor:
        """Log-mel ``[B, data_dim, N * downsample]`` of latents ``[B, embed_dim, N]``."""
        if latents.ndim != 3 or latents.shape[1] != self.config.embed_dim:
            raise ValueError(f"expected latents [B, {self.config.embed_dim}, N], got {tuple(latents.shape)}")
        mel = self.decoder(latents.to(self.dtype))
        return self.unnormalize(mel) if unnormalize else mel

    def forward(
        self, mel: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, LatentDistribution]:
        """Reconstruction of ``mel`` through a posterior sample (or its mean) and the posterior."""
        posterior = self.encode(mel)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior


def _drop_encoder_keys(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    if not module.has_encoder:
        for k in [k for k in state_dict if k.startswith(prefix + "encoder.")]:
            del state_dict[k]


# ---------------------------------------------------------------------------------------------------------------
# Official files, key manifest
# ---------------------------------------------------------------------------------------------------------------


def vae_mode_of(state: Mapping[str, torch.Tensor]) -> str:
    """``"16k"`` or ``"44k"`` from the mel statistics stored in an official VAE state dict."""
    mean = state.get("data_mean")
    bands = {c.data_dim: m for m, c in VAE_CONFIGS.items()}
    if not isinstance(mean, torch.Tensor) or mean.ndim != 3 or mean.shape[1] not in bands:
        raise ValueError("not an official MMAudio VAE state dict (no data_mean of 80 or 128 mel bands)")
    return bands[mean.shape[1]]


def load_vae(
    path: str | os.PathLike, model: AudioVAE | None = None, *, with_encoder: bool = False, mode: str | None = None
) -> AudioVAE:
    """An official VAE file (``v1-16.pth`` / ``v1-44.pth``: a flat state dict) loaded strictly; eval mode.

    Without ``model`` the official size is built for ``mode`` (default: read from the file's mel statistics).
    """
    what = "MMAudio VAE"
    state = read_state_dict(path, what, "v1-16.pth / v1-44.pth")
    if model is None:
        try:
            found = vae_mode_of(state)
        except ValueError as e:
            raise CheckpointError(f"{what}: {path}: {e}") from None
        if mode is not None and mode != found:
            raise CheckpointError(f"{what}: {path} is the {found} VAE, expected {mode}")
        model = AudioVAE(found, with_encoder=with_encoder)
    load_into(model, state, path, what)
    return model.eval()


def vae_state_dict_shapes(mode: str, with_encoder: bool = True) -> dict[str, list[int]]:
    """``{key: shape}`` of our official-size VAE (built on the meta device)."""
    with torch.device("meta"):
        model = AudioVAE(mode, with_encoder=with_encoder)
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def load_vae_manifest() -> dict[str, Any]:
    """The committed manifest of the official VAEs: ``{"variants": {"vae_16k" | "vae_44k": {"keys": ...}}}``."""
    return json.loads(MANIFEST_PATH.read_text())
