"""Test media made on the fly: coded test videos and a folder of bad inputs (shared by I/O and CLI tests)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import torch

from v2a_sampler.media import io

SR = 16000
#: Decoder name of what the library writes: H.264 where PyAV's FFmpeg has libx264, else MPEG-4 Part 2.
WRITTEN = "h264" if "libx264" in av.codecs_available else "mpeg4"
#: Frame i of a test video is a flat colour coding i: R = BASE + STEP * (i % LEVELS), G = BASE + STEP * (i // LEVELS).
BASE, STEP, LEVELS = 12, 8, 28


def frame_colour(i: int) -> tuple[int, int, int]:
    return BASE + STEP * (i % LEVELS), BASE + STEP * (i // LEVELS), 128


def decode_index(frames: torch.Tensor) -> list[int]:
    """Frame indices coded by frame_colour, read from the mean colour (robust to compression and resizing)."""
    mean = frames.double().mean(dim=(1, 2))
    r = torch.round((mean[:, 0] - BASE) / STEP).long()
    g = torch.round((mean[:, 1] - BASE) / STEP).long()
    return (g * LEVELS + r).tolist()


def make_video(
    path: Path,
    rate: Fraction | int,
    n: int,
    size: tuple[int, int] = (48, 64),
    codec: str | None = None,
    pix_fmt: str | None = None,
    pts_ms: list[int] | None = None,
    fmt: str | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """A test video of n flat frames coding their index; VFR when pts_ms is given (then without B-frames)."""
    height, width = size
    if codec is None:  # H.264 where this FFmpeg build has it, as the library writes
        codec, pix_fmt = io.pick_video_encoder(width, height)
    with av.open(str(path), "w", format=fmt, container_options=container_options or {}) as out:
        options = {"bf": "0"} if pts_ms is not None else {}  # no B-frames: MP4 durations follow decode order
        v = out.add_stream(codec, rate=rate, options=options)
        v.width, v.height, v.pix_fmt = width, height, pix_fmt
        ends = None
        if pts_ms is not None:
            v.codec_context.time_base = Fraction(1, 1000)
            ends = dict(zip(pts_ms, [*pts_ms[1:], pts_ms[-1] + 100], strict=True))

        def put(packets):
            for p in packets:
                if ends is not None:
                    p.duration = ends[p.pts] - p.pts
                out.mux(p)

        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), frame_colour(i), np.uint8), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            put(v.encode(frame))
        put(v.encode(None))
    return path


def make_bad_inputs(d: Path) -> dict[str, Path]:
    """Files every reader must reject with one clear error: empty, text, audio-only, no frames, unknown codec."""
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.mp4").write_text("this is not a video\n" * 20)
    sf.write(str(d / "sound.wav"), np.zeros(1600, np.float32), SR)
    # a Matroska file with a video track but no frames
    with av.open(str(d / "noframes.mkv"), "w") as out:
        v = out.add_stream(io.pick_video_encoder(64, 48)[0], rate=24)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        for p in io.encode_audio_packets(out, np.zeros((1, SR), np.float32), SR, "aac", 0.0):
            out.mux(p)
    # a Matroska file whose codec id no FFmpeg decoder knows (same length, so the file stays valid)
    make_video(d / "good.mkv", 24, 5, fmt="matroska")
    data = (d / "good.mkv").read_bytes()
    codec_id = b"V_MPEG4/ISO/AVC" if b"V_MPEG4/ISO/AVC" in data else b"V_MPEG4/ISO/ASP"  # H.264 or MPEG-4 Part 2
    assert data.count(codec_id) == 1
    (d / "unknown_codec.mkv").write_bytes(data.replace(codec_id, b"V_XYZZY" + codec_id[7:]))
    return {"dir": d, **{p.stem: p for p in d.iterdir()}}
