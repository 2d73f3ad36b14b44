"""Spectrogram features and their inversion, on ``torch.stft`` alone (no torchaudio).

* :func:`mel_filterbank`: triangular mel filters, Slaney (librosa's default) or HTK mel scale, optional Slaney
  area normalisation; same construction as ``librosa.filters.mel``.
* :func:`stft_magnitude` and :func:`log_mel`: ``log(max(mel @ |STFT|^power, floor))``, the feature of
  HiFi-GAN/BigVGAN-style vocoders (power 1, floor 1e-5).
* :func:`griffin_lim`: phase reconstruction from a magnitude (or, with ``mel_basis``, a mel) spectrogram by the
  fast Griffin-Lim algorithm (Perraudin et al., 2013); :func:`mel_to_magnitude` is its non-negative least-squares
  mel inversion and :func:`log_mel_to_audio` chains them.
* :func:`spectral_convergence`: ``|| |S_ref| - |S_est| ||_F / || |S_ref| ||_F``, the usual reconstruction score.
* :class:`MelAxes`: where a mel spectrogram's rows and columns lie in Hz and seconds (for plots with real axes).

Spectrograms are ``[..., freq, frames]``; audio is ``[..., samples]``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

__all__ = [
    "MelAxes",
    "griffin_lim",
    "hz_to_mel",
    "log_mel",
    "log_mel_to_audio",
    "mel_filterbank",
    "mel_to_hz",
    "mel_to_magnitude",
    "spectral_convergence",
    "stft_magnitude",
]

#: Slaney mel scale: linear below ``SLANEY_BREAK_HZ`` with ``SLANEY_HZ_PER_MEL`` Hz per mel, logarithmic above
#: with ``SLANEY_LOG_STEP`` per mel (a factor 6.4 over 27 mels), as in the Auditory Toolbox and librosa.
SLANEY_HZ_PER_MEL = 200.0 / 3.0
SLANEY_BREAK_HZ = 1000.0
SLANEY_LOG_STEP = math.log(6.4) / 27.0
#: HTK mel scale: ``mel = HTK_SCALE * log10(1 + f / HTK_BREAK_HZ)``.
HTK_SCALE = 2595.0
HTK_BREAK_HZ = 700.0
#: Floor of the log-mel feature (HiFi-GAN/BigVGAN use 1e-5: -11.5 in natural log, about -100 dB).
LOG_FLOOR = 1e-5
#: Guards divisions by a magnitude that can be zero.
TINY = 1e-12
#: Default Griffin-Lim momentum ("fast Griffin-Lim"; 0 gives the original algorithm).
GL_MOMENTUM = 0.99
#: Multiplicative-update iterations of the non-negative mel inversion in :func:`mel_to_magnitude`.
MEL_INVERSE_ITERS = 64


def hz_to_mel(hz: torch.Tensor | float, scale: str = "slaney") -> torch.Tensor:
    """Frequency in Hz to mels (``scale`` = ``"slaney"`` or ``"htk"``)."""
    f = torch.as_tensor(hz, dtype=torch.float64)
    if scale == "htk":
        return HTK_SCALE * torch.log10(1.0 + f / HTK_BREAK_HZ)
    if scale != "slaney":
        raise ValueError(f"unknown mel scale {scale!r}; expected 'slaney' or 'htk'")
    linear = f / SLANEY_HZ_PER_MEL
    break_mel = SLANEY_BREAK_HZ / SLANEY_HZ_PER_MEL
    log_part = break_mel + torch.log(torch.clamp(f, min=SLANEY_BREAK_HZ) / SLANEY_BREAK_HZ) / SLANEY_LOG_STEP
    return torch.where(f >= SLANEY_BREAK_HZ, log_part, linear)


def mel_to_hz(mel: torch.Tensor | float, scale: str = "slaney") -> torch.Tensor:
    """Mels to frequency in Hz (inverse of :func:`hz_to_mel`)."""
    m = torch.as_tensor(mel, dtype=torch.float64)
    if scale == "htk":
        return HTK_BREAK_HZ * (10.0 ** (m / HTK_SCALE) - 1.0)
    if scale != "slaney":
        raise ValueError(f"unknown mel scale {scale!r}; expected 'slaney' or 'htk'")
    break_mel = SLANEY_BREAK_HZ / SLANEY_HZ_PER_MEL
    log_part = SLANEY_BREAK_HZ * torch.exp(SLANEY_LOG_STEP * (m - break_mel))
    return torch.where(m >= break_mel, log_part, m * SLANEY_HZ_PER_MEL)


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    scale: str = "slaney",
    norm: str | None = "slaney",
) -> torch.Tensor:
    """Triangular mel filters ``[n_mels, n_fft // 2 + 1]`` (float32), as ``librosa.filters.mel``.

    Filter ``i`` rises from mel point ``i`` to ``i + 1`` and falls to ``i + 2`` of ``n_mels + 2`` points evenly
    spaced in mels over ``[f_min, f_max]``. ``norm="slaney"`` scales each filter to unit area per Hz
    (``2 / bandwidth``); ``None`` leaves peaks at 1, so that adjacent filters sum to 1 between the outer centres.
    """
    return _cached_filterbank(sample_rate, n_fft, n_mels, float(f_min), f_max, scale, norm).clone()


@functools.lru_cache(maxsize=16)
def _cached_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    scale: str = "slaney",
    norm: str | None = "slaney",
) -> torch.Tensor:
    """:func:`mel_filterbank`, built once per parameter set (callers must not modify the result)."""
    f_max = sample_rate / 2.0 if f_max is None else f_max
    if not 0.0 <= f_min < f_max <= sample_rate / 2.0:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max}")
    if norm not in (None, "slaney"):
        raise ValueError(f"unknown norm {norm!r}; expected 'slaney' or None")
    fft_freqs = torch.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1, dtype=torch.float64)
    mel_points = torch.linspace(hz_to_mel(f_min, scale).item(), hz_to_mel(f_max, scale).item(), n_mels + 2)
    hz_points = mel_to_hz(mel_points.to(torch.float64), scale)
    widths = hz_points.diff()  # [n_mels + 1]
    ramps = hz_points[:, None] - fft_freqs[None, :]  # [n_mels + 2, n_freqs]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    if norm == "slaney":
        weights = weights * (2.0 / (hz_points[2:] - hz_points[:-2]))[:, None]
    return weights.to(torch.float32)


def _window(n_fft: int, win_length: int | None, device: torch.device) -> torch.Tensor:
    return torch.hann_window(win_length or n_fft, periodic=True, device=device)


def _stft(audio: torch.Tensor, n_fft: int, hop: int, win_length: int | None, center: bool) -> torch.Tensor:
    """Complex STFT ``[..., n_fft // 2 + 1, frames]`` of ``[..., N]`` audio (Hann window)."""
    x = torch.as_tensor(audio, dtype=torch.float32)
    batch = x.shape[:-1]
    spec = torch.stft(
        x.reshape(-1, x.shape[-1]),
        n_fft,
        hop_length=hop,
        win_length=win_length,
        window=_window(n_fft, win_length, x.device),
        center=center,
        return_complex=True,
    )
    return spec.reshape(*batch, *spec.shape[-2:])


def _istft(spec: torch.Tensor, n_fft: int, hop: int, win_length: int | None, center: bool, length: int | None):
    batch = spec.shape[:-2]
    wave = torch.istft(
        spec.reshape(-1, *spec.shape[-2:]),
        n_fft,
        hop_length=hop,
        win_length=win_length,
        window=_window(n_fft, win_length, spec.device),
        center=center,
        length=length,
    )
    return wave.reshape(*batch, wave.shape[-1])


def stft_magnitude(
    audio: torch.Tensor, n_fft: int, hop: int, win_length: int | None = None, center: bool = True
) -> torch.Tensor:
    """``|STFT|`` ``[..., n_fft // 2 + 1, frames]`` with a periodic Hann window."""
    return _stft(audio, n_fft, hop, win_length, center).abs()


def log_mel(
    audio: torch.Tensor,
    sample_rate: int,
    n_fft: int = 1024,
    hop: int = 256,
    n_mels: int = 80,
    f_min: float = 0.0,
    f_max: float | None = None,
    power: float = 1.0,
    floor: float = LOG_FLOOR,
    win_length: int | None = None,
    center: bool = True,
) -> torch.Tensor:
    """Log-mel spectrogram ``log(max(mel_filterbank @ |STFT|^power, floor))``: ``[..., n_mels, frames]``."""
    fb = _cached_filterbank(sample_rate, n_fft, n_mels, float(f_min), f_max, "slaney", "slaney")
    fb = fb.to(torch.as_tensor(audio).device)
    mel = torch.matmul(fb, stft_magnitude(audio, n_fft, hop, win_length, center) ** power)
    return torch.log(torch.clamp(mel, min=floor))


def mel_to_magnitude(mel: torch.Tensor, mel_basis: torch.Tensor, n_iter: int = MEL_INVERSE_ITERS) -> torch.Tensor:
    """Non-negative ``S`` with ``mel_basis @ S ~= mel``: pseudo-inverse start, then multiplicative NNLS updates."""
    mel = torch.as_tensor(mel, dtype=torch.float32).clamp(min=0.0)
    basis = mel_basis.to(mel)
    spec = torch.clamp(torch.matmul(torch.linalg.pinv(basis), mel), min=TINY)
    gram, target = basis.T @ basis, torch.matmul(basis.T, mel)
    for _ in range(n_iter):  # Lee & Seung updates keep S >= 0 and never increase the squared error
        spec = spec * target / (torch.matmul(gram, spec) + TINY)
    return spec


def griffin_lim(
    spec: torch.Tensor,
    n_fft: int,
    hop: int,
    *,
    mel_basis: torch.Tensor | None = None,
    power: float = 1.0,
    n_iter: int = 64,
    momentum: float = GL_MOMENTUM,
    win_length: int | None = None,
    center: bool = True,
    length: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Audio ``[..., N]`` whose STFT magnitude matches ``spec`` (fast Griffin-Lim, seeded random initial phase).

    ``spec`` is ``|STFT|^power`` ``[..., n_fft // 2 + 1, frames]``, or with ``mel_basis`` (``[n_mels, n_freqs]``,
    e.g. :func:`mel_filterbank`) a linear-amplitude mel spectrogram ``[..., n_mels, frames]``, first inverted by
    :func:`mel_to_magnitude`. ``n_iter=0`` returns the random-phase starting point.
    """
    spec = torch.as_tensor(spec, dtype=torch.float32)
    if mel_basis is not None:
        spec = mel_to_magnitude(spec, mel_basis)
    magnitude = spec.clamp(min=0.0) ** (1.0 / power)
    if magnitude.shape[-2] != n_fft // 2 + 1:
        raise ValueError(f"spectrogram has {magnitude.shape[-2]} bins; n_fft={n_fft} needs {n_fft // 2 + 1}")
    generator = torch.Generator().manual_seed(seed)
    phase = torch.rand(magnitude.shape, generator=generator) * (2.0 * math.pi)
    angles = torch.polar(torch.ones_like(magnitude), phase.to(magnitude.device))
    previous = torch.zeros_like(angles)
    for _ in range(n_iter):
        rebuilt = _stft(
            _istft(magnitude * angles, n_fft, hop, win_length, center, length), n_fft, hop, win_length, center
        )
        angles = rebuilt - previous * (momentum / (1.0 + momentum))
        angles = angles / (angles.abs() + TINY)
        previous = rebuilt
    return _istft(magnitude * angles, n_fft, hop, win_length, center, length)


def log_mel_to_audio(
    features: torch.Tensor,
    sample_rate: int,
    n_fft: int = 1024,
    hop: int = 256,
    f_min: float = 0.0,
    f_max: float | None = None,
    power: float = 1.0,
    n_iter: int = 64,
    length: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Invert :func:`log_mel` (same parameters) by mel inversion and Griffin-Lim: audio ``[..., N]``."""
    features = torch.as_tensor(features, dtype=torch.float32)
    basis = mel_filterbank(sample_rate, n_fft, features.shape[-2], f_min, f_max).to(features.device)
    return griffin_lim(
        torch.exp(features), n_fft, hop, mel_basis=basis, power=power, n_iter=n_iter, length=length, seed=seed
    )


def spectral_convergence(reference: torch.Tensor, estimate: torch.Tensor, n_fft: int = 1024, hop: int = 256) -> float:
    """``|| |S_ref| - |S_est| ||_F / || |S_ref| ||_F`` over the common length of two signals (0 is perfect)."""
    n = min(reference.shape[-1], estimate.shape[-1])
    ref = stft_magnitude(torch.as_tensor(reference)[..., :n], n_fft, hop)
    est = stft_magnitude(torch.as_tensor(estimate)[..., :n], n_fft, hop)
    return float(torch.linalg.vector_norm(ref - est) / torch.linalg.vector_norm(ref).clamp(min=TINY))


@dataclass(frozen=True)
class MelAxes:
    """The geometry of a mel spectrogram ``[n_mels, frames]``: band ``i`` is the filter of
    :func:`mel_filterbank` centred on mel point ``i + 1`` of ``n_mels + 2`` points evenly spaced in mels over
    ``[f_min, f_max]``, and frame ``k`` is centred on sample ``(k + frame_offset) * hop``.

    ``frame_offset`` is 0 for a centred STFT (``torch.stft(center=True)``, the embedded model's :func:`log_mel`) and
    0.5 where the signal is padded by ``(n_fft - hop) / 2`` on each side and framed without centring (MMAudio's and
    BigVGAN's mel).
    """

    sample_rate: int
    hop: int
    n_mels: int
    f_min: float = 0.0
    f_max: float | None = None
    scale: str = "slaney"
    frame_offset: float = 0.0

    @property
    def top_hz(self) -> float:
        """``f_max``, or the Nyquist frequency when it is ``None``."""
        return self.sample_rate / 2.0 if self.f_max is None else float(self.f_max)

    @property
    def frame_rate(self) -> float:
        """Frames per second."""
        return self.sample_rate / self.hop

    def mel_points(self) -> torch.Tensor:
        """The ``n_mels + 2`` mel-scale points (float64) the filters are built on."""
        lo, hi = hz_to_mel(self.f_min, self.scale).item(), hz_to_mel(self.top_hz, self.scale).item()
        return torch.linspace(lo, hi, self.n_mels + 2, dtype=torch.float64)

    def band_hz(self) -> torch.Tensor:
        """Centre frequency in Hz of each band ``[n_mels]`` (float64), where its filter peaks."""
        return mel_to_hz(self.mel_points()[1:-1], self.scale)

    def band_of(self, hz: torch.Tensor | float) -> torch.Tensor:
        """Fractional band index of frequencies ``hz`` (``i`` at band ``i``'s centre; linear in mels)."""
        points = self.mel_points()
        return (hz_to_mel(hz, self.scale) - points[1]) / (points[1] - points[0])

    def frame_seconds(self, frames: int) -> torch.Tensor:
        """Centre time in seconds of each of ``frames`` frames (float64)."""
        return (torch.arange(frames, dtype=torch.float64) + self.frame_offset) * self.hop / self.sample_rate
