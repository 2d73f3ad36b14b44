"""Wall time of the main job: ``v2a-sample clip.mp4 --guidance hg`` on a 5 s clip, model load included.

Runs the CLI as a user would (a fresh process each time: Python start-up, imports, model load, frame reading,
sampling, Griffin-Lim, WAV writing) and reports the median over repeats per guidance method; the target is
<= 5 s for HG at default settings on 2 CPU cores.

    python benchmarks/v2a_speed.py --out out/v2a_speed [--repeats 3]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from v2a_sampler.synth import make_clip, write_mp4

TARGET_S = 5.0  # issue #17: the 5 s HG clip, model load included, on 2 CPU cores
CLIP_SECONDS = 5.0


def main() -> None:
    ap = argparse.ArgumentParser(description="wall time of v2a-sample on a 5 s clip")
    ap.add_argument("--out", type=Path, default=Path("out/v2a_speed"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default="none,cfg,hg")
    ap.add_argument("--threads", default=None, help="OMP_NUM_THREADS for the CLI process (default: torch's)")
    ap.add_argument("--models", default="embedded", help="comma-separated --model values (compare in one run)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "clip.mp4"
        write_mp4(make_clip(4242, duration=CLIP_SECONDS, fps=25.0, size=128), video)
        env = None
        if args.threads:
            import os

            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        runs = [(model, method) for method in args.methods.split(",") for model in args.models.split(",")]
        times: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
        for _ in range(args.repeats):  # interleaved, so load changes on a shared machine hit every run alike
            for model, method in runs:
                cmd = [sys.executable, "-m", "v2a_sampler.cli", str(video), "-g", method, "--overwrite", "--quiet"]
                t0 = time.perf_counter()
                proc = subprocess.run([*cmd, "--model", model], capture_output=True, text=True, env=env)
                times[(model, method)].append(time.perf_counter() - t0)
                if proc.returncode != 0:
                    raise SystemExit(f"v2a-sample failed: {proc.stderr.strip()}")
        for (model, method), ts in times.items():
            med = statistics.median(ts)
            rows.append({"model": model, "method": method, "clip_s": CLIP_SECONDS, "median_wall_s": med,
                         "min_wall_s": min(ts), "target_s": TARGET_S, "met": med <= TARGET_S})  # fmt: skip
            print(f"{model} {method:>5}: median {med:.1f}s (min {min(ts):.1f}s) over {args.repeats} runs", flush=True)
    with open(args.out / "speed.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
