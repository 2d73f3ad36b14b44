"""A procedural audio-visual world for training and testing video-to-audio models.

Clips of a few seconds in which visual events (bounces, wall contacts, flashes) of objects of several classes
cause sounds with class-specific timbres, with controlled ambiguity (silent events, off-screen sounds, a silent
distractor, background noise). Deterministic from a seed.

* :func:`make_clip` renders a :class:`Clip` (frames, audio, events); :data:`CLASSES` lists the classes.
* :func:`class_sound` / :data:`TIMBRES` synthesise one sound of a class (for classifiers and metrics);
  :func:`event_sound` rebuilds the sound of one event of a clip.
* :func:`write_mp4` writes an MP4 with its events JSON; :func:`make_dataset` writes many clips and a manifest
  (also ``python -m v2a_sampler.synth OUT_DIR --num-clips N``).
"""

from .export import (
    AUDIO_CODECS,
    Mp4Info,
    clip_seed,
    events_path,
    load_events,
    load_manifest,
    make_dataset,
    write_events_json,
    write_mp4,
)
from .timbres import TIMBRES, buzz, chirp, noise_burst, percussive, tonal
from .world import (
    CLASS_BY_NAME,
    CLASSES,
    Clip,
    Event,
    ObjectInfo,
    SoundClass,
    WorldConfig,
    class_sound,
    event_sound,
    make_clip,
    num_frames,
)

__all__ = [
    "AUDIO_CODECS",
    "CLASSES",
    "CLASS_BY_NAME",
    "Clip",
    "Event",
    "Mp4Info",
    "ObjectInfo",
    "SoundClass",
    "TIMBRES",
    "WorldConfig",
    "buzz",
    "chirp",
    "class_sound",
    "clip_seed",
    "event_sound",
    "events_path",
    "load_events",
    "load_manifest",
    "make_clip",
    "make_dataset",
    "noise_burst",
    "num_frames",
    "percussive",
    "tonal",
    "write_events_json",
    "write_mp4",
]
