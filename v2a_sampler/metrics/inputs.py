"""Shared input handling of the metrics: audio to mono float32 at :data:`METRIC_SAMPLE_RATE`, and GT events.

* :func:`prepare_audio` checks a waveform (numpy or torch, ``[N]`` or ``[C, N]``), averages channels and resamples
  it (band-limited, by FFT) to the metrics' rate.
* :func:`audible_events` reads ``(time, class_id)`` of the audible events of a clip from
  :class:`~v2a_sampler.synth.Event` objects or their JSON dicts, so every metric scores the same ground truth.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from ..media.io import V2AInputError
from ..synth import Event

__all__ = ["METRIC_SAMPLE_RATE", "AudioLike", "EventLike", "audible_events", "prepare_audio", "resample"]

#: Every metric works at this rate (the synthetic world's rate); other rates are resampled first.
METRIC_SAMPLE_RATE = 16000

AudioLike = np.ndarray | torch.Tensor
EventLike = Event | Mapping[str, Any]


def resample(audio: torch.Tensor, orig_rate: int, target_rate: int) -> torch.Tensor:
    """Band-limited resampling of ``[..., N]`` audio by truncating or zero-padding its spectrum (whole signal)."""
    if orig_rate == target_rate:
        return audio
    n = audio.shape[-1]
    n_out = round(n * target_rate / orig_rate)
    spectrum = torch.fft.rfft(audio.to(torch.float64), dim=-1)
    keep = min(spectrum.shape[-1], n_out // 2 + 1)
    out = torch.fft.irfft(spectrum[..., :keep], n=n_out, dim=-1) * (n_out / n)
    return out.to(torch.float32)


def prepare_audio(audio: AudioLike, sample_rate: int) -> torch.Tensor:
    """Mono float32 ``[N]`` tensor at :data:`METRIC_SAMPLE_RATE` from ``[N]`` or ``[channels, N]`` audio."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
        raise V2AInputError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    x = torch.as_tensor(np.asarray(audio) if not isinstance(audio, torch.Tensor) else audio).detach().cpu()
    if x.ndim == 2:
        x = x.to(torch.float32).mean(0)
    if x.ndim != 1 or x.shape[0] == 0:
        raise V2AInputError(f"audio must be [N] or [channels, N] with N > 0, got shape {tuple(x.shape)}")
    x = x.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise V2AInputError("audio contains NaN or infinite samples")
    return resample(x, int(sample_rate), METRIC_SAMPLE_RATE)


def _field(event: EventLike, name: str) -> Any:
    return event[name] if isinstance(event, Mapping) else getattr(event, name)


def audible_events(events: Iterable[EventLike]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted onset times (s, float64) and class ids (int64) of the audible events."""
    pairs = sorted((float(_field(e, "time")), int(_field(e, "class_id"))) for e in events if _field(e, "audible"))
    times = np.array([t for t, _ in pairs], dtype=np.float64)
    classes = np.array([c for _, c in pairs], dtype=np.int64)
    return times, classes
