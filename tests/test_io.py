"""Video/audio I/O: probing, timestamp-based frame sampling, atomic writes, muxing and error reporting."""

from __future__ import annotations

import math
import os
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from media import SR, WRITTEN, decode_index, frame_colour, make_bad_inputs, make_video  # noqa: E402

from v2a_sampler.media import io
from v2a_sampler.media.io import V2AInputError

#: Samples per AAC frame: the most encoder padding a container without stream durations can leave.
AAC_FRAME = 1024


def make_video_with_audio(path: Path, rate: Fraction | int, n: int, audio_hz: float) -> Path:
    """A test video with an AAC sine track of the video's duration."""
    height, width = 48, 64
    with av.open(str(path), "w") as out:
        v = out.add_stream(io.pick_video_encoder(width, height)[0], rate=rate)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        t = np.arange(round(n / float(rate) * SR)) / SR
        tone = (0.3 * np.sin(2 * np.pi * audio_hz * t))[None].astype(np.float32)
        audio = io.encode_audio_packets(out, tone, SR, "aac", 0.0)

        def video():
            for i in range(n):
                frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), frame_colour(i), np.uint8), "rgb24")
                yield from v.encode(frame)
            yield from v.encode(None)

        io.mux_interleaved(out, video(), audio)
    return path


def expected_indices(frame_times: list[Fraction], targets: list[Fraction]) -> list[int]:
    """The sampling rule, in exact arithmetic: latest frame with time <= target + 1 ms, else the first frame."""
    slack = Fraction(1, 1000)
    assert float(slack) == io.TIME_EPS
    out = []
    for t in targets:
        shown = [i for i, ft in enumerate(frame_times) if ft <= t + slack]
        out.append(shown[-1] if shown else 0)
    return out


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part"))


def dominant_hz(audio: torch.Tensor, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio.numpy()))
    return float(np.fft.rfftfreq(audio.shape[-1], 1.0 / sample_rate)[np.argmax(spectrum)])


# ---------------------------------------------------------------------------------------------------------------
# Probing and frame sampling
# ---------------------------------------------------------------------------------------------------------------

NTSC = Fraction(30000, 1001)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    return {
        "ntsc": make_video(d / "ntsc.mp4", NTSC, 90),  # 3.003 s at 29.97 fps
        "two": make_video(d / "two.mp4", 2, 7),  # 3.5 s at 2 fps
        "odd": make_video(d / "odd.mp4", 24, 20, size=(63, 97)),
        "vfr": make_video(d / "vfr.mp4", 24, 8, pts_ms=[0, 100, 150, 400, 410, 900, 1500, 1600]),
        "with_audio": make_video_with_audio(d / "with_audio.mp4", 24, 48, 440.0),
    }


def test_probe_reports_duration_rate_size_frames(videos):
    info = io.probe_video(videos["ntsc"])
    assert info.num_frames == 90
    assert info.duration == pytest.approx(90 * 1001 / 30000, abs=1e-6)
    assert info.fps == pytest.approx(29.97, abs=0.001)
    assert (info.width, info.height, info.has_audio, info.codec) == (64, 48, False, WRITTEN)
    odd = io.probe_video(videos["odd"])
    assert (odd.width, odd.height, odd.num_frames) == (97, 63, 20)
    assert io.probe_video(videos["vfr"]).duration == pytest.approx(1.7, abs=1e-6)
    assert io.probe_video(videos["with_audio"]).has_audio


@pytest.mark.parametrize(
    ("name", "fps"),
    [("ntsc", 8.0), ("ntsc", 29.97), ("ntsc", 25.0), ("two", 8.0), ("two", 2.0), ("two", 0.7), ("vfr", 10.0)],
)
def test_read_frames_count_and_timestamp_rule(videos, name, fps):
    info = io.probe_video(videos[name])
    frames = io.read_frames(videos[name], fps)
    count = math.floor(info.duration * fps + 0.5)
    assert frames.shape == (count, info.height, info.width, 3) and frames.dtype == torch.uint8
    if name == "vfr":
        frame_times = [Fraction(ms, 1000) for ms in (0, 100, 150, 400, 410, 900, 1500, 1600)]
    else:
        period = 1 / (NTSC if name == "ntsc" else Fraction(2))
        frame_times = [i * period for i in range(info.num_frames)]
    fps_exact = Fraction(fps).limit_denominator(1000)
    assert decode_index(frames) == expected_indices(frame_times, [k / fps_exact for k in range(count)])


def test_read_frames_window_and_counts(videos):
    frames = io.read_frames(videos["ntsc"], 8.0, start=1.0, duration=1.0)
    assert frames.shape[0] == 8
    frame_times = [i / NTSC for i in range(90)]
    targets = [1 + Fraction(k, 8) for k in range(8)]
    assert decode_index(frames) == expected_indices(frame_times, targets)
    # half a period rounds up: 1.0625 s at 8 fps is 8.5 frames -> 9
    assert io.read_frames(videos["ntsc"], 8.0, duration=1.0625).shape[0] == 9
    assert io.num_target_frames(1.0625, 8.0) == 9 and io.num_target_frames(1.06, 8.0) == 8


@pytest.mark.parametrize(("size", "shape"), [((31, 17), (31, 17)), (33, (33, 33)), (None, (63, 97))])
def test_read_frames_resizes_odd_sizes(videos, size, shape):
    frames = io.read_frames(videos["odd"], 10.0, size=size)
    assert frames.shape == (math.floor(20 / 24 * 10 + 0.5), *shape, 3)
    targets = [Fraction(k, 10) for k in range(frames.shape[0])]
    assert decode_index(frames) == expected_indices([Fraction(i, 24) for i in range(20)], targets)


def test_read_frames_rejects_bad_windows(videos):
    with pytest.raises(V2AInputError, match="past the end"):
        io.read_frames(videos["two"], 2.0, start=1.0, duration=3.0)
    with pytest.raises(V2AInputError, match="outside the video"):
        io.read_frames(videos["two"], 2.0, start=3.5)
    with pytest.raises(V2AInputError, match="outside the video"):
        io.read_frames(videos["two"], 2.0, start=-0.5)
    with pytest.raises(V2AInputError, match="fps"):
        io.read_frames(videos["two"], 0.0)
    with pytest.raises(V2AInputError, match="no frame"):
        io.read_frames(videos["two"], 2.0, duration=0.2)
    with pytest.raises(V2AInputError, match="size"):
        io.read_frames(videos["two"], 2.0, size=(0, 4))


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict[str, Path]:
    return make_bad_inputs(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("missing", "not found"),
        ("dir", "not a regular file"),
        ("empty", "empty"),
        ("notes", "not a media file"),
        ("sound", "no video stream"),
        ("noframes", "no frames"),
        ("unknown_codec", "codec not supported"),
    ],
)
def test_bad_inputs_raise_one_clear_error(bad_inputs, key, message):
    path = bad_inputs["dir"] / "missing.mp4" if key == "missing" else bad_inputs[key]
    for call in (io.probe_video, lambda p: io.read_frames(p, 8.0)):
        with pytest.raises(V2AInputError, match=message) as caught:
            call(path)
        assert "\n" not in str(caught.value)
    assert issubclass(V2AInputError, ValueError)


def test_read_audio_errors(bad_inputs, videos):
    with pytest.raises(V2AInputError, match="no audio stream"):
        io.read_audio(videos["two"])
    with pytest.raises(V2AInputError, match="not a media file"):
        io.read_audio(bad_inputs["notes"])
    with pytest.raises(V2AInputError, match="not found"):
        io.read_audio(bad_inputs["dir"] / "nothing.wav")


# ---------------------------------------------------------------------------------------------------------------
# Audio reading and atomic WAV writing
# ---------------------------------------------------------------------------------------------------------------


def test_write_wav_roundtrip_and_read_audio(tmp_path):
    t = torch.arange(SR) / SR
    tone = 0.5 * torch.sin(2 * math.pi * 440.0 * t)
    path = io.write_wav(tmp_path / "tone.wav", tone, SR)
    data, rate = sf.read(str(path), dtype="float32")
    assert rate == SR and data.shape == (SR,)
    assert np.abs(data - tone.numpy()).max() <= 1.0 / 32768 + 1e-7  # 16-bit quantisation only
    back, rate = io.read_audio(path)
    assert rate == SR and torch.allclose(back, torch.from_numpy(data))
    half, rate = io.read_audio(path, sample_rate=SR // 2)
    assert rate == SR // 2 and abs(half.shape[0] - SR // 2) <= 1
    assert dominant_hz(half, rate) == pytest.approx(440.0, abs=2.0)
    stereo = io.write_wav(tmp_path / "stereo.wav", torch.stack([tone, -tone]), SR, subtype="FLOAT")
    both, _ = io.read_audio(stereo, mono=False)
    assert both.shape == (2, SR) and torch.allclose(both[1], -tone, atol=1e-7)
    assert io.read_audio(stereo)[0].abs().max() < 1e-6  # mono is the channel mean


def test_write_wav_refuses_to_overwrite(tmp_path):
    path = tmp_path / "a.wav"
    io.write_wav(path, np.full(100, 0.25, np.float32), SR)
    before = path.read_bytes()
    with pytest.raises(V2AInputError, match="output exists"):
        io.write_wav(path, np.full(100, -0.5, np.float32), SR)
    assert path.read_bytes() == before
    io.write_wav(path, np.full(100, -0.5, np.float32), SR, overwrite=True)
    assert sf.read(str(path))[0][0] == pytest.approx(-0.5, abs=1e-4)
    assert leftovers(tmp_path) == []


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken_write(file, data, samplerate, **kwargs):
        Path(file).write_bytes(b"RIFF partial")  # half-written output, then the failure
        raise OSError("disk full")

    monkeypatch.setattr(io.sf, "write", broken_write)
    path = tmp_path / "b.wav"
    with pytest.raises(OSError, match="disk full"):
        io.write_wav(path, np.zeros(100, np.float32), SR)
    assert not path.exists() and leftovers(tmp_path) == []
    monkeypatch.undo()
    io.write_wav(path, np.full(100, 0.25, np.float32), SR)
    before = path.read_bytes()
    monkeypatch.setattr(io.sf, "write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        io.write_wav(path, np.zeros(100, np.float32), SR, overwrite=True)
    assert path.read_bytes() == before and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("audio", "rate", "message"),
    [
        (np.zeros(0, np.float32), SR, "empty"),
        (np.array([0.0, np.nan], np.float32), SR, "NaN"),
        (np.zeros((3, 10), np.float32), SR, "channels"),
        (np.zeros(10, np.float32), 0, "sample_rate"),
    ],
)
def test_write_wav_rejects_bad_audio(tmp_path, audio, rate, message):
    with pytest.raises(V2AInputError, match=message):
        io.write_wav(tmp_path / "c.wav", audio, rate)
    with pytest.raises(V2AInputError, match="subtype"):
        io.write_wav(tmp_path / "c.wav", np.zeros(10, np.float32), SR, subtype="VORBIS")
    assert list(tmp_path.iterdir()) == []


def test_no_overwrite_holds_even_if_the_output_appears_during_the_write(tmp_path):
    path = tmp_path / "late.wav"
    with pytest.raises(V2AInputError, match="output exists"):
        with io.atomic_output(path) as tmp:
            tmp.write_bytes(b"new")
            path.write_bytes(b"someone else's")  # appears between the check and the final move
    assert path.read_bytes() == b"someone else's" and leftovers(tmp_path) == []


def test_write_wav_rejects_bad_paths(tmp_path):
    with pytest.raises(V2AInputError, match="directory does not exist"):
        io.write_wav(tmp_path / "no" / "d.wav", np.zeros(10, np.float32), SR)
    with pytest.raises(V2AInputError, match="is a directory"):
        io.write_wav(tmp_path, np.zeros(10, np.float32), SR)


# ---------------------------------------------------------------------------------------------------------------
# Muxing
# ---------------------------------------------------------------------------------------------------------------


def test_mux_copies_video_and_fits_audio_to_it(videos, tmp_path):
    src = io.probe_video(videos["ntsc"])
    t = np.arange(SR) / SR  # 1 s of audio for a 3 s video: padded
    result = io.mux(videos["ntsc"], 0.5 * np.sin(2 * np.pi * 1000.0 * t), SR, tmp_path / "out.mp4")
    assert result.video_copied and result.video_codec == WRITTEN
    out = io.probe_video(tmp_path / "out.mp4")
    assert out.has_audio and out.num_frames == src.num_frames
    assert out.duration == pytest.approx(src.duration, abs=1e-3)
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert c.duration / av.time_base == pytest.approx(src.duration, abs=0.1)
        assert c.streams.audio[0].codec_context.name == "aac"
        copied = [bytes(p) for p in c.demux(c.streams.video[0]) if p.size]
    with av.open(str(videos["ntsc"])) as c:
        original = [bytes(p) for p in c.demux(c.streams.video[0]) if p.size]
    assert copied == original  # bit-exact stream copy
    audio, rate = io.read_audio(tmp_path / "out.mp4")
    assert abs(audio.shape[0] / rate - src.duration) < 0.01
    assert dominant_hz(audio[: SR - 2048], rate) == pytest.approx(1000.0, abs=2.0)
    assert audio[SR + 2048 :].abs().max() < 0.01  # the padding is silent
    assert leftovers(tmp_path) == []


def test_mux_replaces_existing_audio_and_trims(videos, tmp_path):
    src = io.probe_video(videos["with_audio"])
    t = np.arange(5 * SR) / SR  # 5 s for a 2 s video: trimmed
    stereo = np.stack([np.sin(2 * np.pi * 1500.0 * t), np.sin(2 * np.pi * 1500.0 * t)]) * 0.4
    io.mux(videos["with_audio"], torch.from_numpy(stereo), SR, tmp_path / "out.mkv")
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert len(c.streams.audio) == 1 and c.streams.audio[0].channels == 2
    audio, rate = io.read_audio(tmp_path / "out.mkv")
    assert 0 <= audio.shape[0] - round(src.duration * rate) <= AAC_FRAME  # Matroska keeps the AAC end padding
    assert dominant_hz(audio, rate) == pytest.approx(1500.0, abs=2.0)  # the source's 440 Hz is gone


def test_mux_reencodes_when_copy_is_impossible(tmp_path):
    # ProRes can live in Matroska but not in MP4
    src = make_video(tmp_path / "prores.mkv", 24, 12, codec="prores_ks", pix_fmt="yuv422p10le", fmt="matroska")
    # Matroska rounds timestamps to 1 ms (frame 1 at 42 ms, not 41.67): still read on time
    assert decode_index(io.read_frames(src, 24.0)) == list(range(12))
    encoder = io.pick_video_encoder(64, 48)[0]
    with pytest.warns(io.ReencodeWarning, match=f"out.mp4: .mp4 cannot hold prores video, so the video was "
                      f"re-encoded to {encoder}"):  # fmt: skip
        result = io.mux(src, np.zeros(SR, np.float32), SR, tmp_path / "out.mp4")
    assert not result.video_copied and result.video_codec == encoder
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a container that holds the codec copies it, silently
        assert io.mux(src, np.zeros(SR, np.float32), SR, tmp_path / "out.mkv").video_copied
    out = io.probe_video(tmp_path / "out.mp4")
    assert out.num_frames == 12 and out.has_audio
    assert decode_index(io.read_frames(tmp_path / "out.mp4", 24.0)) == list(range(12))


def test_video_encoder_falls_back_without_libx264(monkeypatch, tmp_path):
    if "libx264" in av.codecs_available:
        assert io.pick_video_encoder(64, 48) == ("libx264", "yuv420p")
        assert io.pick_video_encoder(63, 48) == ("libx264", "yuv444p")  # x264's 4:2:0 needs even sizes
    monkeypatch.setattr(io.av, "codecs_available", frozenset(av.codecs_available) - {"libx264"})
    assert io.pick_video_encoder(63, 48) == ("mpeg4", "yuv420p")
    src = make_video(tmp_path / "prores.mkv", 24, 6, codec="prores_ks", pix_fmt="yuv422p10le", fmt="matroska")
    with pytest.warns(io.ReencodeWarning, match="re-encoded to mpeg4"):
        result = io.mux(src, np.zeros(SR, np.float32), SR, tmp_path / "out.mp4")
    assert (result.video_copied, result.video_codec) == (False, "mpeg4")
    assert io.probe_video(tmp_path / "out.mp4").codec == "mpeg4"


def test_mux_refuses_and_is_atomic(videos, tmp_path, monkeypatch):
    out = tmp_path / "out.mp4"
    io.mux(videos["two"], np.zeros(SR, np.float32), SR, out)
    before = out.read_bytes()
    with pytest.raises(V2AInputError, match="output exists"):
        io.mux(videos["two"], np.ones(SR, np.float32) * 0.1, SR, out)
    with pytest.raises(V2AInputError, match="AAC cannot encode"):
        io.mux(videos["two"], np.zeros(SR, np.float32), 15000, tmp_path / "x.mp4")
    with pytest.raises(V2AInputError, match="cannot mux into"):
        io.mux(videos["two"], np.zeros(SR, np.float32), SR, tmp_path / "out.avi")
    with pytest.raises(V2AInputError, match="not found"):
        io.mux(tmp_path / "none.mp4", np.zeros(SR, np.float32), SR, tmp_path / "x.mp4")

    def broken(*args, **kwargs):
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(io, "encode_audio_packets", broken)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        io.mux(videos["two"], np.zeros(SR, np.float32), SR, out, overwrite=True)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        io.mux(videos["two"], np.zeros(SR, np.float32), SR, tmp_path / "new.mp4")
    assert out.read_bytes() == before and not (tmp_path / "new.mp4").exists()
    assert leftovers(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["out.mp4"]


def test_iter_frames_yields_every_frame_with_its_time(tmp_path):
    path = make_video(tmp_path / "vfr.mp4", 1000, 5, pts_ms=[0, 40, 120, 130, 300])
    seen = [(i, round(t, 3), f.width) for i, t, f in io.iter_frames(path)]
    assert seen == [(0, 0.0, 64), (1, 0.04, 64), (2, 0.12, 64), (3, 0.13, 64), (4, 0.3, 64)]
    with pytest.raises(io.V2AInputError, match="video not found"):
        next(io.iter_frames(tmp_path / "missing.mp4"))


def test_partial_video_is_detected_with_its_numbers(tmp_path):
    """The first half of a faststart MP4 opens with the whole video's metadata but decodes only its first part:
    every reader says so (a warning with the numbers; an error when strict), and a window inside the readable part
    is fine."""
    from v2a_sampler.mmaudio.frames import read_video

    full = make_video(tmp_path / "full.mp4", 24, 96, container_options=io.FASTSTART)  # 4 s, index in front
    data = full.read_bytes()
    media = data.find(b"mdat")
    half = tmp_path / "half.mp4"
    half.write_bytes(data[: media + (len(data) - media) // 2])  # the index and about half of the frames
    info = io.probe_video(half)
    assert (info.num_frames, info.duration) == (96, 4.0)  # the container still promises all of it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # complete files and windows inside the readable part: silent
        assert io.read_frames(full, 24.0).shape[0] == 96 and len(list(io.iter_frames(full))) == 96
        io.probe_video(full, scan=True)
        assert decode_index(io.read_frames(half, 24.0, duration=0.5)) == list(range(12))
    pattern = r"half.mp4 is partial: its frames end at (\d+\.\d+) s of 4.000 s \((\d+) of 96 frames readable"
    with pytest.warns(io.PartialVideoWarning, match=pattern) as caught:
        frames = io.read_frames(half, 24.0)
    import re

    end, readable = re.search(pattern, str(caught[0].message)).groups()
    end, readable = float(end), int(readable)
    assert 0.5 < end < 3.5 and abs(readable - end * 24) <= 1
    index = decode_index(frames)
    assert len(index) == 96 and index[: int(end * 24) - 1] == list(range(int(end * 24) - 1))
    assert set(index[round(end * 24) :]) == {index[-1]}  # the rest repeats the last decodable frame
    with pytest.raises(V2AInputError, match=pattern):
        io.read_frames(half, 24.0, strict=True)
    with pytest.warns(io.PartialVideoWarning, match=pattern):
        assert len(list(io.iter_frames(half))) == readable
    with pytest.raises(V2AInputError, match=pattern):
        list(io.iter_frames(half, strict=True))
    with pytest.warns(io.PartialVideoWarning, match=r"half.mp4 is partial: its packets end at"):
        io.probe_video(half, scan=True)
    with pytest.raises(V2AInputError, match="is partial: its packets end at"):
        io.probe_video(half, scan=True, strict=True)
    with pytest.raises(V2AInputError, match=pattern):  # MMAudio's reader (it would cut the audio short)
        read_video(half, 8.0, strict=True)
