"""Quality metrics of generated soundtracks of the synthetic world (:mod:`v2a_sampler.synth`).

* Timing: :func:`onset_f1` (spectral-flux onset detector :func:`detect_onsets`, one-to-one matching within ±50 ms
  against the audible ground-truth events).
* Distribution: :func:`frechet_distance` between Gaussians fitted to two sets of embeddings.

All metrics take audio at any sample rate (resampled to :data:`METRIC_SAMPLE_RATE`) and events as
:class:`~v2a_sampler.synth.Event` objects or their JSON dicts.
"""

from .features import METRIC_SAMPLE_RATE, audible_events, prepare_audio, resample
from .frechet import frechet_distance, frechet_distance_from_stats, gaussian_stats, trace_sqrt_product
from .onsets import (
    DEFAULT_TOLERANCE_S,
    OnsetCounts,
    OnsetParams,
    detect_onsets,
    match_onsets,
    onset_counts,
    onset_f1,
    onset_strength,
)

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "METRIC_SAMPLE_RATE",
    "OnsetCounts",
    "OnsetParams",
    "audible_events",
    "detect_onsets",
    "frechet_distance",
    "frechet_distance_from_stats",
    "gaussian_stats",
    "match_onsets",
    "onset_counts",
    "onset_f1",
    "onset_strength",
    "prepare_audio",
    "resample",
    "trace_sqrt_product",
]
