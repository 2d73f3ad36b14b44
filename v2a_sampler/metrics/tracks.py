"""One call per guidance method: every metric of a set of generated soundtracks of synthetic clips.

:func:`evaluate_tracks` pools over clips and samples:

* ``onset_precision`` / ``onset_recall`` / ``onset_f1``: counts of matched, detected and reference onsets summed over
  all tracks, then P/R/F1 (micro average: clips with many events weigh more);
* ``class_accuracy``: correct / total over all audible events of all tracks (NaN without events);
* ``fd``: Fréchet distance between the window embeddings (every :data:`~.classifier.EMBED_HOP_S` s) of all
  generated tracks and those of all reference tracks, the FAD convention (Kilgour et al., 2019) of fitting each
  set's Gaussian to per-window embeddings rather than per-clip ones: a few clips give hundreds of windows.
  FD has a positive small-sample bias, so compare methods on the same number of tracks. Measured with 30 clips
  (570 windows) against 30 other real clips: real 0.94, Griffin-Lim resynthesised 2.3, delayed by 100 ms 1.1 (FD
  is nearly blind to timing: that is onset F1's job), timbres swapped between classes 27.6, white noise 30.9;
* ``diversity``: mean over clips with two or more samples of :func:`~.diversity.diversity` (None when every clip
  has one sample).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ..media.io import V2AInputError
from .classifier import TimbreClassifier, class_counts, load_classifier, window_embeddings
from .diversity import diversity
from .frechet import frechet_distance
from .inputs import METRIC_SAMPLE_RATE, AudioLike, EventLike, audible_events
from .onsets import DEFAULT_TOLERANCE_S, OnsetCounts, onset_counts

__all__ = ["Track", "evaluate_tracks"]

#: A waveform and its sample rate.
Track = tuple[AudioLike, int]


def _is_track(item: Any) -> bool:
    rate = item[1] if isinstance(item, tuple) and len(item) == 2 else None
    return isinstance(rate, int | np.integer) and not isinstance(rate, bool)


def _samples(entry: Any, index: int) -> list[Track]:
    if _is_track(entry):
        return [entry]
    samples = list(entry)
    if not samples or not all(_is_track(s) for s in samples):
        raise V2AInputError(f"generated[{index}] must be an (audio, sample_rate) pair or a non-empty list of them")
    return samples


def evaluate_tracks(
    generated: Sequence[Track | Sequence[Track]],
    events_per_clip: Sequence[Iterable[EventLike]],
    reference_audio: Sequence[AudioLike | Track],
    *,
    reference_sample_rate: int = METRIC_SAMPLE_RATE,
    tolerance: float = DEFAULT_TOLERANCE_S,
    diversity_space: str = "embedding",
    classifier: TimbreClassifier | None = None,
) -> dict[str, float | int | None]:
    """Onset P/R/F1, class accuracy, FD to the reference tracks and diversity of generated tracks.

    ``generated[i]`` is ``(audio, sample_rate)`` or a list of such samples (e.g. seeds) for clip ``i``, whose ground
    truth is ``events_per_clip[i]`` (:class:`~v2a_sampler.synth.Event` objects or their JSON dicts).
    ``reference_audio`` holds real tracks (``(audio, rate)`` pairs, or arrays at ``reference_sample_rate``), e.g.
    the clips' own audio; with none, ``fd`` is None.
    """
    if len(generated) != len(events_per_clip):
        raise V2AInputError(f"{len(generated)} generated clips but {len(events_per_clip)} event lists")
    event_lists = [list(events) for events in events_per_clip]
    model = classifier or load_classifier()
    onsets, correct, total, diversities = OnsetCounts(0, 0, 0), 0, 0, []
    generated_windows: list[torch.Tensor] = []
    num_tracks = 0
    for index, (entry, events) in enumerate(zip(generated, event_lists, strict=True)):
        samples = _samples(entry, index)
        for audio, rate in samples:
            onsets += onset_counts(audio, int(rate), events, tolerance)
            ok, n = class_counts(audio, int(rate), events, model)
            correct, total = correct + ok, total + n
            generated_windows.append(window_embeddings(audio, int(rate), model))
        num_tracks += len(samples)
        if len(samples) >= 2:
            rates = {int(r) for _, r in samples}
            if len(rates) != 1:
                raise V2AInputError(f"samples of generated[{index}] have different sample rates {sorted(rates)}")
            diversities.append(diversity([a for a, _ in samples], rates.pop(), diversity_space, model))
    reference = [item if _is_track(item) else (item, reference_sample_rate) for item in reference_audio]
    reference_windows = [window_embeddings(audio, int(rate), model) for audio, rate in reference]
    fd = None
    if reference_windows:
        fd = frechet_distance(torch.cat(generated_windows), torch.cat(reference_windows))
    precision, recall, f1 = onsets.prf()
    return {
        "onset_precision": precision,
        "onset_recall": recall,
        "onset_f1": f1,
        "class_accuracy": correct / total if total else float("nan"),
        "fd": fd,
        "diversity": float(np.mean(diversities)) if diversities else None,
        "num_clips": len(generated),
        "num_tracks": num_tracks,
        "num_events": sum(len(audible_events(e)[0]) for e in event_lists),
        "num_windows": sum(w.shape[0] for w in generated_windows),
        "num_reference_windows": sum(w.shape[0] for w in reference_windows),
    }
