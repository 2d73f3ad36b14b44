"""Quickstart: a soundtrack for the demo clip with every guidance method, from Python.

    python examples/quickstart.py [--video examples/assets/demo_clip.mp4] [--out out/quickstart]

Loads the embedded model (offline), generates one WAV per guidance method plus the video muxed with the HG
soundtrack, and prints NFE and wall time per method.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from v2a_sampler import Pipeline

HERE = Path(__file__).parent
METHODS = ["none", "cfg", "ag", "pg", "hg"]  # bare names: AudioMoG's V2A settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", type=Path, default=HERE / "assets" / "demo_clip.mp4")
    ap.add_argument("--out", type=Path, default=Path("out/quickstart"))
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    pipe = Pipeline.from_pretrained()
    print(f"{pipe}  (loaded in {time.perf_counter() - t0:.1f}s)")
    for method in METHODS:
        t0 = time.perf_counter()
        audio = pipe(args.video, guidance=method, steps=args.steps, seed=args.seed)
        wav = audio.save(args.out / f"{args.video.stem}_{method}.wav", overwrite=True)
        print(f"{method:>5}: NFE {audio.info['nfe']:>3}  {time.perf_counter() - t0:5.1f}s  -> {wav}")
        if method == "hg":
            mp4 = audio.mux(args.video, args.out / f"{args.video.stem}_hg.mp4", overwrite=True)
            print(f"       muxed -> {mp4}")


if __name__ == "__main__":
    main()
