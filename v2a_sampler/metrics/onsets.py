"""Onset detection on waveforms and onset precision/recall/F1 against the ground-truth audible events.

Detector (:func:`detect_onsets`), SuperFlux-style (Böck & Widmer, DAFx 2013) on a fine-hop log-mel spectrogram:

1. ``S = log(max(mel @ |STFT|, floor))`` with a 32 ms window every 10 ms (``center=False``: no padded edges,
   whose reflections of decaying sounds look like onsets);
2. onset strength ``flux[k] = mean_b max(0, S[b, k] - max(S[b-w..b+w, k-lag]))``: the rise of each band over the
   frame ``lag`` hops back, against the loudest nearby band there, so that sweeps (chirps), pitch glides and the
   spectral flicker of Griffin-Lim resynthesis, which move energy between nearby bands without a new sound, add
   little;
3. peak picking: frame ``k`` is an onset if its flux is the largest within ``±peak_window_s``, exceeds the local
   mean over ``±mean_window_s`` by ``delta`` (an adaptive threshold: busy passages raise it) and is at least
   ``min_gap_s`` after the previous onset. Its time is the centre of frame ``k``.

The defaults were tuned on seeds 100-159 of the world on both the real audio and its Griffin-Lim resynthesis through
the V2A model's mel front end (n_fft 1024, hop 320, 64 mels, 48 iterations: the best a generator decoded that way
can do), whose phase artefacts make a fine-grained flux fire inside sustained sounds.

Scoring (:func:`onset_f1`): detections are matched one-to-one to the audible events' onsets within ``±tolerance``
(a maximum matching, :func:`match_onsets`); precision = matches / detections, recall = matches / events. Two events
closer than the detector's resolution (``min_gap_s``; about 2.5% of the world's events) give one detection and so
one miss: ground-truth audio does not reach recall 1.

Measured (pooled over clips): ground-truth audio P 1.00, R 0.88-0.92, F1 0.94-0.96 on sets of 60-100 clips not used
for tuning (misses: near-simultaneous events, quiet sounds under louder ones or under loud background noise);
its Griffin-Lim resynthesis F1 0.90-0.93 (P 0.95); the same audio delayed by 100 ms F1 0.11-0.13 (chance).
Detections fall a few ms from the event times (median |error| 3 ms, 99th percentile 11 ms; 17 ms after GL).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..media.audio import log_mel
from .inputs import METRIC_SAMPLE_RATE, AudioLike, EventLike, audible_events, prepare_audio

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "OnsetCounts",
    "OnsetParams",
    "detect_onsets",
    "match_onsets",
    "onset_counts",
    "onset_f1",
    "onset_strength",
    "prf",
]

#: Matching tolerance (seconds) of a detection around an event onset: ±50 ms, the MIREX onset convention.
DEFAULT_TOLERANCE_S = 0.05


@dataclass(frozen=True)
class OnsetParams:
    """Parameters of :func:`detect_onsets`; defaults tuned on seeds 100-159 (see the module docstring)."""

    n_fft: int = 512  # STFT window (32 ms at 16 kHz): 31 Hz bins, onsets smeared by a few ms only
    hop: int = 160  # 10 ms between frames: the time resolution of the detections
    n_mels: int = 64  # mel bands the flux averages over
    floor: float = 1e-5  # log floor (-100 dB): exact silence has zero flux, hence no onsets
    lag: int = 2  # compare each frame with the one this many hops back (20 ms): sees a whole 1-3 ms attack
    freq_max_bands: int = 4  # max filter half-width over bands of the earlier frame (sweep/vibrato/GL suppression)
    peak_window_s: float = 0.015  # a peak is the flux maximum within ± this
    mean_window_s: float = 0.05  # the adaptive threshold is the flux mean within ± this ...
    delta: float = 0.1  # ... plus this (nats per band, ~0.9 dB over all bands): rejects noise and GL flicker
    min_gap_s: float = 0.015  # shortest interval between two detections


DEFAULT_PARAMS = OnsetParams()


def onset_strength(
    audio: AudioLike, sample_rate: int, params: OnsetParams = DEFAULT_PARAMS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectral-flux onset strength ``[frames]`` and the frame centre times ``[frames]`` (seconds)."""
    x = prepare_audio(audio, sample_rate)
    if x.shape[0] < params.n_fft:
        x = F.pad(x, (0, params.n_fft - x.shape[0]))
    spec = log_mel(x, METRIC_SAMPLE_RATE, params.n_fft, params.hop, params.n_mels, floor=params.floor, center=False)
    width = 2 * params.freq_max_bands + 1
    earlier = F.max_pool1d(spec.T[:, None, :], width, 1, params.freq_max_bands)[:, 0, :].T  # [bands, frames]
    flux = torch.zeros(spec.shape[1])
    if spec.shape[1] > params.lag:
        flux[params.lag :] = (spec[:, params.lag :] - earlier[:, : -params.lag]).clamp(min=0.0).mean(0)
    times = (torch.arange(spec.shape[1], dtype=torch.float64) * params.hop + params.n_fft / 2) / METRIC_SAMPLE_RATE
    return flux, times


def _frames(seconds: float, hop: int) -> int:
    return max(0, round(seconds * METRIC_SAMPLE_RATE / hop))


def detect_onsets(audio: AudioLike, sample_rate: int, params: OnsetParams = DEFAULT_PARAMS) -> np.ndarray:
    """Onset times (seconds, sorted, float64) of a waveform: spectral flux, adaptive threshold, peak picking."""
    flux, times = onset_strength(audio, sample_rate, params)
    peak, mean = _frames(params.peak_window_s, params.hop), _frames(params.mean_window_s, params.hop)
    row = flux[None, None, :]
    local_max = F.max_pool1d(row, 2 * peak + 1, 1, peak)[0, 0]
    local_mean = F.avg_pool1d(row, 2 * mean + 1, 1, mean, count_include_pad=False)[0, 0]
    candidates = torch.nonzero((flux >= local_max) & (flux > local_mean + params.delta)).flatten().tolist()
    gap = _frames(params.min_gap_s, params.hop)
    picked: list[int] = []
    for k in candidates:  # plateaus give equal neighbours: keep the first frame of each
        if not picked or k - picked[-1] > gap:
            picked.append(k)
    return times[picked].numpy()


def match_onsets(reference: Sequence[float], estimated: Sequence[float], tolerance: float) -> list[tuple[int, int]]:
    """A maximum one-to-one matching ``[(i_ref, j_est)]`` of onsets with ``|ref - est| <= tolerance``.

    Both lists are scanned in time order and each reference takes the earliest free detection in its window; with
    equal windows on a line this greedy choice is optimal (an exchange argument: an earlier detection is never more
    useful to a later reference), so the count equals a Hopcroft-Karp maximum matching such as mir_eval's.
    """
    ref_order, est_order = np.argsort(reference, kind="stable"), np.argsort(estimated, kind="stable")
    ref, est = np.asarray(reference, np.float64)[ref_order], np.asarray(estimated, np.float64)[est_order]
    pairs: list[tuple[int, int]] = []
    i = j = 0
    while i < len(ref) and j < len(est):
        if abs(ref[i] - est[j]) <= tolerance:
            pairs.append((int(ref_order[i]), int(est_order[j])))
            i, j = i + 1, j + 1
        elif est[j] < ref[i]:
            j += 1
        else:
            i += 1
    return pairs


@dataclass(frozen=True)
class OnsetCounts:
    """Matched detections, detections and reference onsets of one or more tracks (sum them to pool tracks)."""

    matched: int
    estimated: int
    reference: int

    def __add__(self, other: OnsetCounts) -> OnsetCounts:
        return OnsetCounts(
            self.matched + other.matched, self.estimated + other.estimated, self.reference + other.reference
        )

    def prf(self) -> tuple[float, float, float]:
        """Precision, recall, F1 (see :func:`prf`)."""
        return prf(self.matched, self.estimated, self.reference)


def prf(matched: int, estimated: int, reference: int) -> tuple[float, float, float]:
    """Precision, recall and F1 from counts; an empty side scores 0, except nothing expected and nothing found (1)."""
    if estimated == 0 and reference == 0:
        return 1.0, 1.0, 1.0
    precision = matched / estimated if estimated else 0.0
    recall = matched / reference if reference else 0.0
    f1 = 2.0 * matched / (estimated + reference)
    return precision, recall, f1


def onset_counts(
    audio: AudioLike,
    sample_rate: int,
    events: Iterable[EventLike],
    tolerance: float = DEFAULT_TOLERANCE_S,
    params: OnsetParams = DEFAULT_PARAMS,
) -> OnsetCounts:
    """Matched, detected and reference onset counts of one track against its audible events."""
    reference, _ = audible_events(events)
    estimated = detect_onsets(audio, sample_rate, params)
    return OnsetCounts(len(match_onsets(reference, estimated, tolerance)), len(estimated), len(reference))


def onset_f1(
    audio: AudioLike,
    sample_rate: int,
    events: Iterable[EventLike],
    tolerance: float = DEFAULT_TOLERANCE_S,
    params: OnsetParams = DEFAULT_PARAMS,
) -> tuple[float, float, float]:
    """Onset ``(precision, recall, f1)`` of a track against the audible events (one-to-one, within ±tolerance)."""
    return onset_counts(audio, sample_rate, events, tolerance, params).prf()
