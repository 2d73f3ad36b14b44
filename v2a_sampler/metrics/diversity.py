"""Diversity of several generated tracks for the same video (different seeds): mean pairwise distance.

Tracks of one video share a time axis, so they are compared time-aligned (after cropping to the shortest):

* ``space="embedding"`` (default): the classifier embeddings of the windows tiled over each track
  (:func:`~v2a_sampler.metrics.classifier.window_embeddings`); the distance of two tracks is the mean over windows
  of the Euclidean distance of their embeddings at the same window. It sees what sounds when (class, timing,
  presence), little of level or noise.
* ``space="logmel"``: the RMS difference (nats; 1 nat = 8.7 dB) of the tracks' log-mel spectrograms (the
  classifier's front end, 10 ms frames): every spectral difference, including background noise.

``diversity = mean over pairs i < j of distance(i, j)``: 0 for identical tracks, larger for more varied samples.
For scale: three Griffin-Lim resyntheses (different phase seeds) of one real clip score 1.2 (embedding) / 0.48
(logmel); three different real clips 5.4 / 1.2.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .classifier import TimbreClassifier, load_classifier, window_embeddings
from .inputs import METRIC_SAMPLE_RATE, AudioLike, prepare_audio

__all__ = ["DIVERSITY_SPACES", "diversity", "mean_pairwise_distance"]

#: The spaces :func:`diversity` can measure in.
DIVERSITY_SPACES = ("embedding", "logmel")


def mean_pairwise_distance(feats: torch.Tensor | np.ndarray) -> float:
    """Mean over pairs ``i < j`` of ``mean_w ||feats[i, w] - feats[j, w]||_2`` for ``[S, W, D]`` (or ``[S, D]``)."""
    x = torch.as_tensor(np.asarray(feats) if not isinstance(feats, torch.Tensor) else feats, dtype=torch.float64)
    if x.ndim == 2:
        x = x[:, None, :]
    if x.ndim != 3 or x.shape[0] < 2:
        raise ValueError(f"need at least two samples [S >= 2, (W,) D], got shape {tuple(x.shape)}")
    pairs = list(itertools.combinations(range(x.shape[0]), 2))
    return float(np.mean([torch.linalg.vector_norm(x[i] - x[j], dim=-1).mean().item() for i, j in pairs]))


def diversity(
    samples: Sequence[AudioLike],
    sample_rate: int = METRIC_SAMPLE_RATE,
    space: str = "embedding",
    classifier: TimbreClassifier | None = None,
) -> float:
    """Mean pairwise time-aligned distance between ``>= 2`` tracks of the same video (see the module docstring)."""
    if space not in DIVERSITY_SPACES:
        raise ValueError(f"unknown space {space!r}; expected one of {DIVERSITY_SPACES}")
    if len(samples) < 2:
        raise ValueError(f"diversity needs at least two samples, got {len(samples)}")
    model = classifier or load_classifier()
    tracks = [prepare_audio(a, sample_rate) for a in samples]
    length = min(t.shape[0] for t in tracks)
    tracks = [t[:length] for t in tracks]
    if space == "embedding":
        feats = torch.stack([window_embeddings(t, METRIC_SAMPLE_RATE, model) for t in tracks])
        return mean_pairwise_distance(feats)
    raw = dataclasses.replace(model.features, mean=0.0, std=1.0)  # plain log-mel
    batch = torch.stack(tracks)
    if length < raw.n_fft:
        batch = F.pad(batch, (0, raw.n_fft - length))
    x = raw.features(batch).to(torch.float64)  # [S, n_mels, frames]
    pairs = itertools.combinations(range(len(tracks)), 2)
    return float(np.mean([((x[i] - x[j]) ** 2).mean().sqrt().item() for i, j in pairs]))
