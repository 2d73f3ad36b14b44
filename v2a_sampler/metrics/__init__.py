"""Quality metrics of generated soundtracks of the synthetic world (:mod:`v2a_sampler.synth`).

* Timing: :func:`onset_f1` (spectral-flux onset detector :func:`detect_onsets`, one-to-one matching within ±50 ms
  against the audible ground-truth events).
* Timbre: :func:`class_accuracy`, a small CNN classifier trained on real synthetic audio (shipped weights,
  :func:`load_classifier`; retrain with ``python -m v2a_sampler.metrics.train_classifier``).
* Distribution: :func:`frechet_distance` of the classifier's window embeddings (:func:`window_embeddings`,
  :func:`clip_embeddings`).
* Variety: :func:`diversity` of several samples for the same video.
* :func:`evaluate_tracks`: all of them for a set of generated tracks, one call per method.

All metrics take audio at any sample rate (resampled to :data:`METRIC_SAMPLE_RATE`) and events as
:class:`~v2a_sampler.synth.Event` objects or their JSON dicts.
"""

from .classifier import (
    EMBED_HOP_S,
    FeatureConfig,
    TimbreClassifier,
    TimbreNet,
    class_accuracy,
    class_counts,
    classify_onsets,
    clip_embeddings,
    load_classifier,
    window_embeddings,
)
from .diversity import DIVERSITY_SPACES, diversity, mean_pairwise_distance
from .frechet import frechet_distance, frechet_distance_from_stats, gaussian_stats, trace_sqrt_product
from .inputs import METRIC_SAMPLE_RATE, audible_events, prepare_audio, resample
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
from .tracks import Track, evaluate_tracks

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "DIVERSITY_SPACES",
    "EMBED_HOP_S",
    "METRIC_SAMPLE_RATE",
    "FeatureConfig",
    "OnsetCounts",
    "OnsetParams",
    "TimbreClassifier",
    "TimbreNet",
    "Track",
    "audible_events",
    "class_accuracy",
    "class_counts",
    "classify_onsets",
    "clip_embeddings",
    "detect_onsets",
    "diversity",
    "evaluate_tracks",
    "frechet_distance",
    "frechet_distance_from_stats",
    "gaussian_stats",
    "load_classifier",
    "match_onsets",
    "mean_pairwise_distance",
    "onset_counts",
    "onset_f1",
    "onset_strength",
    "prepare_audio",
    "resample",
    "trace_sqrt_product",
    "window_embeddings",
]
