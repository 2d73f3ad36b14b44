"""Fused guided solver step: unfused torch ops vs the torch reference vs the Triton kernel.

For latent sizes from small to large and k = 2..4 branch predictions, times one guided step (combine the
branches, convert to x0, update the state) and reports the effective bandwidth: the bytes a perfect kernel must
move (read every operand once, write x0 and x_next once) divided by the time, and its share of an assumed
memory roofline. Triton needs CUDA: on CPU only the torch rows are measured.

    python benchmarks/fused_step.py --out out/bench [--quick] [--roofline-gbps 3350] [--png] [--threads 1]

CPU timings on a loaded machine are noisy (OpenMP threads stall when cores are oversubscribed); ``--threads 1``
makes them repeatable.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from v2a_sampler import kernels as K

#: Latent shapes (batch, channels, frames), small to large.
SHAPES: dict[str, tuple[int, ...]] = {
    "1x64x256": (1, 64, 256),
    "8x64x256": (8, 64, 256),
    "8x128x1024": (8, 128, 1024),
    "16x128x4096": (16, 128, 4096),
    "32x128x8192": (32, 128, 8192),
}
QUICK_SHAPES = ["1x64x256", "8x64x256"]
QUICK_REPEATS = 5
QUICK_MIN_TIME_S = 0.01
BRANCH_COUNTS = [2, 3, 4]
#: Step variants: (name, has x0_old, has noise). Euler/DDIM reads the fewest operands, DPM++ 2M SDE the most.
VARIANTS = [("euler", False, False), ("dpmpp_2m_sde", True, True)]
#: Assumed peak memory bandwidth (GB/s) when --roofline-gbps is not given: H100 SXM HBM3, a desktop DDR4 socket.
DEFAULT_ROOFLINE_GBPS = {"cuda": 3350.0, "cpu": 25.0}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}
#: Step scalars (any values: the kernels never recompile for new ones).
A, B, U_X, U_0, U_OLD, U_NOISE = 1.0, -0.9, 0.97, 0.03, -0.01, 0.2


@dataclass
class Row:
    """One measurement."""

    device: str
    impl: str
    variant: str
    shape: str
    numel: int
    k: int
    pred_dtype: str
    state_dtype: str
    time_us: float
    bytes_moved: int
    gbps: float
    roofline_pct: float
    max_abs_err: float


def unfused(
    x: torch.Tensor,
    preds: list[torch.Tensor],
    coeffs: list[float],
    x0_old: torch.Tensor | None,
    noise: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The step as separate out-of-place torch ops, the way the engine and solvers compute it today."""
    acc = torch.promote_types(x.dtype, torch.float32)
    g = preds[0].to(acc) * coeffs[0]
    for p, c in zip(preds[1:], coeffs[1:], strict=True):
        g = g + c * p.to(acc)
    g = g.to(x.dtype)
    x0 = A * x + B * g
    x_next = U_X * x + U_0 * x0
    if x0_old is not None:
        x_next = x_next + U_OLD * x0_old
    if noise is not None:
        x_next = x_next + U_NOISE * noise
    return x0, x_next


def ideal_bytes(
    x: torch.Tensor, preds: list[torch.Tensor], x0_old: torch.Tensor | None, noise: torch.Tensor | None
) -> int:
    """Bytes a perfect fused step moves: every operand read once, x0 and x_next written once."""
    operands = [x, *preds, *(t for t in (x0_old, noise) if t is not None)]
    read = sum(t.numel() * t.element_size() for t in operands)
    return read + 2 * x.numel() * x.element_size()


def time_us(fn: Callable[[], object], device: torch.device, repeats: int, min_time_s: float) -> float:
    """Median wall time of ``fn`` in microseconds (CUDA events on GPUs), after warm-up."""
    for _ in range(2):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        samples = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) * 1e3)
        return statistics.median(samples)
    samples = []
    began = time.perf_counter()
    while len(samples) < repeats or (time.perf_counter() - began < min_time_s and len(samples) < 10 * repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(samples)


@dataclass
class Setup:
    """What every measurement shares."""

    device: torch.device
    pred_dtype: str
    state_dtype: str
    roofline_gbps: float
    with_triton: bool
    repeats: int
    min_time_s: float


def measure(setup: Setup, shape_name: str, k: int, variant: str, has_old: bool, has_noise: bool) -> list[Row]:
    """Time every implementation on one (shape, k, variant), checking each against the reference."""
    shape, device = SHAPES[shape_name], setup.device
    gen = torch.Generator(device=device).manual_seed(k)

    def rand(dtype_name: str) -> torch.Tensor:
        return torch.randn(shape, generator=gen, device=device, dtype=DTYPES[dtype_name])

    x = rand(setup.state_dtype)
    preds = [rand(setup.pred_dtype) for _ in range(k)]
    coeffs = [1.0 + 3.5] + [-3.5 / (k - 1)] * (k - 1)  # CFG-like weights summing to 1
    old = rand(setup.state_dtype) if has_old else None
    noise = rand(setup.state_dtype) if has_noise else None
    kw = dict(u_old=U_OLD if has_old else 0.0, x0_old=old, u_noise=U_NOISE if has_noise else 0.0, noise=noise)
    impls: dict[str, Callable[[], tuple[torch.Tensor, torch.Tensor]]] = {
        "unfused": lambda: unfused(x, preds, coeffs, old, noise),
        "reference": lambda: K.guided_step_reference(x, preds, coeffs, A, B, U_X, U_0, **kw),
    }
    if setup.with_triton:
        impls["triton"] = lambda: K.guided_step(x, preds, coeffs, A, B, U_X, U_0, backend="triton", **kw)
    expected = impls["reference"]()
    moved = ideal_bytes(x, preds, old, noise)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = []
    for impl, fn in impls.items():
        err = max((g.double() - e.double()).abs().max().item() for g, e in zip(fn(), expected, strict=True))
        us = time_us(fn, device, setup.repeats, setup.min_time_s)
        gbps = moved / (us * 1e-6) / 1e9
        rows.append(
            Row(
                device=name,
                impl=impl,
                variant=variant,
                shape=shape_name,
                numel=math.prod(shape),
                k=k,
                pred_dtype=setup.pred_dtype,
                state_dtype=setup.state_dtype,
                time_us=us,
                bytes_moved=moved,
                gbps=gbps,
                roofline_pct=100.0 * gbps / setup.roofline_gbps,
                max_abs_err=err,
            )
        )
    return rows


def run(args: argparse.Namespace) -> tuple[list[Row], float]:
    """Measure every (shape, k, variant, impl) combination the device supports; returns rows and the roofline."""
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    with_triton = device.type == "cuda" and K.triton_available()
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type != "cuda":
        threads = torch.get_num_threads()
        print(f"Triton kernels need CUDA: measuring the torch implementations only ({threads} CPU threads)")
    elif not with_triton:
        print("triton does not import here: measuring the torch implementations only.")
    setup = Setup(
        device=device,
        pred_dtype=args.pred_dtype,
        state_dtype=args.state_dtype,
        roofline_gbps=args.roofline_gbps or DEFAULT_ROOFLINE_GBPS[device.type],
        with_triton=with_triton,
        repeats=QUICK_REPEATS if args.quick else args.repeats,
        min_time_s=QUICK_MIN_TIME_S if args.quick else args.min_time,
    )
    rows: list[Row] = []
    with torch.no_grad():
        for shape_name in QUICK_SHAPES if args.quick else SHAPES:
            for k in BRANCH_COUNTS:
                for variant, has_old, has_noise in VARIANTS:
                    rows += measure(setup, shape_name, k, variant, has_old, has_noise)
    return rows, setup.roofline_gbps


def print_table(rows: list[Row], roofline: float) -> None:
    """Fixed-width table with the speed-up of each implementation over the unfused ops."""
    base = {(r.shape, r.k, r.variant): r.time_us for r in rows if r.impl == "unfused"}
    print(f"\nroofline assumed: {roofline:.0f} GB/s; bytes = every operand read once + x0, x_next written once")
    header = (
        f"{'shape':>12} {'k':>2} {'variant':>13} {'impl':>9} {'time us':>10} {'GB/s':>8} {'roof %':>7} {'speedup':>8}"
    )
    print(header)  # speedup: over the unfused ops on the same case
    print("-" * len(header))
    for r in rows:
        speedup = base[(r.shape, r.k, r.variant)] / r.time_us
        print(
            f"{r.shape:>12} {r.k:>2} {r.variant:>13} {r.impl:>9} {r.time_us:>10.1f} {r.gbps:>8.1f} "
            f"{r.roofline_pct:>7.1f} {speedup:>7.2f}x"
        )


def write_csv(rows: list[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    print(f"wrote {path}")


def write_png(rows: list[Row], path: Path, roofline: float) -> None:
    """Effective bandwidth vs latent size per implementation (k = 4, SDE variant), with the roofline."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    k_max = max(r.k for r in rows)
    for impl in dict.fromkeys(r.impl for r in rows):
        sel = [r for r in rows if r.impl == impl and r.k == k_max and r.variant == VARIANTS[-1][0]]
        ax.plot([r.numel for r in sel], [r.gbps for r in sel], marker="o", label=impl)
    ax.axhline(roofline, color="gray", linestyle="--", label=f"roofline {roofline:.0f} GB/s")
    ax.set(xscale="log", xlabel="latent elements", ylabel="effective GB/s", title=f"guided step, k={k_max}, SDE")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/bench"), help="directory for fused_step.csv/.png")
    parser.add_argument("--quick", action="store_true", help="two small shapes, few repeats (seconds on CPU)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda[:i]")
    parser.add_argument("--roofline-gbps", type=float, default=None, help="assumed peak memory bandwidth, GB/s")
    parser.add_argument("--pred-dtype", choices=list(DTYPES), default="bf16", help="dtype of branch predictions")
    parser.add_argument("--state-dtype", choices=list(DTYPES), default="fp32", help="dtype of x, x0_old, noise")
    parser.add_argument("--repeats", type=int, default=50, help="timed repetitions per measurement")
    parser.add_argument("--min-time", type=float, default=0.05, help="minimum seconds per CPU measurement")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (1 avoids OpenMP stalls)")
    parser.add_argument("--png", action="store_true", help="also plot bandwidth vs size (needs matplotlib)")
    args = parser.parse_args()
    rows, roofline = run(args)
    print_table(rows, roofline)
    write_csv(rows, args.out / "fused_step.csv")
    if args.png:
        write_png(rows, args.out / "fused_step.png", roofline)


if __name__ == "__main__":
    main()
