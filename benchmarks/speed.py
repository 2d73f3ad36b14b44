"""Per-step cost of guided sampling: naive (one forward per branch), batched (one forward per model), stacked (good
and bad model in one vmapped pass over stacked weights) and fused (combine + update in one kernel, CUDA).

For none/CFG/AG/PG/HG at several batch sizes, times whole guided Euler steps of the embedded model (and with
``--large`` a random-weight transformer of roughly MMAudio-S size) and reports the per-step time, the peak memory
on CUDA, and the share of the step spent outside network forwards (guidance combination, solver update, Python).

    python benchmarks/speed.py --out out/speed [--quick] [--large] [--device cuda]

Writes ``speed.csv``; prints a table with the speed-up of batched over naive per configuration.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch

from v2a_sampler import guidance as G
from v2a_sampler.engine import GuidedDenoiser
from v2a_sampler.models.v2a_flow import V2AFlow
from v2a_sampler.pipeline import Pipeline
from v2a_sampler.solvers import fused_sample

METHODS = ["none", "cfg", "ag", "pg", "hg"]
#: A V2AFlow of roughly MMAudio-S size (about 150 M parameters).
LARGE = dict(n_mels=64, patch=2, dim=896, depth=12, heads=14, mlp_ratio=4.0, video_dim=256, frame_size=32)
CLIP_SECONDS = 5.0


class Timed(torch.nn.Module):
    """Wraps a denoiser and accumulates the wall time of its forwards."""

    def __init__(self, inner: V2AFlow) -> None:
        super().__init__()
        self.inner = inner
        self.seconds = 0.0
        for k in ("prediction", "schedule", "condition_names", "amg_weight"):
            setattr(self, k, getattr(inner, k))

    def drop(self, cond, names):
        return self.inner.drop(cond, names)

    def batch_conditions(self, conds, batch):
        return self.inner.batch_conditions(conds, batch)

    def forward(self, x, t, cond):
        _sync(x)
        t0 = time.perf_counter()
        out = self.inner(x, t, cond)
        _sync(out)
        self.seconds += time.perf_counter() - t0
        return out


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def measure(good, bad, method, batch, mode, steps, device) -> dict:
    frames = torch.randint(0, 255, (batch, int(CLIP_SECONDS * 25), 32, 32, 3), dtype=torch.uint8, device=device)
    with torch.no_grad():
        cond = good.inner.encode_conditions({"video": frames})
        bad_cond = bad.inner.encode_conditions({"video": frames}) if bad is not None else None
    g = G.resolve(method, good, bad)
    n_mel = int(CLIP_SECONDS * 50) + 1
    x = torch.randn(batch, good.inner.n_mels, n_mel, device=device)
    engine = GuidedDenoiser(good, g, cond, bad if g.needs_bad_model else None, bad_cond, batch_branches=mode != "naive",
                            stack_models=mode == "stacked" and g.needs_bad_model)  # fmt: skip
    ts = torch.linspace(1.0, 0.0, steps + 2).tolist()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with torch.no_grad():
        for _ in range(2):  # the first pass warms up
            for m in (good, bad):
                if m is not None:
                    m.seconds = 0.0
            _sync(x)
            t0 = time.perf_counter()
            if mode == "fused":
                fused_sample(engine, x, ts, "euler")
            else:
                y = x
                for t, s in zip(ts[:-1], ts[1:], strict=True):
                    x0 = engine(y, t)
                    y = (s / t) * y + (1 - s / t) * x0  # Euler step of a noise-at-1 flow (DDIM form)
            _sync(x)
            times.append((time.perf_counter() - t0) / (len(ts) - 1))
    fwd = (good.seconds + (bad.seconds if bad is not None else 0.0)) / (len(ts) - 1)
    step = times[-1]
    if engine.stack is not None:  # the vmapped pass bypasses the timing wrappers
        fwd = float("nan")
    return {
        "method": method,
        "batch": batch,
        "mode": mode,
        "nfe_per_step": g.nfe_per_step,
        "step_ms": 1000 * step,
        "forward_ms": 1000 * fwd,
        "outside_forward_pct": 100 * max(0.0, 1 - fwd / step) if fwd == fwd else float("nan"),
        "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="per-step cost of guided sampling")
    ap.add_argument("--out", type=Path, default=Path("out/speed"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    ap.add_argument("--quick", action="store_true", help="batch 1 only, 3 steps")
    ap.add_argument("--large", action="store_true", help="also a random-weight model of MMAudio-S size")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.batches, args.steps = "1", 3
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline.from_pretrained(device=device)
    models = [("embedded", Timed(pipe.model), Timed(pipe.bad))]
    if args.large:
        torch.manual_seed(0)
        big = V2AFlow(**LARGE, audio=pipe.model.arch_kwargs["audio"], video=pipe.model.arch_kwargs["video"])
        big_bad = V2AFlow(**LARGE, audio=pipe.model.arch_kwargs["audio"], video=pipe.model.arch_kwargs["video"])
        models.append(("mmaudio_s_size", Timed(big.to(device).eval()), Timed(big_bad.to(device).eval())))
    modes = ["naive", "batched", "stacked"] + (["fused"] if device.type == "cuda" else [])
    rows = []
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'})")
    print(f"{'model':<16}{'method':<7}{'batch':>6}{'mode':>9}{'step ms':>10}{'fwd ms':>9}{'outside %':>11}")
    for name, good, bad in models:
        params = sum(p.numel() for p in good.inner.parameters()) / 1e6
        for batch in [int(b) for b in args.batches.split(",")]:
            for method in METHODS:
                for mode in modes:
                    r = {"model": name, "params_m": round(params, 1), **measure(good, bad, method, batch, mode,
                                                                                args.steps, device)}  # fmt: skip
                    rows.append(r)
                    print(f"{name:<16}{method:<7}{batch:>6}{mode:>9}{r['step_ms']:>10.1f}{r['forward_ms']:>9.1f}"
                          f"{r['outside_forward_pct']:>11.1f}", flush=True)  # fmt: skip
    with open(args.out / "speed.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("\nbatched speed-up over naive (per step):")
    for name, *_ in models:
        for method in METHODS:
            ratios = []
            for batch in [int(b) for b in args.batches.split(",")]:
                get = {r["mode"]: r["step_ms"] for r in rows if (r["model"], r["method"], r["batch"]) ==
                       (name, method, batch)}  # fmt: skip
                ratios.append(f"b{batch}: {get['naive'] / get['batched']:.2f}x")
            print(f"  {name:<16}{method:<6}" + "  ".join(ratios))
    hg = [r for r in rows if r["method"] == "hg" and r["batch"] == 1 and r["mode"] == "batched"]
    cfg = [r for r in rows if r["method"] == "cfg" and r["batch"] == 1 and r["mode"] == "batched"]
    if hg and cfg:
        ratio = statistics.mean(r["step_ms"] for r in hg) / statistics.mean(r["step_ms"] for r in cfg)
        print(f"HG / CFG per-step time at batch 1 (batched): {ratio:.2f}x")


if __name__ == "__main__":
    main()
