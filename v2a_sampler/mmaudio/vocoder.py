"""MMAudio's vocoders (BigVGAN) and the latents -> waveform front door :class:`MMAudioDecoder`.

Our own implementation of BigVGAN (Lee et al., "BigVGAN: A Universal Neural Vocoder with Large-Scale Training"),
written from the module definitions MMAudio ships (hkchengrex/MMAudio, ``mmaudio/ext/bigvgan/`` and
``mmaudio/ext/bigvgan_v2/``) so that parameter names and shapes match the two vocoders MMAudio uses:

* 16 kHz: ``best_netG.pt`` (80 log10-mel bands, 256x upsampling), :data:`BIGVGAN_16K`;
* 44.1 kHz: NVIDIA's BigVGAN v2 ``nvidia/bigvgan_v2_44khz_128band_512x`` file ``bigvgan_generator.pt`` (128 log-mel
  bands, 512x upsampling, no final bias, final clamp instead of tanh), :data:`BIGVGAN_V2_44K`.

Both files are ``{"generator": state_dict}``. Convolutions carry weight normalisation as torch parametrizations
(keys ``<conv>.parametrizations.weight.original0`` / ``original1``, the official module's names); the released files'
old-style ``<conv>.weight_g`` / ``<conv>.weight_v`` load into them through torch's compatibility hook, and a state
dict with weight norm already folded in (``<conv>.weight``) loads after :meth:`BigVGAN.fuse_weight_norm`, as the
official loaders do. The anti-aliased Snake activations run in plain torch (no CUDA kernel).

:class:`MMAudioDecoder` chains :class:`~v2a_sampler.mmaudio.vae.AudioVAE` decoding (with its mel
un-normalisation) and the vocoder exactly as the official ``AutoEncoderModule.decode`` + ``vocode``: the VAE's
output log-mel is the vocoder's input, nothing in between.
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
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from ..media.audio import MelAxes
from .checkpoints import CheckpointError, load_into, read_checkpoint
from .vae import VAE_CONFIGS, AudioVAE, load_vae

MANIFEST_PATH = Path(__file__).parent / "manifests" / "vocoder.json"
AA_RATIO = 2  # anti-aliased activations run at twice the signal rate (upsample, activation, downsample)
AA_KERNEL = 12  # taps of the Kaiser-windowed sinc filters of that resampling
AA_HALF_WIDTH = 0.6  # transition half-width of those filters, relative to the rate (divided by AA_RATIO)
SNAKE_EPS = 1e-9  # added to alpha (Snake) / beta (SnakeBeta) before dividing by it
CONV_EDGE = 7  # width of conv_pre and conv_post
INIT_STD = 0.01  # std of the initial convolution weights (HiFi-GAN's init_weights)


@dataclasses.dataclass(frozen=True)
class BigVGANConfig:
    """Generator hyper-parameters of a BigVGAN (field names as in the official config files)."""

    num_mels: int  # mel bands of the input
    upsample_rates: tuple[int, ...]  # stride of each transposed-conv stage (their product is the mel hop)
    upsample_kernel_sizes: tuple[int, ...]  # width of each transposed conv
    upsample_initial_channel: int  # channels after conv_pre, halved by every stage
    resblock_kernel_sizes: tuple[int, ...]  # one AMP block per width after each stage (outputs averaged)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]  # dilations of the conv pairs of each AMP block
    activation: str = "snakebeta"  # "snakebeta": x + sin^2(alpha x) / beta; "snake": x + sin^2(alpha x) / alpha
    snake_logscale: bool = True  # alpha and beta stored as logarithms
    use_bias_at_final: bool = True  # conv_post has a bias
    use_tanh_at_final: bool = True  # tanh on the output (else a clamp to [-1, 1])
    sampling_rate: int | None = None  # output sample rate (informative)

    def __post_init__(self) -> None:
        if self.activation not in ("snake", "snakebeta"):
            raise ValueError(f"activation must be 'snake' or 'snakebeta', got {self.activation!r}")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes differ in length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes, strict=True):
            if (k - u) % 2 or k < u:
                raise ValueError(f"upsampling kernel {k} with stride {u} would not upsample exactly {u}x")
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
            raise ValueError("upsample_initial_channel must stay an integer through the halvings of every stage")

    @property
    def hop_length(self) -> int:
        """Waveform samples per mel frame."""
        return math.prod(self.upsample_rates)

    @classmethod
    def from_official(cls, h: Mapping[str, Any]) -> BigVGANConfig:
        """From an official config mapping (``bigvgan_vocoder.yml`` / ``config.json``; other fields ignored)."""
        if str(h.get("resblock", "1")) != "1":
            raise ValueError("only AMP block type '1' (the released vocoders' resblock) is implemented")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in h.items() if k in names}
        for k in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes"):
            kw[k] = tuple(kw[k])
        kw["resblock_dilation_sizes"] = tuple(tuple(d) for d in kw["resblock_dilation_sizes"])
        return cls(**kw)


#: MMAudio's 16 kHz vocoder (official ``mmaudio/ext/bigvgan/bigvgan_vocoder.yml``; weights ``best_netG.pt``).
BIGVGAN_16K = BigVGANConfig(
    num_mels=80,  # MMAudio's 16 kHz log10-mel (n_fft 1024, hop 256, fmax 8 kHz)
    upsample_rates=(4, 4, 2, 2, 2, 2),  # 256 samples per mel frame
    upsample_kernel_sizes=(8, 8, 4, 4, 4, 4),  # twice each stride
    upsample_initial_channel=1536,  # 1536 -> 768 -> ... -> 24 channels
    resblock_kernel_sizes=(3, 7, 11),  # three AMP blocks per stage
    resblock_dilation_sizes=((1, 3, 5), (1, 3, 5), (1, 3, 5)),  # three dilated conv pairs per AMP block
    activation="snakebeta",  # separate frequency (alpha) and magnitude (beta) per channel
    snake_logscale=True,  # exp() of the stored alpha / beta
    use_bias_at_final=True,  # BigVGAN v1 default
    use_tanh_at_final=True,  # BigVGAN v1 default
    sampling_rate=16000,  # MMAudio 16 kHz models
)
#: NVIDIA BigVGAN v2 ``nvidia/bigvgan_v2_44khz_128band_512x`` (its ``config.json``; ``bigvgan_generator.pt``).
BIGVGAN_V2_44K = BigVGANConfig(
    num_mels=128,  # MMAudio's 44.1 kHz natural-log mel (n_fft 2048, hop 512, fmax 22.05 kHz)
    upsample_rates=(8, 4, 2, 2, 2, 2),  # 512 samples per mel frame
    upsample_kernel_sizes=(16, 8, 4, 4, 4, 4),  # twice each stride
    upsample_initial_channel=1536,  # 1536 -> 768 -> ... -> 24 channels
    resblock_kernel_sizes=(3, 7, 11),  # three AMP blocks per stage
    resblock_dilation_sizes=((1, 3, 5), (1, 3, 5), (1, 3, 5)),  # three dilated conv pairs per AMP block
    activation="snakebeta",  # separate frequency (alpha) and magnitude (beta) per channel
    snake_logscale=True,  # exp() of the stored alpha / beta
    use_bias_at_final=False,  # v2 512x: conv_post without bias
    use_tanh_at_final=False,  # v2 512x: clamp to [-1, 1] instead of tanh
    sampling_rate=44100,  # MMAudio 44.1 kHz models
)
#: The vocoder of each MMAudio mode.
VOCODER_CONFIGS: dict[str, BigVGANConfig] = {"16k": BIGVGAN_16K, "44k": BIGVGAN_V2_44K}
#: Top of the mel scale of each mode (Hz): the official ``mel_converter.py`` uses ``fmax=8000`` at 16 kHz and the
#: Nyquist frequency at 44.1 kHz (both with ``fmin=0`` and librosa's Slaney mel filters).
MEL_F_MAX: dict[str, float] = {"16k": 8000.0, "44k": 22050.0}
#: Official mel frames are padded by ``(n_fft - hop) / 2`` per side and not centred: frame ``k`` is centred on sample
#: ``(k + 1/2) * hop``.
MEL_FRAME_OFFSET = 0.5
#: Official file names of the vocoders (both ``{"generator": state_dict}``).
VOCODER_FILES = {"16k": "best_netG.pt", "44k": "bigvgan_generator.pt"}


# ---------------------------------------------------------------------------------------------------------------
# Anti-aliased periodic activations
# ---------------------------------------------------------------------------------------------------------------


def kaiser_sinc_filter(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """Low-pass FIR ``[1, 1, kernel_size]``: sinc at ``cutoff`` (cycles/sample) under a Kaiser window, sum 1."""
    half = kernel_size // 2
    atten = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95  # Kaiser's attenuation estimate (dB)
    if atten > 50.0:
        beta = 0.1102 * (atten - 8.7)
    elif atten >= 21.0:
        beta = 0.5842 * (atten - 21) ** 0.4 + 0.07886 * (atten - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, beta=beta, periodic=False)
    if kernel_size % 2 == 0:
        t = torch.arange(-half, half) + 0.5
    else:
        t = torch.arange(kernel_size) - half
    f = 2 * cutoff * window * torch.sinc(2 * cutoff * t)
    return (f / f.sum()).view(1, 1, kernel_size)


class LowPassFilter1d(nn.Module):
    """Depthwise low-pass filtering with replicate padding and a stride."""

    def __init__(self, cutoff: float, half_width: float, stride: int, kernel_size: int = AA_KERNEL) -> None:
        super().__init__()
        self.stride = stride
        self.pad = (kernel_size // 2 - int(kernel_size % 2 == 0), kernel_size // 2)
        self.register_buffer("filter", kaiser_sinc_filter(cutoff, half_width, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.pad, mode="replicate")
        return F.conv1d(x, self.filter.expand(x.shape[1], -1, -1), stride=self.stride, groups=x.shape[1])


class UpSample1d(nn.Module):
    """``ratio``-times upsampling by a depthwise transposed low-pass filter (replicate-padded edges)."""

    def __init__(self, ratio: int = AA_RATIO, kernel_size: int = AA_KERNEL) -> None:
        super().__init__()
        self.ratio = ratio
        self.pad = kernel_size // ratio - 1
        self.crop = (
            self.pad * ratio + (kernel_size - ratio) // 2,
            self.pad * ratio + (kernel_size - ratio + 1) // 2,
        )
        self.register_buffer("filter", kaiser_sinc_filter(0.5 / ratio, AA_HALF_WIDTH / ratio, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        x = self.ratio * F.conv_transpose1d(x, self.filter.expand(c, -1, -1), stride=self.ratio, groups=c)
        return x[..., self.crop[0] : x.shape[-1] - self.crop[1]]


class DownSample1d(nn.Module):
    """``ratio``-times downsampling after a low-pass filter."""

    def __init__(self, ratio: int = AA_RATIO, kernel_size: int = AA_KERNEL) -> None:
        super().__init__()
        self.lowpass = LowPassFilter1d(0.5 / ratio, AA_HALF_WIDTH / ratio, ratio, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowpass(x)


class Snake(nn.Module):
    """``x + sin^2(alpha x) / alpha`` with a learned ``alpha`` per channel (``[B, C, T]``)."""

    def __init__(self, channels: int, logscale: bool = True) -> None:
        super().__init__()
        self.logscale = logscale
        self.alpha = nn.Parameter(torch.zeros(channels) if logscale else torch.ones(channels))

    def _param(self, p: torch.Tensor) -> torch.Tensor:
        p = p.unsqueeze(0).unsqueeze(-1)
        return torch.exp(p) if self.logscale else p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self._param(self.alpha)
        return x + (1.0 / (alpha + SNAKE_EPS)) * torch.sin(x * alpha).pow(2)


class SnakeBeta(Snake):
    """``x + sin^2(alpha x) / beta`` with learned ``alpha`` (frequency) and ``beta`` (magnitude) per channel."""

    def __init__(self, channels: int, logscale: bool = True) -> None:
        super().__init__(channels, logscale)
        self.beta = nn.Parameter(torch.zeros(channels) if logscale else torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, beta = self._param(self.alpha), self._param(self.beta)
        return x + (1.0 / (beta + SNAKE_EPS)) * torch.sin(x * alpha).pow(2)


class Activation1d(nn.Module):
    """Anti-aliased activation: upsample 2x, periodic activation, downsample 2x."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.act = act
        self.upsample = UpSample1d()
        self.downsample = DownSample1d()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.act(self.upsample(x)))


def _activation(cfg: BigVGANConfig, channels: int) -> Activation1d:
    act = SnakeBeta if cfg.activation == "snakebeta" else Snake
    return Activation1d(act(channels, cfg.snake_logscale))


# ---------------------------------------------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------------------------------------------


def _wn(conv: nn.Module) -> nn.Module:
    """Weight-normalised ``conv`` (torch parametrization over the output-channel dim, as the official code)."""
    nn.init.normal_(conv.weight, 0.0, INIT_STD)
    return weight_norm(conv)


def _conv(c_in: int, c_out: int, kernel: int, dilation: int = 1, bias: bool = True) -> nn.Module:
    return _wn(nn.Conv1d(c_in, c_out, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2, bias=bias))


class AMPBlock1(nn.Module):
    """Residual pairs ``x += conv2(act(conv1_d(act(x))))`` over the dilations ``d``, anti-aliased activations."""

    def __init__(self, cfg: BigVGANConfig, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(_conv(channels, channels, kernel_size, d) for d in dilations)
        self.convs2 = nn.ModuleList(_conv(channels, channels, kernel_size) for _ in dilations)
        self.activations = nn.ModuleList(_activation(cfg, channels) for _ in range(2 * len(dilations)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acts = self.activations
        for i, (c1, c2) in enumerate(zip(self.convs1, self.convs2, strict=True)):
            x = c2(acts[2 * i + 1](c1(acts[2 * i](x)))) + x
        return x


class BigVGAN(nn.Module):
    """BigVGAN generator: log-mel ``[B, num_mels, T]`` -> waveform ``[B, 1, T * hop_length]`` in ``[-1, 1]``.

    ``BigVGAN("16k")`` / ``BigVGAN("44k")`` build MMAudio's vocoders (random weights; load the official files with
    :func:`load_vocoder`); a :class:`BigVGANConfig` builds any other. Inputs of any floating dtype are cast to the
    module's dtype.
    """

    def __init__(self, config: BigVGANConfig | str) -> None:
        super().__init__()
        if isinstance(config, str):
            if config not in VOCODER_CONFIGS:
                raise ValueError(f"unknown MMAudio vocoder {config!r}; known: {', '.join(VOCODER_CONFIGS)}")
            config = VOCODER_CONFIGS[config]
        self.config = cfg = config
        ch = cfg.upsample_initial_channel
        self.conv_pre = _conv(cfg.num_mels, ch, CONV_EDGE)
        self.ups = nn.ModuleList()
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True)):
            up = nn.ConvTranspose1d(ch // 2**i, ch // 2 ** (i + 1), k, u, padding=(k - u) // 2)
            self.ups.append(nn.ModuleList([_wn(up)]))  # one transposed conv per stage, nested as in the checkpoints
        self.resblocks = nn.ModuleList(
            AMPBlock1(cfg, ch // 2 ** (i + 1), k, d)
            for i in range(len(self.ups))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True)
        )
        out_ch = ch // 2 ** len(self.ups)
        self.activation_post = _activation(cfg, out_ch)
        self.conv_post = _conv(out_ch, 1, CONV_EDGE, bias=cfg.use_bias_at_final)

    @property
    def hop_length(self) -> int:
        """Waveform samples per mel frame."""
        return self.config.hop_length

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_pre.bias.dtype

    @property
    def weight_norm_fused(self) -> bool:
        """Whether weight normalisation has been folded into plain ``weight`` parameters."""
        return not parametrize.is_parametrized(self.conv_pre)

    def fuse_weight_norm(self) -> BigVGAN:
        """Fold weight normalisation into plain weights (faster inference; state-dict keys become ``weight``)."""
        for m in self.modules():
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight")
        return self

    def match_weight_norm(self, state: Mapping[str, torch.Tensor]) -> None:
        """Fuse this module if ``state`` has weight norm folded into ``<conv>.weight`` (as the official loader does);
        ValueError if ``state`` is weight-normalised but this module is already fused."""
        folded = "conv_pre.weight" in state
        if folded and not self.weight_norm_fused:
            self.fuse_weight_norm()
        elif not folded and self.weight_norm_fused:
            raise ValueError("weight-normalised weights do not load into a BigVGAN whose weight norm is fused")

    def load_generator_state(self, state: Mapping[str, torch.Tensor], strict: bool = True) -> Any:
        """Load a generator state dict in any official spelling: ``parametrizations.weight.original0/1``,
        ``weight_g`` / ``weight_v``, or weight norm folded into ``weight`` (fuses this module first)."""
        self.match_weight_norm(state)
        return self.load_state_dict(state, strict=strict)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.ndim != 3 or mel.shape[1] != self.config.num_mels:
            raise ValueError(f"expected a mel [B, {self.config.num_mels}, T], got {tuple(mel.shape)}")
        x = self.conv_pre(mel.to(self.dtype))
        n = len(self.config.resblock_kernel_sizes)
        for i, (up,) in enumerate(self.ups):
            x = up(x)
            blocks = self.resblocks[i * n : (i + 1) * n]
            xs = blocks[0](x)
            for blk in blocks[1:]:
                xs = xs + blk(x)
            x = xs / n
        x = self.conv_post(self.activation_post(x))
        return torch.tanh(x) if self.config.use_tanh_at_final else x.clamp(-1.0, 1.0)


def generator_mels(state: Mapping[str, torch.Tensor]) -> int | None:
    """Mel bands a generator state dict expects (from ``conv_pre``'s weight, any spelling), or None."""
    for key in ("conv_pre.parametrizations.weight.original1", "conv_pre.weight_v", "conv_pre.weight"):
        w = state.get(key)
        if isinstance(w, torch.Tensor) and w.ndim == 3:
            return int(w.shape[1])
    return None


def load_vocoder(
    path: str | os.PathLike, model: BigVGAN | None = None, *, mode: str | None = None, fuse: bool = True
) -> BigVGAN:
    """An official vocoder file (``best_netG.pt`` / ``bigvgan_generator.pt``: ``{"generator": state_dict}``) loaded
    strictly, weight norm fused unless ``fuse=False``; eval mode.

    Without ``model`` the vocoder of ``mode`` is built (default: read from the file's mel bands, 80 -> 16k,
    128 -> 44k).
    """
    what = "MMAudio vocoder"
    ckpt = read_checkpoint(path, what)
    state = ckpt.get("generator") if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{what}: {path} has no 'generator' state dict (expected best_netG.pt / bigvgan_generator.pt)"
        )
    if model is None:
        mels = generator_mels(state)
        found = next((m for m, c in VOCODER_CONFIGS.items() if c.num_mels == mels), None)
        if found is None:
            raise CheckpointError(f"{what}: {path}: conv_pre does not take 80 or 128 mel bands (got {mels})")
        if mode is not None and mode != found:
            raise CheckpointError(f"{what}: {path} is the {found} vocoder, expected {mode}")
        model = BigVGAN(found)
    try:
        model.match_weight_norm(state)
    except ValueError as e:
        raise CheckpointError(f"{what}: {path}: {e}") from None
    load_into(model, state, path, what)
    if fuse:
        model.fuse_weight_norm()
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# Latents -> waveform
# ---------------------------------------------------------------------------------------------------------------


class MMAudioDecoder(nn.Module):
    """MMAudio latents ``[B, N, latent_dim]`` (channels last, as the flow network produces them after its
    ``unnormalize``) -> waveform ``[B, N * samples_per_latent]`` (float32, in ``[-1, 1]``).

    ``MMAudioDecoder("16k")`` / ``("44k")`` builds the official sizes with random weights; use :meth:`from_official`
    for the released files, or pass a ``vae`` and ``vocoder`` (any sizes with matching mel bands).
    """

    def __init__(
        self,
        mode: str = "44k",
        *,
        vae: AudioVAE | None = None,
        vocoder: BigVGAN | None = None,
        with_encoder: bool = False,
    ) -> None:
        super().__init__()
        if mode not in VAE_CONFIGS:
            raise ValueError(f"unknown MMAudio mode {mode!r}; known: {', '.join(VAE_CONFIGS)}")
        self.mode = mode
        self.vae = vae if vae is not None else AudioVAE(mode, with_encoder=with_encoder)
        self.vocoder = vocoder if vocoder is not None else BigVGAN(mode)
        if self.vae.config.data_dim != self.vocoder.config.num_mels:
            raise ValueError(
                f"VAE mel bands ({self.vae.config.data_dim}) != vocoder mel bands ({self.vocoder.config.num_mels})"
            )

    @classmethod
    def from_official(
        cls,
        vae_path: str | os.PathLike,
        vocoder_path: str | os.PathLike,
        mode: str | None = None,
        *,
        with_encoder: bool = False,
    ) -> MMAudioDecoder:
        """The released VAE (``v1-16.pth`` / ``v1-44.pth``) and vocoder (``best_netG.pt`` /
        ``bigvgan_generator.pt``), loaded strictly with ``weights_only=True``; ``mode`` defaults to the VAE file's."""
        vae = load_vae(vae_path, with_encoder=with_encoder, mode=mode)
        found = "16k" if vae.config.data_dim == VAE_CONFIGS["16k"].data_dim else "44k"
        vocoder = load_vocoder(vocoder_path, mode=found)
        return cls(found, vae=vae, vocoder=vocoder).eval()

    # -- sizes ---------------------------------------------------------------------------------------------------
    @property
    def sampling_rate(self) -> int:
        """Output sample rate (Hz)."""
        rate = self.vocoder.config.sampling_rate
        return int(rate if rate is not None else VOCODER_CONFIGS[self.mode].sampling_rate)

    @property
    def hop_length(self) -> int:
        """Waveform samples per mel frame (256 at 16 kHz, 512 at 44.1 kHz)."""
        return self.vocoder.hop_length

    @property
    def mel_axes(self) -> MelAxes:
        """Hz of each band and seconds of each frame of :meth:`mel` (the official mel converter of this mode)."""
        return MelAxes(self.sampling_rate, self.hop_length, self.vocoder.config.num_mels, 0.0, MEL_F_MAX[self.mode],
                       frame_offset=MEL_FRAME_OFFSET)  # fmt: skip

    @property
    def latent_downsample(self) -> int:
        """Mel frames per latent frame (2)."""
        return self.vae.downsample

    @property
    def samples_per_latent(self) -> int:
        """Waveform samples per latent frame (512 at 16 kHz, 1024 at 44.1 kHz)."""
        return self.hop_length * self.latent_downsample

    @property
    def latent_dim(self) -> int:
        return self.vae.config.embed_dim

    def num_samples(self, latent_frames: int) -> int:
        """Length of the waveform decoded from ``latent_frames`` latents."""
        return latent_frames * self.samples_per_latent

    def latent_frames(self, duration: float) -> int:
        """Latent frames that cover ``duration`` seconds (the official ``latent_seq_len``: rounded up)."""
        return int(math.ceil(duration * self.sampling_rate / self.samples_per_latent))

    # -- decoding ------------------------------------------------------------------------------------------------
    def mel(self, latents: torch.Tensor) -> torch.Tensor:
        """Log-mel ``[B, num_mels, N * latent_downsample]`` of latents ``[B, N, latent_dim]``."""
        if latents.ndim != 3 or latents.shape[-1] != self.latent_dim:
            raise ValueError(f"expected latents [B, N, {self.latent_dim}] (channels last), got {tuple(latents.shape)}")
        return self.vae.decode(latents.transpose(1, 2))

    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """Waveform ``[B, T * hop_length]`` (float32) of a log-mel ``[B, num_mels, T]``."""
        return self.vocoder(mel).squeeze(1).float()

    def decode(self, latents: torch.Tensor, duration: float | None = None) -> torch.Tensor:
        """Waveform ``[B, N * samples_per_latent]`` of latents ``[B, N, latent_dim]``; with ``duration`` (seconds)
        cut to ``round(duration * sampling_rate)`` samples."""
        wav = self.vocode(self.mel(latents))
        if duration is not None:
            n = round(duration * self.sampling_rate)
            if n > wav.shape[-1]:
                raise ValueError(
                    f"{latents.shape[1]} latent frames give {wav.shape[-1]} samples, fewer than {duration} s "
                    f"({n} samples at {self.sampling_rate} Hz)"
                )
            wav = wav[..., :n]
        return wav

    def forward(self, latents: torch.Tensor, duration: float | None = None) -> torch.Tensor:
        return self.decode(latents, duration)


# ---------------------------------------------------------------------------------------------------------------
# Key manifest (written from the official modules by tools/mmaudio_ref_vocoder.py)
# ---------------------------------------------------------------------------------------------------------------


def vocoder_state_dict_shapes(mode: str) -> dict[str, list[int]]:
    """``{key: shape}`` of our vocoder for ``mode`` with weight norm (built on the meta device)."""
    with torch.device("meta"):
        model = BigVGAN(mode)
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def load_vocoder_manifest() -> dict[str, Any]:
    """The committed manifest: ``{"variants": {"bigvgan_16k" | "bigvgan_v2_44k": {"keys", "config", ...}}}``."""
    return json.loads(MANIFEST_PATH.read_text())
