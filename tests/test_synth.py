"""The synthetic audio-visual world: determinism, audio/video alignment with events, timbres, MP4 and datasets."""

from __future__ import annotations

import dataclasses
import json
import math
import time

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from v2a_sampler import synth
from v2a_sampler.media import audio as A
from v2a_sampler.media import io
from v2a_sampler.synth import world

SR = 16000
#: Onset detector: log-energy contrast between the ONSET_WIN seconds after and before each candidate time, scanned
#: every ONSET_HOP seconds within ONSET_SEARCH of the event.
ONSET_WIN, ONSET_HOP, ONSET_SEARCH = 0.010, 0.0005, 0.05
#: An event's onset is "detectable" when its own first 20 ms carry 4x (6 dB) the mixture's energy of the 20 ms
#: before it and no other audible event starts within ONSET_SEARCH + ONSET_WIN of it.
DETECT_WIN, DETECT_RATIO = 0.020, 4.0
#: Required alignment of detected onsets with event times (the brief's +-20 ms).
ONSET_TOLERANCE = 0.020
SEEDS = range(8)
#: Samples of each class sound used by the timbre classifier test (0.3 s).
CLASSIFY_LEN = int(0.3 * SR)


@pytest.fixture(scope="module")
def clips() -> list[synth.Clip]:
    return [synth.make_clip(seed) for seed in SEEDS]


def test_same_seed_same_clip_different_seed_different_clip():
    a, b, c = synth.make_clip(11, duration=2.0), synth.make_clip(11, duration=2.0), synth.make_clip(12, duration=2.0)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio) and a.events == b.events
    assert a.metadata() == b.metadata()
    assert not np.array_equal(a.audio, c.audio) and not np.array_equal(a.frames, c.frames)


def test_clip_shapes_ranges_and_events(clips):
    for clip in clips:
        assert clip.frames.shape == (120, 96, 96, 3) and clip.frames.dtype == np.uint8
        assert clip.audio.shape == (5 * SR,) and clip.audio.dtype == np.float32
        assert np.isfinite(clip.audio).all() and np.abs(clip.audio).max() <= world.PEAK_LIMIT + 1e-6
        times = [e.time for e in clip.events]
        assert times == sorted(times) and all(0.0 <= t < clip.duration for t in times)
        for e in clip.events:
            assert world.CLASSES[e.class_id].name == e.class_name and world.CLASSES[e.class_id].timbre is not None
            assert e.audible == (e.gain > 0) and e.visible == (e.object_id >= 0)
            if e.visible:
                assert 0.0 <= e.x <= 1.0 and 0.0 <= e.y <= 1.0
    odd = synth.make_clip(3, duration=1.3, fps=29.97, size=(45, 77), sample_rate=22050)
    assert odd.frames.shape == (math.floor(1.3 * 29.97 + 0.5), 45, 77, 3) and odd.audio.shape == (round(1.3 * 22050),)
    assert json.loads(json.dumps(odd.metadata(), allow_nan=False))["num_frames"] == odd.frames.shape[0]


def test_world_has_classes_and_ambiguity(clips):
    sounding = [c for c in synth.CLASSES if c.timbre is not None]
    assert len(sounding) >= 4 and len({c.timbre for c in sounding}) == len(sounding)
    assert len({(c.shape, c.colour) for c in synth.CLASSES}) == len(synth.CLASSES)  # visually distinct
    events = [e for c in clips for e in c.events]
    assert {e.class_name for e in events} == {c.name for c in sounding}
    assert any(not e.audible for e in events) and any(not e.visible for e in events)
    assert any(o.class_name == "ghost" for c in clips for o in c.objects)
    assert {e.kind for e in events} >= {"floor", "wall", "flash", "offscreen"}
    levels = [c.background["noise_db"] for c in clips]
    assert max(levels) - min(levels) > 5.0  # background level varies
    clean = [synth.make_clip(seed, config=synth.WorldConfig.clean()) for seed in SEEDS]
    assert all(e.audible and e.visible for c in clean for e in c.events)
    assert not any(o.class_name == "ghost" for c in clean for o in c.objects)


def _placed(clip: synth.Clip) -> np.ndarray:
    mix = np.zeros_like(clip.audio)
    for e in clip.events:
        sound = synth.event_sound(e, clip.sample_rate)
        start = round(e.time * clip.sample_rate)
        stop = min(len(mix), start + len(sound))
        mix[start:stop] += sound[: stop - start]
    return mix


def test_audio_is_event_sounds_at_event_times_plus_background(clips):
    for seed in SEEDS:
        clip = synth.make_clip(seed, config=synth.WorldConfig.clean())
        residual = clip.audio - _placed(clip)
        assert np.sqrt(np.mean(clip.audio**2)) > 1e-2
        assert np.sqrt(np.mean(residual**2)) < 1e-4  # only the -90 dBFS floor remains
    for clip in clips:  # with the default background, the residual is the background at its stated level
        residual_db = 20 * np.log10(np.sqrt(np.mean((clip.audio - _placed(clip)) ** 2)))
        powers = [10 ** (clip.background[k] / 10) for k in ("noise_db", "hum_db") if clip.background[k] is not None]
        expected = 10 * np.log10(sum(powers))
        assert residual_db == pytest.approx(expected, abs=0.5)


def _contrast(audio: np.ndarray, centres: np.ndarray, width: int) -> np.ndarray:
    cumulative = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    after = cumulative[centres + width] - cumulative[centres]
    before = cumulative[centres] - cumulative[centres - width]
    return 10 * np.log10((after + 1e-12) / (before + 1e-12))


def test_onsets_in_the_audio_align_with_events(clips):
    win, hop, search, detect = (round(s * SR) for s in (ONSET_WIN, ONSET_HOP, ONSET_SEARCH, DETECT_WIN))
    errors, audible = [], 0
    for clip in clips:
        for e in clip.audible_events:
            audible += 1
            s = round(e.time * SR)
            if s - search - win < 0 or s + search + win > len(clip.audio):
                continue
            own = synth.event_sound(e, SR)[:detect]
            if len(own) < detect or np.mean(own**2) < DETECT_RATIO * np.mean(clip.audio[s - detect : s] ** 2):
                continue
            if any(o is not e and abs(o.time - e.time) < ONSET_SEARCH + ONSET_WIN for o in clip.audible_events):
                continue
            centres = np.arange(s - search, s + search + 1, hop)
            onset = centres[int(np.argmax(_contrast(clip.audio, centres, win)))] / SR
            errors.append(onset - e.time)
    errors = np.abs(np.array(errors))
    assert len(errors) >= 0.5 * audible and len(errors) >= 30
    assert errors.max() <= ONSET_TOLERANCE
    assert np.median(errors) <= 0.003


def test_visual_events_show_in_the_next_frame(clips):
    """A contact glows and a flash lights its object at full colour in the first frame at or after the event."""
    shown, total = 0, 0
    for clip in clips:
        for e in clip.events:
            k = math.ceil(e.time * clip.fps - 1e-9)
            if not e.visible or k >= len(clip.frames):
                continue
            total += 1
            colour = np.array(world.CLASSES[e.class_id].colour, np.float64)
            if e.kind != "flash":
                colour = 0.5 * (colour + 255.0)
            reach = round(0.2 * clip.width)
            cx, cy = round(e.x * clip.width), round(e.y * clip.height)
            patch = clip.frames[k, max(0, cy - reach) : cy + reach, max(0, cx - reach) : cx + reach].astype(float)
            shown += bool((np.abs(patch - colour).max(axis=-1) <= 12).sum() >= 4)
    assert total >= 40 and shown >= 0.95 * total


def test_timbres_are_distinct_and_size_sets_pitch():
    names = [c.name for c in synth.CLASSES if c.timbre is not None]
    feats, labels = [], []
    for label, name in enumerate(names):
        for seed in range(6):
            sound = synth.class_sound(name, SR, seed=seed, size=seed / 5)
            assert sound.dtype == np.float32 and np.abs(sound).max() == pytest.approx(1.0)
            assert np.abs(sound[: int(0.005 * SR)]).max() > 0.2  # sharp onset
            head = np.pad(sound[:CLASSIFY_LEN], (0, max(0, CLASSIFY_LEN - len(sound))))
            mel = A.log_mel(torch.from_numpy(head), SR, 512, 128, n_mels=40)
            mel = mel - mel.max()  # level invariant
            feats.append(torch.cat([mel.mean(1), mel.std(1), mel.max(0).values]))  # spectrum, spread, envelope
            labels.append(label)
    x, y = torch.stack(feats), torch.tensor(labels)
    # leave-one-out nearest neighbour on mel statistics: the classes are separable across sizes and seeds
    distances = torch.cdist(x, x).fill_diagonal_(float("inf"))
    assert (y[distances.argmin(1)] == y).float().mean() >= 0.9  # measured 1.0
    for size, expected in ((0.0, 1000.0), (1.0, 300.0)):  # bell: 1000 Hz when small, 300 Hz when big
        sound = synth.tonal(np.random.default_rng(0), SR, size)
        peak = np.fft.rfftfreq(len(sound), 1 / SR)[np.argmax(np.abs(np.fft.rfft(sound)))]
        assert peak == pytest.approx(expected, rel=0.06)
    with pytest.raises(ValueError, match="silent"):
        synth.class_sound("ghost")


def test_render_is_fast():
    synth.make_clip(0, duration=1.0)
    start = time.perf_counter()
    synth.make_clip(1, duration=5.0, fps=24.0, size=96)
    assert time.perf_counter() - start < 1.0  # measured about 0.06 s


@pytest.mark.parametrize("audio_codec", ["aac", "pcm"])
def test_write_mp4_roundtrip(tmp_path, audio_codec):
    clip = synth.make_clip(5, duration=3.0)
    info = synth.write_mp4(clip, tmp_path / "clip.mp4", audio_codec=audio_codec)
    assert info.events_path == tmp_path / "clip.events.json"
    assert info.video_codec == io.pick_video_encoder(96, 96)[0]
    video = io.probe_video(info.path)
    assert video.duration == pytest.approx(3.0, abs=0.1) and video.num_frames == 72 and video.has_audio
    with av.open(str(info.path)) as c:
        assert c.duration / av.time_base == pytest.approx(3.0, abs=0.1)
        assert c.streams.audio[0].codec_context.name == synth.AUDIO_CODECS[audio_codec]
    frames = io.read_frames(info.path, clip.fps).numpy()
    assert frames.shape == clip.frames.shape
    assert np.abs(frames.astype(float) - clip.frames).mean() < 4.0  # lossy but faithful
    audio, rate = io.read_audio(info.path)
    assert rate == SR and audio.shape[0] == clip.audio.shape[0]
    error = audio.numpy() - clip.audio
    if audio_codec == "pcm":
        assert np.abs(error).max() <= 1.0 / 32768 + 1e-6
    else:
        assert 10 * np.log10(np.sum(clip.audio**2) / np.sum(error**2)) > 20.0  # aligned, no delay
    data = json.loads(info.events_path.read_text())
    assert (data["video_codec"], data["audio_codec"]) == (info.video_codec, info.audio_codec)
    assert synth.load_events(info.events_path) == clip.events
    with pytest.raises(io.V2AInputError, match="output exists"):
        synth.write_mp4(clip, info.path, audio_codec=audio_codec)
    synth.write_mp4(clip, info.path, audio_codec=audio_codec, overwrite=True)


def test_write_mp4_falls_back_to_mpeg4(tmp_path, monkeypatch):
    monkeypatch.setattr(io.av, "codecs_available", frozenset(av.codecs_available) - {"libx264"})
    clip = synth.make_clip(2, duration=1.0)
    info = synth.write_mp4(clip, tmp_path / "clip.mp4")
    assert info.video_codec == "mpeg4"
    assert io.probe_video(info.path).codec == "mpeg4"
    assert json.loads(info.events_path.read_text())["video_codec"] == "mpeg4"


def test_make_dataset(tmp_path):
    config = dataclasses.replace(synth.WorldConfig(), max_objects=2)
    manifest = synth.make_dataset(tmp_path / "ds", 3, seed=4, duration=1.0, size=32, config=config)
    rows = synth.load_manifest(tmp_path / "ds")
    assert manifest == tmp_path / "ds" / "manifest.jsonl" and [r["index"] for r in rows] == [0, 1, 2]
    assert len({r["seed"] for r in rows}) == 3
    for row in rows:
        for key in ("video", "events", "audio"):
            assert (tmp_path / "ds" / row[key]).is_file()
        again = synth.make_clip(row["seed"], duration=1.0, size=32, config=config)  # each clip regenerates alone
        wav, rate = sf.read(str(tmp_path / "ds" / row["audio"]), dtype="float32")
        assert rate == SR and np.abs(wav - again.audio).max() <= 1.0 / 32768 + 1e-6
        assert row["num_events"] == len(again.events)
        assert row["classes"] == sorted({o.class_name for o in again.objects})
    with pytest.raises(io.V2AInputError, match="output exists"):
        synth.make_dataset(tmp_path / "ds", 1, duration=1.0, size=32)


def test_dataset_command_prints_one_progress_line_per_clip_off_a_terminal(tmp_path, capsys):
    from v2a_sampler.synth.__main__ import main

    assert main([str(tmp_path / "ds"), "--num-clips", "3", "--duration", "0.5", "--size", "16"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "1/3 clips\n2/3 clips\n3/3 clips\n"  # not "\r1/3 clips\r2/3 clips..." in a log
    assert captured.out.strip() == str(tmp_path / "ds" / "manifest.jsonl")
