"""Wall time of one ``v2a-app`` request as a browser makes it: the demo clip's first 5 s with HG at the default 25
Euler steps, over HTTP through Gradio's queue (upload, sampling, Griffin-Lim, WAV, mux, spectrogram, download links).

Starts the app (``python -m v2a_sampler.frontends.app``) on a free local port, sends the request ``--repeats`` times
with Gradio's Python client (the first includes loading the model) and writes the times to a CSV. The issue's target:
an answer in a few seconds on 2 CPU cores.

    python benchmarks/app_latency.py --out benchmarks/results/app [--repeats 5]
"""

from __future__ import annotations

import argparse
import csv
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "assets" / "demo_clip.mp4"
CLIP_SECONDS = 5.0
GUIDANCE = "hg"
STEPS = 25
TARGET_S = 5.0  # "a few seconds"
STARTUP_S = 180


def main() -> None:
    ap = argparse.ArgumentParser(description="wall time of one v2a-app request (5 s demo clip, HG)")
    ap.add_argument("--out", type=Path, default=Path("out/app_latency"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from gradio_client import Client, handle_file

    args.out.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "app.log"
        with open(log, "w") as out:
            command = [sys.executable, "-m", "v2a_sampler.frontends.app", "--port", str(port)]
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            app = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}/"
        try:
            if not bench.wait_until_serving(url, app, STARTUP_S):
                raise SystemExit(f"the app did not start:\n{log.read_text()}")
            client = Client(url, verbose=False)
            rows = []
            for i in range(args.repeats):
                t0 = time.perf_counter()
                line, *_ = client.predict(handle_file(str(DEMO)), GUIDANCE, "embedded", "default", "euler",
                                          STEPS, 0, CLIP_SECONDS, "", "", api_name="/generate")  # fmt: skip
                wall = time.perf_counter() - t0
                if not line.startswith("hg("):
                    raise SystemExit(f"the request failed: {line}")
                rows.append({"request": i + 1, "cold": i == 0, "wall_s": round(wall, 3), "line": line})
                print(f"request {i + 1}: {wall:.2f} s  ({line})", flush=True)
        finally:
            app.terminate()
            app.wait(timeout=30)
    warm = [r["wall_s"] for r in rows if not r["cold"]] or [rows[0]["wall_s"]]
    med = statistics.median(warm)
    print(f"median of warm requests: {med:.2f} s (target {TARGET_S:g} s: {'met' if med <= TARGET_S else 'missed'})")
    with open(args.out / "app_latency.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["request", "cold", "wall_s", "line"])
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {args.out / 'app_latency.csv'}")


if __name__ == "__main__":
    main()
