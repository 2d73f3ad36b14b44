"""``python -m v2a_sampler.synth OUT_DIR --num-clips N``: generate a synthetic dataset with a manifest."""

from __future__ import annotations

import argparse
import sys

from .export import AUDIO_CODECS, make_dataset


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and write the dataset."""
    parser = argparse.ArgumentParser(prog="python -m v2a_sampler.synth", description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--num-clips", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per clip")
    parser.add_argument("--fps", type=float, default=24.0)
    parser.add_argument("--size", type=int, default=96, help="frame height = width, pixels")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--audio-codec", choices=sorted(AUDIO_CODECS), default="aac")
    parser.add_argument("--no-wav", action="store_true", help="do not write the exact audio as WAV")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    live = sys.stderr.isatty()  # a terminal redraws one line; logs and pipes get one line per clip

    def progress(done: int, total: int) -> None:
        if live:
            print(f"\r{done}/{total} clips", end="" if done < total else "\n", file=sys.stderr, flush=True)
        else:
            print(f"{done}/{total} clips", file=sys.stderr, flush=True)

    manifest = make_dataset(
        args.out_dir,
        args.num_clips,
        seed=args.seed,
        duration=args.duration,
        fps=args.fps,
        size=args.size,
        sample_rate=args.sample_rate,
        audio_codec=args.audio_codec,
        write_audio=not args.no_wav,
        overwrite=args.overwrite,
        progress=progress,
    )
    print(manifest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
