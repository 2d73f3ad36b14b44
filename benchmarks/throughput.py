"""Data-set scale throughput: clips per minute of ``v2a-sample --manifest`` vs batch size and process count.

Writes synthetic clips of equal duration and their manifest, then runs the manifest once per (processes, batch size)
as a real job: ``v2a-sample --manifest`` for one process, ``torchrun --nproc-per-node N`` (gloo on CPU, nccl on
CUDA, one GPU per process) for more, each process with ``--threads`` torch threads. Reports two rates:

* ``clips_per_min``: rows done / the slowest rank's generation loop (from ``summary.json``; excludes start-up and
  model loading): the steady-state rate a long job approaches;
* ``clips_per_min_wall``: rows / the whole command's wall time (Python, torch and model start-up included).

    python benchmarks/throughput.py --out out/throughput [--quick] [--repeats 2] [--device cuda] [--procs 1,2]

Writes ``throughput.csv`` (and ``throughput.png`` with matplotlib); prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from v2a_sampler.synth import make_dataset


def run_job(manifest: Path, out_dir: Path, procs: int, batch: int, args: argparse.Namespace) -> dict:
    gen = ["--manifest", str(manifest), "--out-dir", str(out_dir), "--batch-size", str(batch), "--steps",
           str(args.steps), "-g", args.guidance, "--device", args.device, "--quiet"]  # fmt: skip
    if args.model:
        gen += ["--model", args.model]
    if procs == 1:
        cmd = [sys.executable, "-m", "v2a_sampler.cli", *gen]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs), "-m",
               "v2a_sampler.cli", *gen]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    best = None
    for _ in range(args.repeats):  # best of: the machine may be shared
        shutil.rmtree(out_dir, ignore_errors=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"job failed ({procs} processes, batch {batch}):\n{proc.stderr[-2000:]}")
        t = json.loads((out_dir / "summary.json").read_text())["totals"]
        if t["done"] != args.clips:
            raise SystemExit(f"expected {args.clips} rows done, got {t}")
        if best is None or t["seconds"] < best[0]["seconds"]:
            best = (t, wall)
    t, wall = best
    return {
        "device": args.device,
        "procs": procs,
        "threads_per_proc": args.threads,
        "batch": batch,
        "clips": args.clips,
        "clip_s": args.duration,
        "guidance": args.guidance,
        "steps": args.steps,
        "repeats": args.repeats,
        "loop_s": round(t["seconds"], 3),
        "wall_s": round(wall, 3),
        "clips_per_min": round(60.0 * t["done"] / t["seconds"], 2),
        "clips_per_min_wall": round(60.0 * t["done"] / wall, 2),
    }


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for procs in sorted({r["procs"] for r in rows}):
        sel = [r for r in rows if r["procs"] == procs]
        ax.plot([r["batch"] for r in sel], [r["clips_per_min"] for r in sel], "o-", label=f"{procs} process(es)")
        ax.plot([r["batch"] for r in sel], [r["clips_per_min_wall"] for r in sel], "x:", color=ax.lines[-1].get_color(),
                label=f"{procs} process(es), wall")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (clips per forward)")
    ax.set_ylabel("clips / min")
    r0 = rows[0]
    ax.set_title(f"{r0['device']}: {r0['clip_s']:g} s clips, {r0['guidance']}, {r0['steps']} steps", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description="clips/min of manifest runs vs batch size and process count")
    ap.add_argument("--out", type=Path, default=Path("out/throughput"))
    ap.add_argument("--model", default=None, help="pipeline folder (default: the embedded model)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", default="hg")
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--procs", default="1,2")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--repeats", type=int, default=1, help="runs per configuration; the fastest counts")
    ap.add_argument("--quick", action="store_true", help="8 clips of 2 s, 10 steps")
    args = ap.parse_args()
    if args.quick:
        args.clips, args.duration, args.steps = 8, 2.0, 10
    args.out.mkdir(parents=True, exist_ok=True)
    procs_list = [int(p) for p in args.procs.split(",")]
    if args.device.startswith("cuda"):
        gpus = torch.cuda.device_count()
        skipped = [p for p in procs_list if p > gpus]
        procs_list = [p for p in procs_list if p <= gpus]
        if skipped:
            print(f"skipping {skipped} processes: {gpus} GPU(s), one per process")
    work = Path(tempfile.mkdtemp(prefix="v2a_throughput_"))
    try:
        manifest = make_dataset(work / "clips", args.clips, seed=1, duration=args.duration, fps=25.0, size=96)
        rows = []
        print(f"device {args.device}, {args.clips} clips of {args.duration:g} s, {args.guidance} x {args.steps} "
              f"steps, {args.threads} thread(s) per process")  # fmt: skip
        print(f"{'procs':>5}{'batch':>6}{'loop s':>9}{'wall s':>9}{'clips/min':>11}{'(wall)':>9}")
        for procs in procs_list:
            for batch in [int(b) for b in args.batches.split(",")]:
                r = run_job(manifest, work / f"out_p{procs}_b{batch}", procs, batch, args)
                rows.append(r)
                print(f"{procs:>5}{batch:>6}{r['loop_s']:>9.2f}{r['wall_s']:>9.2f}{r['clips_per_min']:>11.1f}"
                      f"{r['clips_per_min_wall']:>9.1f}", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = rows[0]["clips_per_min"]
    for r in rows:
        r["speedup"] = round(r["clips_per_min"] / base, 3)
    with open(args.out / "throughput.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    best = max(rows, key=lambda r: r["clips_per_min"])
    print(f"best: {best['procs']} process(es), batch {best['batch']}: {best['clips_per_min']:.1f} clips/min "
          f"({best['speedup']:.2f}x of 1 process, batch 1)")  # fmt: skip
    if plot(rows, args.out / "throughput.png"):
        print(f"wrote {args.out / 'throughput.csv'} and throughput.png")
    else:
        print(f"wrote {args.out / 'throughput.csv'}")


if __name__ == "__main__":
    main()
