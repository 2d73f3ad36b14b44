"""Audio/video I/O for the pipeline and the CLI: probing, timestamp-based frame sampling, atomic WAV writing and muxing.

* :func:`probe_video` reads a video's duration, frame rate, size, frame count and whether it has audio; with
  ``scan=True`` it also reads every packet (without decoding) to find files that end early.
* :func:`read_frames` samples frames **by timestamp** at a fixed target rate (the embedded model's rule): the
  frame for target time ``t_k = start + k / fps`` is the latest decoded frame whose presentation time is
  ``<= t_k + TIME_EPS`` (1 ms; the first frame when none is), and a window of ``duration`` seconds gives exactly
  :func:`num_target_frames` ``(duration, fps) = floor(duration * fps + 1/2)`` frames, whatever the source rate
  (29.97, 2 fps or variable).
* :func:`iter_frames` yields every decoded frame with its time, for readers with their own selection rule
  (``v2a_sampler.mmaudio.frames`` follows MMAudio's: the first frame at or after each target time).
* :func:`read_audio` decodes the first audio stream of any file FFmpeg reads (WAV, MP4, ...).
* :func:`write_wav` and :func:`mux` write atomically (a temporary file in the same directory, then ``os.replace``)
  and refuse to overwrite an existing file unless ``overwrite=True``. :func:`mux` copies the video stream (it
  re-encodes only when the output container cannot hold the source codec, and then says so with a
  :class:`ReencodeWarning`) and adds the audio as AAC, padded or trimmed to the video's duration.

A video whose frames end well before its container says (a truncated download, a damaged file) is *partial*: the
readers detect it (decoded or demuxed end vs the container's duration, :data:`PARTIAL_SLACK_FRAMES`; a decoding error
after the first frames ends the readable part) and emit a :class:`PartialVideoWarning` with the numbers, or with
``strict=True`` raise :class:`V2AInputError`.

Times are in seconds, measured from the start of the first video stream. Every failure raises
:class:`V2AInputError` with a one-line message.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile as sf
import torch

from ..errors import error_line

__all__ = [
    "AAC_BITRATE",
    "AAC_RATES",
    "MuxInfo",
    "PartialVideoWarning",
    "ReencodeWarning",
    "V2AInputError",
    "VideoInfo",
    "add_video_encoder",
    "atomic_output",
    "encode_audio_packets",
    "mux",
    "mux_interleaved",
    "num_target_frames",
    "pick_video_encoder",
    "probe_video",
    "read_audio",
    "read_frames",
    "write_wav",
]

PathLike = str | os.PathLike
AudioLike = np.ndarray | torch.Tensor

#: Slack (seconds) when comparing a frame's presentation time with a target time: a frame counts as shown at
#: ``t`` when its timestamp is ``<= t + TIME_EPS``. Matroska/WebM round timestamps to 1 ms, so a frame due at
#: 41.667 ms is stored as 42 ms; 1 ms of slack keeps such frames on time (and is far below any frame period).
TIME_EPS = 1e-3
#: Guards the half-up rounding of frame counts against float error (e.g. 0.1 * 3 = 0.30000000000000004).
ROUNDING_EPS = 1e-9
#: How far (seconds) a requested window may run past the video's end: container durations are rounded, and
#: targets past the last frame reuse it. Larger overshoots are reported as errors.
END_TOLERANCE_S = 0.05
#: A video is partial when the frames that can be read end more than this many frame periods (and more than
#: ``END_TOLERANCE_S``) before the container's duration: one missing frame at the end is common and harmless.
PARTIAL_SLACK_FRAMES = 1.0
#: swscale interpolation used when resizing frames (MMAudio resizes with bicubic interpolation).
RESIZE_INTERPOLATION = "BICUBIC"
#: AAC bit rate (bits/s) of muxed audio: transparent enough for 16-48 kHz mono/stereo generated audio.
AAC_BITRATE = 128_000
#: Sample rates FFmpeg's AAC encoder accepts (the MPEG-4 audio sampling-frequency table).
AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
#: x264 settings for re-encoded or synthetic video: constant quality 20 (visually lossless for flat synthetic
#: frames) at a fast preset.
X264_OPTIONS = {"crf": "20", "preset": "veryfast"}
#: Output containers :func:`mux` writes, by file suffix.
MUX_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
#: Container options for MP4/MOV outputs: move the index to the front so the file streams.
FASTSTART = {"movflags": "+faststart"}


class V2AInputError(ValueError):
    """A bad input or output path: missing file, not a video, no frames, unreadable codec, output exists, ...."""


class PartialVideoWarning(UserWarning):
    """Only the first part of a video can be read (truncated or damaged file); the message has the numbers."""


class ReencodeWarning(UserWarning):
    """:func:`mux` had to re-encode the video: the output container cannot hold the source codec."""


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns about a video file (its first video stream)."""

    path: Path
    duration: float  # seconds, of the video stream
    fps: float  # average frame rate
    width: int
    height: int
    num_frames: int
    has_audio: bool
    codec: str  # decoder name, e.g. "h264"


@dataclass(frozen=True)
class MuxInfo:
    """What :func:`mux` wrote."""

    path: Path
    duration: float  # seconds of video (the audio is padded or trimmed to it)
    video_copied: bool  # False when the video had to be re-encoded
    video_codec: str  # encoder name when re-encoded, source codec name when copied
    audio_codec: str
    num_audio_samples: int


# ---------------------------------------------------------------------------------------------------------------
# Opening and probing
# ---------------------------------------------------------------------------------------------------------------


def _existing_file(path: PathLike, what: str = "file") -> Path:
    p = Path(path)
    if not p.exists():
        raise V2AInputError(f"{what} not found: {p}")
    if not p.is_file():
        raise V2AInputError(f"{what} is not a regular file: {p}")
    if p.stat().st_size == 0:
        raise V2AInputError(f"{what} is empty (0 bytes): {p}")
    return p


def _open_input(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise V2AInputError(
            f"cannot read {path}: not a media file FFmpeg understands, or a truncated one ({e.strerror})"
        ) from None


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        raise V2AInputError(f"not a video: no video stream in {path}")
    stream = streams[0]
    if stream.codec_context is None:
        raise V2AInputError(f"cannot decode the video in {path}: codec not supported by this FFmpeg build")
    stream.thread_type = "AUTO"
    return stream


def _start_seconds(stream: av.stream.Stream) -> float:
    return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0


def _scan_packets(path: Path, index: int) -> tuple[int, float]:
    """Count the packets of video stream ``index`` and find its end time (seconds from its start), without decoding.

    Opens its own container so the caller's read position is untouched.
    """
    count, end = 0, 0.0
    with _open_input(path) as container:
        stream = container.streams.video[index]
        start = _start_seconds(stream)
        for packet in container.demux(stream):
            if packet.size == 0:  # the flush packet at the end of the stream
                continue
            count += 1
            if packet.pts is not None:
                stop = packet.pts + (packet.duration or 0)
                end = max(end, float(stop * packet.time_base) - start)
    return count, end


def _probe(container: av.container.InputContainer, path: Path) -> tuple[VideoInfo, av.video.stream.VideoStream]:
    stream = _video_stream(container, path)
    num_frames = stream.frames
    duration = float(stream.duration * stream.time_base) if stream.duration else 0.0
    if num_frames <= 0 or duration <= 0.0:  # metadata missing (e.g. Matroska stores no frame count): scan packets
        scanned_frames, scanned_end = _scan_packets(path, list(container.streams.video).index(stream))
        num_frames = num_frames if num_frames > 0 else scanned_frames
        duration = duration if duration > 0.0 else scanned_end
        if duration <= 0.0 and container.duration:
            duration = container.duration / av.time_base
    if num_frames <= 0:
        raise V2AInputError(f"video has no frames: {path}")
    if duration <= 0.0:
        raise V2AInputError(f"video has zero length: {path}")
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else num_frames / duration
    info = VideoInfo(
        path=path,
        duration=duration,
        fps=fps,
        width=stream.codec_context.width,
        height=stream.codec_context.height,
        num_frames=num_frames,
        has_audio=bool(container.streams.audio),
        codec=stream.codec_context.name,
    )
    return info, stream


def probe_video(path: PathLike, scan: bool = False, strict: bool = False, needed: float | None = None) -> VideoInfo:
    """Duration, frame rate, size, frame count and audio presence of a video file.

    ``scan=True`` also reads every packet of the video stream (no decoding: fast) and checks that they reach the
    container's duration (or the first ``needed`` seconds): a file that ends early (e.g. the first half of a
    faststart MP4) gives a :class:`PartialVideoWarning`, or with ``strict`` a :class:`V2AInputError`.
    """
    p = _existing_file(path, "video")
    with _open_input(p) as container:
        info, stream = _probe(container, p)
        index = list(container.streams.video).index(stream)
    if scan:
        try:
            count, end = _scan_packets(p, index)
        except av.error.FFmpegError as e:
            raise V2AInputError(f"cannot read the video in {p}: {e.strerror}") from None
        _check_complete(p, info, end, count, info.duration if needed is None else needed, strict, "packets")
    return info


def _check_complete(
    path: Path, info: VideoInfo, end: float, count: int, needed: float, strict: bool, what: str = "frames"
) -> None:
    """Warn (or raise, ``strict``) when what can be read of a video ends before ``needed`` seconds (at most the
    container's duration), by more than the slack of :data:`PARTIAL_SLACK_FRAMES`."""
    needed = min(needed, info.duration)
    slack = max(END_TOLERANCE_S, PARTIAL_SLACK_FRAMES / info.fps)
    if end >= needed - slack:
        return
    message = (
        f"{path} is partial: its {what} end at {end:.3f} s of {info.duration:.3f} s ({count} of {info.num_frames} "
        "frames readable; truncated or damaged file)"
    )
    if strict:
        raise V2AInputError(message)
    warnings.warn(PartialVideoWarning(message), stacklevel=3)


# ---------------------------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------------------------


def iter_frames(path: PathLike, strict: bool = False) -> Iterator[tuple[int, float, av.VideoFrame]]:
    """Every decoded frame of a video's first video stream as ``(index, seconds from the stream start, frame)``.

    For readers with their own frame-selection rule; raises :class:`V2AInputError` for unreadable files. The file
    closes when the iteration ends (or the generator is closed). When the frames run out well before the
    container's duration the video is partial: a :class:`PartialVideoWarning` (``strict``: an error) at the end.
    """
    p = _existing_file(path, "video")
    with _open_input(p) as container:
        info, stream = _probe(container, p)
        origin = _start_seconds(stream)
        period = 1.0 / info.fps  # only for frames without timestamps
        count, end = 0, 0.0
        try:
            for index, frame in enumerate(_decoded(container, stream)):
                t = frame.time - origin if frame.time is not None else index * period
                count, end = count + 1, max(end, t + _frame_seconds(frame, period))
                yield index, t, frame
        except av.error.FFmpegError as e:
            if count == 0:
                raise V2AInputError(f"cannot decode the video in {p}: {e.strerror}") from None
            # damaged after some frames (a file cut inside a packet): the readable part ends here
    _check_complete(p, info, end, count, info.duration, strict)


def _decoded(container: av.container.InputContainer, stream: Any) -> Iterator[av.VideoFrame]:
    """The decoded frames of ``stream``, skipping packets the decoder rejects (damaged, or cut off at the end of a
    truncated file): the frames around them still decode, and the partial-video check reports what is missing."""
    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.error.FFmpegError:
            continue


def _frame_seconds(frame: av.VideoFrame, period: float) -> float:
    """How long a decoded frame is shown: its own duration where the container records one, else ``period``."""
    duration = getattr(frame, "duration", None)
    if duration and frame.time_base is not None:
        return float(duration * frame.time_base)
    return period


def num_target_frames(duration: float, fps: float) -> int:
    """Frames sampled from ``duration`` seconds at ``fps``: ``floor(duration * fps + 1/2)`` (half rounds up).

    With this count every target time ``k / fps`` lies at least half a period before the window's end.
    """
    return int(math.floor(duration * fps + 0.5 + ROUNDING_EPS))


def _parse_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height <= 0 or width <= 0:
        raise V2AInputError(f"frame size must be positive, got {size!r}")
    return int(height), int(width)


def read_frames(
    path: PathLike,
    fps: float,
    size: int | tuple[int, int] | None = None,
    start: float = 0.0,
    duration: float | None = None,
    strict: bool = False,
) -> torch.Tensor:
    """Frames sampled at ``fps`` by timestamp, as a uint8 tensor ``[T, H, W, 3]`` (RGB).

    ``T = num_target_frames(duration, fps)``; frame ``k`` is the latest source frame whose timestamp is at most
    ``start + k / fps + TIME_EPS`` (the first frame if none is). ``size`` is ``H`` (square) or ``(H, W)``; frames
    are resized to it without keeping the aspect ratio; ``None`` keeps the source size. ``duration`` defaults to
    the rest of the video; a window ending more than ``END_TOLERANCE_S`` past the video's end is an error. When
    the decodable frames end well before the window does (a partial video), the missing targets repeat the last
    decoded frame and a :class:`PartialVideoWarning` says so; ``strict`` makes it a :class:`V2AInputError`.
    """
    if not (math.isfinite(fps) and fps > 0):
        raise V2AInputError(f"fps must be a positive number, got {fps!r}")
    hw = _parse_size(size)
    p = _existing_file(path, "video")
    with _open_input(p) as container:
        info, stream = _probe(container, p)
        if not (math.isfinite(start) and 0.0 <= start < info.duration):
            raise V2AInputError(f"start {start!r} s is outside the video ({info.duration:.3f} s): {p}")
        window = info.duration - start if duration is None else duration
        if not (math.isfinite(window) and window > 0):
            raise V2AInputError(f"duration must be positive, got {duration!r}")
        if start + window > info.duration + END_TOLERANCE_S:
            raise V2AInputError(
                f"window {start:.3f}+{window:.3f} s runs past the end of the video ({info.duration:.3f} s): {p}"
            )
        count = num_target_frames(window, fps)
        if count == 0:
            raise V2AInputError(f"a {window:.4f} s window holds no frame at {fps} fps")
        targets = start + np.arange(count) / fps
        frames, count, end = _sample_frames(container, stream, targets, hw, p)
    if end is not None:  # the decoder ran out of frames before the last target
        count = count if targets[0] == 0 else round(end * info.fps)  # after a seek: frames before it not counted
        _check_complete(p, info, end, count, start + window, strict)
    return torch.from_numpy(np.stack(frames))


def _sample_frames(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    targets: np.ndarray,
    hw: tuple[int, int] | None,
    path: Path,
) -> tuple[list[np.ndarray], int, float | None]:
    """The decoding loop of :func:`read_frames`: converts only the frames it emits. Returns the frames, the number
    decoded and, when the decoder ran out before the last target, where the decoded frames end (seconds)."""
    origin = _start_seconds(stream)
    period = 1.0 / float(stream.average_rate or stream.guessed_rate or 25)  # only for frames without timestamps
    if targets[0] > 0:
        offset = int((targets[0] + origin) / stream.time_base)
        container.seek(offset, stream=stream, backward=True)
    out: list[np.ndarray] = []
    previous: av.VideoFrame | None = None
    previous_array: np.ndarray | None = None
    k = count = 0
    end = 0.0

    def convert(frame: av.VideoFrame) -> np.ndarray:
        kwargs: dict[str, Any] = {"format": "rgb24"}
        if hw is not None and (frame.height, frame.width) != hw:
            kwargs.update(height=hw[0], width=hw[1], interpolation=RESIZE_INTERPOLATION)
        return frame.to_ndarray(**kwargs)

    try:
        for index, frame in enumerate(_decoded(container, stream)):
            t = float(frame.pts * frame.time_base) - origin if frame.pts is not None else index * period
            count, end = count + 1, max(end, t + _frame_seconds(frame, period))
            if previous is not None:
                while k < len(targets) and t > targets[k] + TIME_EPS:
                    if previous_array is None:
                        previous_array = convert(previous)
                    out.append(previous_array)
                    k += 1
            previous, previous_array = frame, None
            if k >= len(targets):
                break
    except av.error.FFmpegError as e:
        if previous is None:
            raise V2AInputError(f"cannot decode the video in {path}: {e.strerror}") from None
        # damaged after some frames (a file cut inside a packet): the readable part ends here, checked by the caller
    if previous is None:
        raise V2AInputError(f"video has no decodable frames: {path}")
    ran_out = k < len(targets)
    while k < len(targets):  # targets after the last frame show the last frame
        if previous_array is None:
            previous_array = convert(previous)
        out.append(previous_array)
        k += 1
    return out, count, (end if ran_out else None)


# ---------------------------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------------------------


def read_audio(path: PathLike, sample_rate: int | None = None, mono: bool = True) -> tuple[torch.Tensor, int]:
    """Decode the first audio stream of a WAV/MP4/... file: float32 ``[N]`` if ``mono`` else ``[C, N]``, and its rate.

    ``sample_rate`` resamples (FFmpeg's swresample); ``None`` keeps the file's rate. Mono averages the channels.
    Encoder padding at the end is removed where the container records the stream's duration (WAV, MP4, MOV);
    Matroska does not, so an AAC track read from it may run up to one frame (1024 samples) long.
    """
    if sample_rate is not None and sample_rate <= 0:
        raise V2AInputError(f"sample_rate must be positive, got {sample_rate!r}")
    p = _existing_file(path, "audio file")
    with _open_input(p) as container:
        if not container.streams.audio:
            raise V2AInputError(f"no audio stream in {p}")
        stream = container.streams.audio[0]
        if stream.codec_context is None:
            raise V2AInputError(f"cannot decode the audio in {p}: codec not supported by this FFmpeg build")
        rate = int(sample_rate or stream.codec_context.sample_rate)
        # the stream's duration excludes the encoder's end padding (AAC pads to whole 1024-sample frames)
        length = round(float(stream.duration * stream.time_base) * rate) if stream.duration else None
        resampler = av.AudioResampler(format="fltp", rate=rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray() for f in resampler.resample(None))
        except av.error.FFmpegError as e:
            raise V2AInputError(f"cannot decode the audio in {p}: {e.strerror}") from None
    if not chunks:
        raise V2AInputError(f"audio stream has no samples: {p}")
    wave = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
    if length is not None:
        wave = wave[:, :length]
    if mono:
        wave = wave.mean(axis=0)
    return torch.from_numpy(np.ascontiguousarray(wave)), rate


def _audio_array(audio: AudioLike) -> np.ndarray:
    """Audio as float32 ``[C, N]`` with C in {1, 2}; rejects empty and non-finite audio."""
    a = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    a = a.astype(np.float32, copy=False)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[0] not in (1, 2):
        raise V2AInputError(f"audio must be [N] or [C, N] with 1 or 2 channels, got shape {tuple(a.shape)}")
    if a.shape[1] == 0:
        raise V2AInputError("audio is empty")
    if not np.isfinite(a).all():
        raise V2AInputError("audio contains NaN or infinite samples")
    return a


def _check_rate(sample_rate: int) -> int:
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise V2AInputError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    return int(sample_rate)


# ---------------------------------------------------------------------------------------------------------------
# Atomic writing
# ---------------------------------------------------------------------------------------------------------------


def _check_output(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise V2AInputError(f"output path is a directory: {path}")
    if path.exists() and not overwrite:
        raise V2AInputError(f"output exists (pass overwrite=True to replace it): {path}")
    if not path.parent.is_dir():
        raise V2AInputError(f"output directory does not exist: {path.parent}")


@contextmanager
def atomic_output(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s directory; on success move it onto ``path``, on failure delete it.

    Refuses (before any work) when ``path`` exists and ``overwrite`` is false. A failed write leaves neither a
    partial file nor a changed ``path``; an ``OSError`` while writing is re-raised naming ``path`` (never the
    temporary file).
    """
    target = Path(path)
    _check_output(target, overwrite)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as e:
        raise OSError(f"cannot write {target}: {e.strerror or error_line(e)}") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600 files; give the usual permissions
        if overwrite:
            os.replace(tmp, target)
        else:
            _link_no_clobber(tmp, target)
    except OSError as e:  # disk full, permissions changed, ...: name the user's path, not the temporary file
        raise OSError(f"cannot write {target}: {e.strerror or error_line(e).replace(str(tmp), str(target))}") from e
    except Exception as e:  # a writer's own error that names the temporary file (soundfile does)
        if str(tmp) not in str(e):
            raise
        raise OSError(f"cannot write {target}: {error_line(e).replace(str(tmp), str(target))}") from e
    finally:
        tmp.unlink(missing_ok=True)


def _link_no_clobber(tmp: Path, target: Path) -> None:
    """Move ``tmp`` onto ``target`` unless ``target`` exists, atomically where the filesystem has hard links."""
    try:
        os.link(tmp, target)  # fails if target exists, even if it appeared after the first check
    except FileExistsError:
        raise V2AInputError(f"output exists (pass overwrite=True to replace it): {target}") from None
    except OSError:  # no hard links here (some network/FUSE filesystems): check, then replace
        _check_output(target, overwrite=False)
        os.replace(tmp, target)


def write_wav(
    path: PathLike, audio: AudioLike, sample_rate: int, overwrite: bool = False, subtype: str = "PCM_16"
) -> Path:
    """Write ``audio`` (``[N]`` or ``[C, N]``, floats in [-1, 1]) as a WAV file, atomically.

    Samples outside [-1, 1] are clipped for integer subtypes.
    """
    rate = _check_rate(sample_rate)
    a = _audio_array(audio)
    if not sf.check_format("WAV", subtype):
        raise V2AInputError(f"WAV cannot hold subtype {subtype!r}; try PCM_16, PCM_24 or FLOAT")
    if subtype.upper().startswith("PCM"):
        a = np.clip(a, -1.0, 1.0)
    with atomic_output(path, overwrite) as tmp:
        sf.write(str(tmp), a.T, rate, subtype=subtype, format="WAV")
    return Path(path)


# ---------------------------------------------------------------------------------------------------------------
# Muxing
# ---------------------------------------------------------------------------------------------------------------


def pick_video_encoder(width: int, height: int) -> tuple[str, str]:
    """(encoder, pixel format) for writing video: H.264 (libx264) when this FFmpeg build has it, else MPEG-4 Part 2.

    x264's 4:2:0 mode needs even sizes, so odd sizes use 4:4:4.
    """
    if "libx264" in av.codecs_available:
        return "libx264", "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    return "mpeg4", "yuv420p"


def add_video_encoder(container: av.container.OutputContainer, rate: Fraction, width: int, height: int) -> Any:
    """Add a video stream with :func:`pick_video_encoder`'s codec to ``container``."""
    codec, pix_fmt = pick_video_encoder(width, height)
    stream = container.add_stream(codec, rate=rate, options=X264_OPTIONS if codec == "libx264" else {})
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    return stream


def encode_audio_packets(
    container: av.container.OutputContainer, audio: np.ndarray, sample_rate: int, codec: str, offset: float
) -> list[av.Packet]:
    """Add an audio stream to ``container`` and encode ``audio`` (float32 ``[C, N]``) starting at ``offset`` s."""
    layout = "mono" if audio.shape[0] == 1 else "stereo"
    stream = container.add_stream(codec, rate=sample_rate, layout=layout)
    if codec == "aac":
        stream.bit_rate = AAC_BITRATE
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio), format="fltp", layout=layout)
    frame.sample_rate = sample_rate
    frame.time_base = Fraction(1, sample_rate)
    frame.pts = round(offset * sample_rate)
    return [*stream.encode(frame), *stream.encode(None)]


def mux_interleaved(container: av.container.OutputContainer, video: Iterator[av.Packet], audio: list[av.Packet]):
    """Mux video packets as they come, slotting in the (already encoded) audio packets in time order."""

    def when(packet: av.Packet) -> float:
        stamp = packet.dts if packet.dts is not None else packet.pts
        return float(stamp * packet.time_base) if stamp is not None else -math.inf

    pending = iter(audio)
    nxt = next(pending, None)
    for packet in video:
        while nxt is not None and when(nxt) <= when(packet):
            container.mux(nxt)
            nxt = next(pending, None)
        container.mux(packet)
    while nxt is not None:
        container.mux(nxt)
        nxt = next(pending, None)


def _copied_video(source: av.container.InputContainer, src: Any, out: av.container.OutputContainer) -> Iterator:
    dst = out.add_stream_from_template(src)
    for packet in source.demux(src):
        if packet.dts is None:  # flush packet
            continue
        packet.stream = dst
        yield packet


def _reencoded_video(source: av.container.InputContainer, src: Any, out: av.container.OutputContainer) -> Iterator:
    rate = src.average_rate or src.guessed_rate or Fraction(25)
    dst = add_video_encoder(out, Fraction(rate), src.codec_context.width, src.codec_context.height)
    dst.codec_context.time_base = src.time_base
    for frame in source.decode(src):
        frame.time_base = src.time_base
        yield from dst.encode(frame)
    yield from dst.encode(None)


def _mux_once(src_path: Path, tmp: Path, audio: np.ndarray, sample_rate: int, fmt: str, copy: bool) -> str:
    """One muxing attempt into ``tmp``; returns the video codec name written."""
    with _open_input(src_path) as source:
        src = _video_stream(source, src_path)
        options = FASTSTART if fmt in ("mp4", "mov") else {}
        with av.open(str(tmp), "w", format=fmt, container_options=options) as out:
            video = (_copied_video if copy else _reencoded_video)(source, src, out)
            first = next(video, None)  # creates the output video stream before the audio one
            packets = encode_audio_packets(out, audio, sample_rate, "aac", _start_seconds(src))
            mux_interleaved(out, _chain(first, video), packets)
            return src.codec_context.name if copy else out.streams.video[0].codec_context.name


def _chain(first: av.Packet | None, rest: Iterator[av.Packet]) -> Iterator[av.Packet]:
    if first is not None:
        yield first
    yield from rest


def mux(
    video_path: PathLike, audio: AudioLike, sample_rate: int, out_path: PathLike, overwrite: bool = False
) -> MuxInfo:
    """Write ``video_path``'s video with ``audio`` as AAC into ``out_path`` (.mp4/.m4v/.mov/.mkv), atomically.

    The video stream is copied; it is re-encoded (see :func:`pick_video_encoder`) only when the output container
    cannot hold its codec (e.g. VP8 into MP4), with a :class:`ReencodeWarning`. Source audio, subtitle and data
    streams are dropped. The audio (``[N]`` or ``[C, N]`` at ``sample_rate``) starts with the video and is
    zero-padded or trimmed to the video's duration.
    """
    rate = _check_rate(sample_rate)
    if rate not in AAC_RATES:
        raise V2AInputError(f"AAC cannot encode {rate} Hz audio; resample to one of {', '.join(map(str, AAC_RATES))}")
    wave = _audio_array(audio)
    out = Path(out_path)
    fmt = MUX_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise V2AInputError(f"cannot mux into {out.name!r}: use one of {', '.join(MUX_FORMATS)}")
    _check_output(out, overwrite)
    info = probe_video(video_path)
    samples = max(1, round(info.duration * rate))
    wave = wave[:, :samples] if wave.shape[1] >= samples else np.pad(wave, ((0, 0), (0, samples - wave.shape[1])))
    with atomic_output(out, overwrite) as tmp:
        try:
            codec, copied = _mux_once(info.path, tmp, wave, rate, fmt, copy=True), True
        except (av.error.FFmpegError, ValueError) as copy_error:
            if isinstance(copy_error, V2AInputError):
                raise
            try:
                codec, copied = _mux_once(info.path, tmp, wave, rate, fmt, copy=False), False
            except av.error.FFmpegError as e:
                raise V2AInputError(f"cannot write {out}: {e.strerror}") from None
    if not copied:
        warnings.warn(
            ReencodeWarning(f"{out}: {out.suffix} cannot hold {info.codec} video, so the video was re-encoded to "
                            f"{codec} (a container that holds {info.codec}, e.g. .mkv, keeps it as is)"),
            stacklevel=2,
        )  # fmt: skip
    return MuxInfo(out, info.duration, copied, codec, "aac", samples)
