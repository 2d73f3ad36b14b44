"""Regenerate the demo clip of the synthetic world: ``python examples/make_demo_clip.py``.

Writes ``examples/assets/demo_clip.mp4`` (6 s, 128x128 at 24 fps, 16 kHz AAC) and ``demo_clip.events.json``
beside it. Seed 22 shows a bouncing ball, a sliding block, a flashing lamp, a silent grey distractor, a silent
contact and an off-screen sound.
"""

from __future__ import annotations

from pathlib import Path

from v2a_sampler.synth import make_clip, write_mp4

#: The demo's seed and format (see the module docstring).
SEED, DURATION, FPS, SIZE, SAMPLE_RATE = 22, 6.0, 24.0, 128, 16000
OUT = Path(__file__).resolve().parent / "assets" / "demo_clip.mp4"


def main() -> None:
    """Render the demo clip and write it with its events."""
    clip = make_clip(SEED, duration=DURATION, fps=FPS, size=SIZE, sample_rate=SAMPLE_RATE)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    info = write_mp4(clip, OUT, audio_codec="aac", overwrite=True)
    print(
        f"{info.path} ({info.path.stat().st_size // 1024} KiB, {info.video_codec} + {info.audio_codec}), "
        f"{len(clip.events)} events -> {info.events_path}"
    )


if __name__ == "__main__":
    main()
