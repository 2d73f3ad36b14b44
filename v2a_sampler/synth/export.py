"""Writing synthetic clips: MP4 (H.264 + AAC or PCM) with an events JSON beside it, and whole datasets."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from ..media.io import (
    FASTSTART,
    V2AInputError,
    add_video_encoder,
    atomic_output,
    encode_audio_packets,
    mux_interleaved,
    write_wav,
)
from .world import Clip, Event, WorldConfig, make_clip

__all__ = [
    "AUDIO_CODECS",
    "Mp4Info",
    "clip_seed",
    "events_path",
    "load_events",
    "load_manifest",
    "make_dataset",
    "write_events_json",
    "write_mp4",
]

#: ``write_mp4``'s audio codec choices and the FFmpeg encoders behind them.
AUDIO_CODECS = {"aac": "aac", "pcm": "pcm_s16le"}
#: Largest denominator used to turn a float frame rate into a fraction (29.97 -> 2997/100, 30000/1001 kept).
RATE_DENOMINATOR = 1001
#: File name of a dataset's manifest (one JSON object per line, one line per clip).
MANIFEST_NAME = "manifest.jsonl"


@dataclass(frozen=True)
class Mp4Info:
    """What :func:`write_mp4` wrote and with which encoders."""

    path: Path
    events_path: Path
    video_codec: str  # encoder: "libx264", or "mpeg4" where this FFmpeg build has no libx264
    pix_fmt: str
    audio_codec: str  # encoder: "aac" or "pcm_s16le"


def events_path(video_path: str | Path) -> Path:
    """The events JSON that goes with a clip's video: ``clip.mp4`` -> ``clip.events.json``."""
    p = Path(video_path)
    return p.with_name(p.stem + ".events.json")


def write_events_json(clip: Clip, path: str | Path, overwrite: bool = False, **extra: Any) -> Path:
    """Write :meth:`Clip.metadata` (plus ``extra`` fields) as JSON, atomically."""
    data = {**clip.metadata(), **extra}
    with atomic_output(path, overwrite) as tmp:
        tmp.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    return Path(path)


def load_events(path: str | Path) -> list[Event]:
    """The events of an events JSON written by :func:`write_events_json`."""
    data = json.loads(Path(path).read_text())
    return [Event(**e) for e in data["events"]]


def write_mp4(clip: Clip, path: str | Path, audio_codec: str = "aac", overwrite: bool = False) -> Mp4Info:
    """Write a clip as an MP4 (H.264 video, AAC or 16-bit PCM audio) and its events JSON beside it, atomically.

    The video codec is libx264 when this FFmpeg build has it, else MPEG-4 Part 2; both codecs are recorded in the
    returned :class:`Mp4Info` and in the events JSON (``video_codec``, ``audio_codec``).
    """
    if audio_codec not in AUDIO_CODECS:
        raise V2AInputError(f"audio_codec must be one of {', '.join(AUDIO_CODECS)}, got {audio_codec!r}")
    video_path, json_path = Path(path), events_path(path)
    for p in (video_path, json_path):  # refuse before writing either
        if p.exists() and not overwrite:
            raise V2AInputError(f"output exists (pass overwrite=True to replace it): {p}")
    rate = Fraction(clip.fps).limit_denominator(RATE_DENOMINATOR)
    with atomic_output(video_path, overwrite) as tmp:
        with av.open(str(tmp), "w", format="mp4", container_options=FASTSTART) as out:
            stream = add_video_encoder(out, rate, clip.width, clip.height)
            packets = encode_audio_packets(out, clip.audio[None], clip.sample_rate, AUDIO_CODECS[audio_codec], 0.0)

            def video() -> Iterator[av.Packet]:
                for k, image in enumerate(clip.frames):
                    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                    frame.pts = k
                    yield from stream.encode(frame)
                yield from stream.encode(None)

            mux_interleaved(out, video(), packets)
            info = Mp4Info(video_path, json_path, stream.codec_context.name, stream.pix_fmt, AUDIO_CODECS[audio_codec])
    write_events_json(
        clip, json_path, overwrite, video=video_path.name, video_codec=info.video_codec, audio_codec=info.audio_codec
    )
    return info


def clip_seed(seed: int, index: int) -> int:
    """Seed of clip ``index`` of a dataset with base ``seed`` (independent streams via numpy's SeedSequence)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def make_dataset(
    out_dir: str | Path,
    num_clips: int,
    seed: int = 0,
    duration: float = 5.0,
    fps: float = 24.0,
    size: int | tuple[int, int] = 96,
    sample_rate: int = 16000,
    audio_codec: str = "aac",
    write_audio: bool = True,
    config: WorldConfig | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Generate ``num_clips`` clips into ``out_dir``: ``clip_NNNNNN.mp4`` + ``.events.json`` (+ the exact audio as
    ``.wav``), and ``manifest.jsonl`` listing them (written last). Returns the manifest's path.

    Clip ``i`` is ``make_clip(clip_seed(seed, i), ...)``, so any clip can be regenerated alone.
    """
    if num_clips < 1:
        raise V2AInputError(f"num_clips must be positive, got {num_clips}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / MANIFEST_NAME
    if manifest.exists() and not overwrite:
        raise V2AInputError(f"output exists (pass overwrite=True to replace it): {manifest}")
    rows = []
    for i in range(num_clips):
        s = clip_seed(seed, i)
        clip = make_clip(s, duration, fps, size, sample_rate, config)
        name = f"clip_{i:06d}"
        info = write_mp4(clip, root / f"{name}.mp4", audio_codec, overwrite)
        if write_audio:
            write_wav(root / f"{name}.wav", clip.audio, sample_rate, overwrite)
        rows.append(
            {
                "id": name,
                "index": i,
                "seed": s,
                "video": info.path.name,
                "events": info.events_path.name,
                "audio": f"{name}.wav" if write_audio else None,
                "duration": clip.duration,
                "fps": clip.fps,
                "width": clip.width,
                "height": clip.height,
                "sample_rate": clip.sample_rate,
                "num_events": len(clip.events),
                "num_audible": len(clip.audible_events),
                "classes": sorted({o.class_name for o in clip.objects}),
                "video_codec": info.video_codec,
                "audio_codec": info.audio_codec,
                "config": dataclasses.asdict(config or WorldConfig()),
            }
        )
        if progress is not None:
            progress(i + 1, num_clips)
    with atomic_output(manifest, overwrite) as tmp:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest


def load_manifest(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a dataset manifest (a ``manifest.jsonl`` file, or the directory holding one)."""
    p = Path(path)
    p = p / MANIFEST_NAME if p.is_dir() else p
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
