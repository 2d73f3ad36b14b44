"""Audio and video representations of the embedded V2A model.

:class:`AudioSpec` turns waveforms into normalised log-mel frames (the model's data space) and back (Griffin-Lim on
``torch.stft``); :class:`VideoSpec` says at which rate and size frames are sampled. Both are stored in a model's
``config.json`` so a checkpoint carries the exact front and back end it was trained with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .audio import MelAxes, griffin_lim, log_mel, mel_filterbank

#: Griffin-Lim iterations used to decode generated mels (quality saturates around 32-64 on this material).
DEFAULT_GL_ITERS = 48


@dataclass
class AudioSpec:
    """Log-mel front end: ``sample_rate`` Hz audio, ``hop``-sample frames, ``n_mels`` bands up to ``f_max``.

    ``mel_mean``/``mel_std`` (per band, from the training data) map log-mels to the model's unit-scale space.
    """

    sample_rate: int = 16000
    n_fft: int = 1024
    hop: int = 320  # 50 frames per second at 16 kHz
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float = 8000.0
    mel_mean: list[float] = field(default_factory=list)
    mel_std: list[float] = field(default_factory=list)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    @property
    def mel_axes(self) -> MelAxes:
        """Hz of each mel band and seconds of each frame of :meth:`log_mel` (a centred STFT)."""
        return MelAxes(self.sample_rate, self.hop, self.n_mels, self.f_min, self.f_max)

    def num_frames(self, duration: float) -> int:
        """Mel frames covering ``duration`` seconds (``center=True`` STFT framing)."""
        return int(round(duration * self.sample_rate)) // self.hop + 1

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """``[..., N]`` waveform -> ``[..., n_mels, frames]`` log-mel (:func:`v2a_sampler.media.audio.log_mel`)."""
        wave = torch.as_tensor(wave, dtype=torch.float32)
        return log_mel(wave, self.sample_rate, self.n_fft, self.hop, self.n_mels, self.f_min, self.f_max)

    def _stats(self, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.mel_mean or not self.mel_std:
            raise ValueError("AudioSpec has no normalisation statistics (mel_mean/mel_std); call fit_stats first")
        mean = torch.tensor(self.mel_mean, dtype=ref.dtype, device=ref.device).view(-1, 1)
        std = torch.tensor(self.mel_std, dtype=ref.dtype, device=ref.device).view(-1, 1)
        return mean, std

    def normalize(self, mel: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(mel)
        return (mel - mean) / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(z)
        return z * std + mean

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """Waveform -> normalised log-mel (the model's data space)."""
        return self.normalize(self.log_mel(wave))

    def decode(
        self, z: torch.Tensor, num_samples: int | None = None, n_iter: int = DEFAULT_GL_ITERS, seed: int = 0
    ) -> torch.Tensor:
        """Normalised log-mel ``[..., n_mels, frames]`` -> waveform ``[..., N]`` by mel inversion + Griffin-Lim."""
        mel = self.denormalize(z.float()).exp()
        basis = mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.f_min, self.f_max).to(mel.device)
        wave = griffin_lim(mel, self.n_fft, self.hop, mel_basis=basis, n_iter=n_iter, length=num_samples, seed=seed)
        return wave.clamp(-1.0, 1.0)

    def fit_stats(self, mels: torch.Tensor) -> AudioSpec:
        """Set per-band mean/std from log-mels ``[N, n_mels, frames]``; returns ``self``."""
        flat = mels.transpose(0, 1).reshape(self.n_mels, -1).double()
        self.mel_mean = flat.mean(1).float().tolist()
        self.mel_std = flat.std(1).clamp_min(1e-3).float().tolist()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AudioSpec:
        return cls(**{k: (list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v) for k, v in d.items()})


@dataclass
class VideoSpec:
    """Frames are sampled at ``fps`` by timestamp and resized by the model to ``frame_size`` squares."""

    fps: float = 25.0
    frame_size: int = 32

    def num_frames(self, duration: float) -> int:
        return int(duration * self.fps + 0.5)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VideoSpec:
        return cls(**dict(d))


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` (or batched) -> uint8 ``[..., size, size, 3]`` by area averaging."""
    lead = frames.shape[:-3]
    f = frames.reshape(-1, *frames.shape[-3:]).permute(0, 3, 1, 2).float()
    out = torch.nn.functional.interpolate(f, size=(size, size), mode="area")
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).reshape(*lead, size, size, 3)
