"""Video frames for MMAudio's conditions, read as the official reader reads them.

What the official demo does (hkchengrex/MMAudio ``mmaudio/data/av_utils.py`` ``read_frames`` and
``mmaudio/eval_utils.py`` ``load_video``), and :func:`read_video` reproduces:

* **selection by timestamp**: the frames whose presentation time lies in ``[0, duration]`` are decoded in order;
  for each target rate (8 fps for CLIP, 25 fps for Synchformer) a running target time starts at 0 and, while the
  current frame's time is at or past it, the frame is taken and the target advances by ``1 / fps`` (accumulated in
  floating point, as official). So target ``k`` gets the first frame shown at or after ``k / fps`` (frames repeat
  at low source rates and are skipped at high ones; see :func:`select_frames`);
* **duration truncation**: when either stream yields less than ``duration`` seconds of frames (``n / fps``), the
  duration shrinks to it; then ``int(8 * duration)`` CLIP frames and ``int(25 * duration)`` Synchformer frames are
  kept (:func:`truncated_duration`). Downstream lengths follow ``network.sequence_lengths(duration)``;
* **CLIP frames**: squashed to 384 x 384 (bicubic, antialiased), ``[0, 1]`` (:func:`clip_transform`);
* **Synchformer frames**: short side resized to 224 (bicubic, antialiased), centre-cropped to 224 x 224, mapped to
  ``[-1, 1]`` (:func:`sync_transform`).

The resizing is torchvision's ``v2.Resize`` on uint8 tensors (what the official transforms run), done with
``torch.nn.functional.interpolate`` directly: torchvision is not needed. Times are measured from the start of the
video stream (PyAV's ``frame.time`` minus the stream's start time), as everywhere in :mod:`v2a_sampler.media.io`; this
equals the official ``frame.time`` for streams that start at 0 (the usual MP4/MOV/MKV case). Opening, probing and
error reporting are :mod:`v2a_sampler.media.io`'s; failures raise :class:`~v2a_sampler.media.io.V2AInputError`
(one line).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..media import io
from .clip import CLIP_FPS, CLIP_SIZE
from .network import sequence_lengths
from .synchformer import SEGMENT_FRAMES, SYNC_FPS, SYNC_SIZE, normalize

#: Seconds of video the official demo reads by default.
DEFAULT_DURATION = 8.0
#: Largest uint8 pixel level (pixels scale to ``[0, 1]`` by its reciprocal).
PIXEL_MAX = 255


@dataclass(frozen=True)
class MMAudioFrames:
    """One video's frames for MMAudio (see :func:`read_video`)."""

    clip: torch.Tensor  # [Tc, 3, 384, 384] float32 in [0, 1], Tc = int(8 * duration)
    sync: torch.Tensor  # [Ts, 3, 224, 224] float32 in [-1, 1], Ts = int(25 * duration)
    duration: float  # seconds: the requested duration, truncated to what the video holds (official rule)
    source_fps: float  # the video's average frame rate
    clip_indices: tuple[int, ...]  # decoded-frame index of each CLIP frame
    sync_indices: tuple[int, ...]  # decoded-frame index of each Synchformer frame

    def __len__(self) -> int:
        """Number of Synchformer (25 fps) frames."""
        return self.sync.shape[0]

    def sequence_lengths(self, sampling_rate: int = 44100, spectrogram_frame_rate: int = 512) -> dict[str, int]:
        """``{"latent", "clip", "sync"}`` lengths of the network's inputs for this clip's duration."""
        return sequence_lengths(self.duration, sampling_rate, spectrogram_frame_rate)


# ---------------------------------------------------------------------------------------------------------------
# The official rules, on numbers
# ---------------------------------------------------------------------------------------------------------------


def select_frames(times: Iterable[float], fps: float, end: float) -> list[int]:
    """Indices of the frames (presentation times ``times``, ascending) the official reader takes at ``fps``.

    Frames before 0 are skipped and reading stops at the first frame after ``end``; a frame is taken once for
    every target time ``0, 1/fps, 2/fps, ...`` (accumulated in floating point) that it reaches and the previous
    frames did not.
    """
    step, target, out = 1 / fps, 0.0, []
    for i, t in enumerate(times):
        if t < 0:
            continue
        if t > end:
            break
        while t >= target:
            out.append(i)
            target += step
    return out


def truncated_duration(duration: float, num_clip: int, num_sync: int) -> float:
    """The duration the official reader settles on: ``duration``, shortened to what each stream holds."""
    if num_clip / CLIP_FPS < duration:
        duration = num_clip / CLIP_FPS
    if num_sync / SYNC_FPS < duration:
        duration = num_sync / SYNC_FPS
    return duration


# ---------------------------------------------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------------------------------------------


def resize_bicubic(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` -> uint8 ``[N, 3, h, w]``: antialiased bicubic resize (torchvision's uint8 result)."""
    if frames.dtype != torch.uint8 or frames.ndim != 4:
        raise ValueError(f"expected uint8 frames [N, C, H, W], got {frames.dtype} {list(frames.shape)}")
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    if frames.device.type == "cpu":  # native uint8 kernel (what torchvision uses on CPU)
        return F.interpolate(frames, size=size, mode="bicubic", align_corners=False, antialias=True)
    out = F.interpolate(frames.float(), size=size, mode="bicubic", align_corners=False, antialias=True)
    return out.clamp_(0, PIXEL_MAX).round_().to(torch.uint8)


def short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """``(h, w)`` with the short side ``short`` and the long side ``int(short * long / short_side)`` (torchvision)."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def center_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` window of ``[..., H, W]`` (offsets rounded as torchvision rounds them)."""
    h, w = frames.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot crop {size} x {size} from {h} x {w}")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return frames[..., top : top + size, left : left + size]


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in ``[0, 1]``."""
    return frames.to(torch.float32).mul_(1.0 / PIXEL_MAX)


def clip_resize(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` -> uint8 ``[N, 3, 384, 384]`` (squashed, aspect ratio not kept)."""
    return resize_bicubic(frames, (CLIP_SIZE, CLIP_SIZE))


def sync_resize(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` -> uint8 ``[N, 3, 224, 224]`` (short side to 224, centre crop)."""
    return center_crop(resize_bicubic(frames, short_side_size(*frames.shape[-2:], SYNC_SIZE)), SYNC_SIZE)


def clip_transform(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` -> CLIP frames float32 ``[N, 3, 384, 384]`` in ``[0, 1]``."""
    return to_unit(clip_resize(frames))


def sync_transform(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` -> Synchformer frames float32 ``[N, 3, 224, 224]`` in ``[-1, 1]``."""
    return normalize(to_unit(sync_resize(frames)))


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------


def read_video(path: str | os.PathLike, duration: float = DEFAULT_DURATION, strict: bool = False) -> MMAudioFrames:
    """CLIP and Synchformer frames of the first ``duration`` seconds of a video, as the official demo reads them.

    Raises :class:`~v2a_sampler.media.io.V2AInputError` for unreadable files, and when the video holds less than one
    Synchformer window (16 frames at 25 fps, 0.64 s). A partial video (frames end well before the container's
    duration) gives a :class:`~v2a_sampler.media.io.PartialVideoWarning`, with ``strict`` an error.
    """
    if not (isinstance(duration, int | float) and math.isfinite(duration) and duration > 0):
        raise io.V2AInputError(f"duration must be a positive number of seconds, got {duration!r}")
    p = Path(path)
    rates = (CLIP_FPS, SYNC_FPS)
    resizers = (clip_resize, sync_resize)
    kept: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
    indices: tuple[list[int], list[int]] = ([], [])
    targets = [0.0, 0.0]
    frames = io.iter_frames(p, strict=strict)
    try:
        for index, t, frame in frames:
            if t < 0:
                continue
            if t > duration:
                break
            pixels = None
            for r, fps in enumerate(rates):
                resized = None
                while t >= targets[r]:
                    if resized is None:
                        if pixels is None:
                            pixels = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)[None]
                        resized = resizers[r](pixels)[0]
                    kept[r].append(resized)
                    indices[r].append(index)
                    targets[r] += 1 / fps
    finally:
        frames.close()
    source_fps = io.probe_video(p).fps
    if not kept[1]:
        raise io.V2AInputError(f"no frames in the first {duration:g} s of {p}")
    final = truncated_duration(duration, len(kept[0]), len(kept[1]))
    n_clip, n_sync = int(CLIP_FPS * final), int(SYNC_FPS * final)
    if n_sync < SEGMENT_FRAMES:
        raise io.V2AInputError(
            f"{p} gives {final:.2f} s of video ({n_sync} frames at {SYNC_FPS:g} fps); MMAudio's Synchformer needs at "
            f"least {SEGMENT_FRAMES} ({SEGMENT_FRAMES / SYNC_FPS:.2f} s)"
        )
    return MMAudioFrames(
        clip=to_unit(torch.stack(kept[0][:n_clip])),
        sync=normalize(to_unit(torch.stack(kept[1][:n_sync]))),
        duration=final,
        source_fps=source_fps,
        clip_indices=tuple(indices[0][:n_clip]),
        sync_indices=tuple(indices[1][:n_sync]),
    )


def stack(videos: Sequence[MMAudioFrames]) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``(clip [B, Tc, 3, 384, 384], sync [B, Ts, 3, 224, 224])`` of videos of equal frame counts."""
    if not videos:
        raise ValueError("no videos to stack")
    shapes = {(v.clip.shape[0], v.sync.shape[0]) for v in videos}
    if len(shapes) > 1:
        raise ValueError(f"videos of different lengths cannot share a batch: (clip, sync) frames {sorted(shapes)}")
    return torch.stack([v.clip for v in videos]), torch.stack([v.sync for v in videos])
