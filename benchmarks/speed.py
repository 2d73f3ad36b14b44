"""Per-step cost of guided sampling, by evaluation mode.

Modes: ``naive`` (one forward per branch), ``batched`` (all branches of a model in one forward), ``stacked`` (good
and bad model in one vmapped pass over stacked weights), ``compiled`` (batched through ``torch.compile``; with
``--compile``), and on CUDA ``fused`` (combine + update in one Triton kernel), ``streams`` (good and bad forwards on
two streams) and ``graphs`` (branch forwards replayed as CUDA graphs, fused update).

For none/CFG/AG/PG/HG at several batch sizes, times whole guided Euler steps of the embedded model and, with
``--large``, of a random-weight MMAudio-S (the real ``small_44k`` architecture, 157 M parameters, 8 s clip); the
bad model has the good model's architecture (an earlier checkpoint). Reports the per-step time, the peak memory on
CUDA, and the share of the step spent outside network forwards (combination, update, Python).

    python benchmarks/speed.py --out out/speed [--quick] [--large] [--compile] [--device cuda] [--threads 1]

Writes ``speed.csv``; prints a table, the speed-ups over naive and the HG/CFG per-step ratio.

``--operators`` times instead each non-affine guidance operator against the same affine guidance on the embedded
model (batched mode, batch 1, plain Euler loop; :data:`OPERATOR_CASES`), interleaving the two so that both see the
same machine load, and writes ``operators.csv`` with the per-step times and their ratio (target: <= 1.05x).

``--perturbations`` times AG and HG on the embedded model (batch 1, batched branches) with each perturbed version of
the good model as the bad model (:data:`PERTURBATIONS`: its branches share the good model's forward) against the
shipped checkpoint bad model (a second network), interleaved the same way; writes ``perturbations.csv``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from v2a_sampler import guidance as G
from v2a_sampler import solvers
from v2a_sampler.core.engine import GuidedDenoiser
from v2a_sampler.mmaudio.network import MMAudio
from v2a_sampler.pipelines.embedded import Pipeline

METHODS = ["none", "cfg", "ag", "pg", "hg"]
EMBEDDED_SECONDS = 5.0  # clip length for the embedded model
MMAUDIO_SECONDS = 8.0  # MMAudio's training length
WEIGHT_STD = 0.02  # random weights of the MMAudio-S stand-ins (the official init zeroes the output layers)
TIMED_MODES = ("naive", "batched", "stacked", "fused", "streams")  # modes whose forwards can be timed one by one
#: (affine guidance, the same guidance under a non-affine operator) pairs of ``--operators``.
OPERATOR_CASES = (
    ("cfg", "rescale(cfg)"),
    ("cfg", "apg(cfg,r=15,beta=-0.5)"),
    ("cfg", "zero_star(cfg)"),
    ("cfg", "mambo(cfg)"),
    ("hg", "apg(hg,r=15,beta=-0.5)"),
    ("hg", "rescale(hg)"),
)
#: Perturbed bad models of ``--perturbations`` (specs of :mod:`v2a_sampler.models.perturb`).
PERTURBATIONS = ("perturb:identity=1", "perturb:skip=1", "perturb:blur=2", "perturb:attn_dropout=0.2")
#: Interleaved timed passes per pair in ``--operators`` (the fastest of each side counts).
OPERATOR_ROUNDS = 7
#: Calls per timing of the guidance combination alone in ``--operators`` (the fastest of OPERATOR_ROUNDS counts).
COMBINE_CALLS = 200


class Timed(torch.nn.Module):
    """Wraps a denoiser and accumulates the wall time of its forwards."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seconds = 0.0
        for k in ("prediction", "schedule", "condition_names", "condition_groups", "amg_weight"):
            setattr(self, k, getattr(inner, k, None))

    def prepare_conditions(self, cond, x):  # once per sample, outside the timed forwards (as the engine does)
        return self.inner.prepare_conditions(cond, x)

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


@dataclasses.dataclass
class Case:
    """A good/bad model pair and a way to make inputs for a batch size."""

    name: str
    good: torch.nn.Module
    bad: torch.nn.Module
    inputs: Callable[[int], tuple[torch.Tensor, dict, dict]]  # batch -> (x, cond, bad_cond)


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def embedded_case(device: torch.device) -> Case:
    pipe = Pipeline.from_pretrained(device=device)
    good, bad = pipe.model, pipe.bad
    fps = pipe.video_spec.fps

    def inputs(batch: int):
        frames = torch.randint(0, 255, (batch, int(EMBEDDED_SECONDS * fps), 32, 32, 3), dtype=torch.uint8,
                               device=device)  # fmt: skip
        with torch.no_grad():
            cond, bad_cond = good.encode_conditions({"video": frames}), bad.encode_conditions({"video": frames})
        n = pipe.audio_spec.num_frames(EMBEDDED_SECONDS)
        return torch.randn(batch, good.n_mels, n, device=device), cond, bad_cond

    return Case("embedded", good, bad, inputs)


def mmaudio_case(device: torch.device) -> Case:
    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = MMAudio.from_variant("small_44k")
        with torch.no_grad():
            for p in net.parameters():
                p.normal_(0.0, WEIGHT_STD)
        nets.append(net.to(device).eval())
    good, bad = nets
    n = good.sequence_lengths(MMAUDIO_SECONDS)
    a = good.arch_kwargs

    def inputs(batch: int):
        g = torch.Generator(device).manual_seed(batch)
        cond = {
            "clip": torch.randn(batch, n["clip"], a["clip_dim"], device=device, generator=g),
            "sync": torch.randn(batch, n["sync"], a["sync_dim"], device=device, generator=g),
            "text": torch.randn(batch, a["text_seq_len"], a["text_dim"], device=device, generator=g),
        }
        return torch.randn(batch, n["latent"], a["latent_dim"], device=device, generator=g), cond, cond

    return Case("mmaudio_s", good, bad, inputs)


def measure(case: Case, method: str, batch: int, mode: str, steps: int, device: torch.device, repeats: int = 3) -> dict:
    x, cond, bad_cond = case.inputs(batch)
    timed = mode in TIMED_MODES
    if mode == "compiled":
        opts = {"fullgraph": True, "dynamic": False}
        good, bad = torch.compile(case.good, **opts), torch.compile(case.bad, **opts)
    elif timed:
        good, bad = Timed(case.good), Timed(case.bad)
    else:
        good, bad = case.good, case.bad
    ts = solvers.get_timesteps(good.schedule, steps)
    g = G.resolve(method, good, bad).on_grid([good.schedule.terms(float(t)).noise_level for t in ts])
    engine = GuidedDenoiser(
        good, g, cond, bad if g.needs_bad_model else None, bad_cond, batch_branches=mode != "naive",
        stack_models=mode == "stacked" and g.needs_bad_model, streams=mode == "streams", cuda_graph=mode == "graphs",
    )  # fmt: skip
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, fwds = [], []
    with torch.no_grad():
        for _ in range(1 + repeats):  # the first pass warms up (and compiles / captures)
            for m in (good, bad):
                if isinstance(m, Timed):
                    m.seconds = 0.0
            _sync(x)
            t0 = time.perf_counter()
            if mode in ("fused", "graphs"):
                solvers.fused_sample(engine, x, ts.tolist(), "euler")
            else:
                solvers.euler(lambda y, t: engine(y, t), x, ts.tolist(), good.schedule)
            _sync(x)
            times.append((time.perf_counter() - t0) / steps)
            fwds.append((good.seconds + bad.seconds) / steps if (timed and engine.stack is None) else float("nan"))
    best = min(range(1, len(times)), key=times.__getitem__)  # the least disturbed pass (a shared machine)
    step, fwd = times[best], fwds[best]
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


def combine_cost(case: Case, method: str, device: torch.device, rounds: int = OPERATOR_ROUNDS) -> float:
    """Seconds per call of the guidance combination alone at batch 1, on random branch predictions of the model's
    shape at mid-trajectory: ``Guidance.combine`` for an operator, the engine's linear kernel otherwise."""
    x, _, _ = case.inputs(1)
    g = G.resolve(method, case.good, case.bad).on_grid([1.0, 0.5, 0.0])
    level = 0.5
    t = case.good.schedule.t_from_noise_level(level)
    preds = {b: torch.randn_like(x) for b in g.branches(level)}
    coeffs = g.branch_coefficients(level)
    step = G.GuidedStep(x, t, level, case.good.schedule.terms(t), case.good.prediction, {})
    if g.is_linear:
        from v2a_sampler.kernels import combine

        def run():
            return combine(list(preds.values()), [coeffs[b] for b in preds], out_dtype=x.dtype)
    else:

        def run():
            return g.combine(preds, step)

    best = float("inf")
    for _ in range(rounds):
        _sync(x)
        t0 = time.perf_counter()
        for _ in range(COMBINE_CALLS):
            run()
        _sync(x)
        best = min(best, (time.perf_counter() - t0) / COMBINE_CALLS)
    return best


def measure_operators(case: Case, steps: int, device: torch.device, rounds: int = OPERATOR_ROUNDS) -> list[dict]:
    """Per-step time of each :data:`OPERATOR_CASES` pair at batch 1 (batched mode, plain Euler loop), the affine
    guidance and its operator timed alternately ``rounds`` times (the fastest pass of each counts), and the extra
    time of the operator's combination over the affine one (:func:`combine_cost`), which a loaded machine's noise
    on whole steps does not hide."""
    rows = []
    for affine, operator in OPERATOR_CASES:
        best = {affine: float("inf"), operator: float("inf")}
        for _ in range(rounds):
            for method in (affine, operator):
                r = measure(case, method, 1, "batched", steps, device, repeats=1)
                best[method] = min(best[method], r["step_ms"])
        extra_us = 1e6 * (combine_cost(case, operator, device) - combine_cost(case, affine, device))
        row = {"affine": affine, "operator": operator, "affine_ms": best[affine], "operator_ms": best[operator],
               "ratio": best[operator] / best[affine], "combine_extra_us": extra_us,
               "combine_extra_pct": 100 * extra_us / (1e3 * best[affine])}  # fmt: skip
        rows.append(row)
        print(f"{operator:<26}{best[operator]:>9.2f} ms  vs {affine:<5}{best[affine]:>9.2f} ms  "
              f"ratio {row['ratio']:.3f}x  combine +{extra_us:.0f} us ({row['combine_extra_pct']:.2f} % of a step)",
              flush=True)  # fmt: skip
    return rows


def _step_ms(good, bad, cond, method: str, x: torch.Tensor, steps: int) -> float:
    """One timed pass of ``steps`` Euler steps (ms per step) with batched branches."""
    g = G.resolve(method, good, bad)
    engine = GuidedDenoiser(good, g, cond, bad, cond)
    ts = solvers.get_timesteps(good.schedule, steps).tolist()
    with torch.no_grad():
        _sync(x)
        t0 = time.perf_counter()
        solvers.SOLVERS["euler"](lambda y, t: engine(y, t), x, ts, good.schedule)
        _sync(x)
    return 1000 * (time.perf_counter() - t0) / steps


def measure_perturbations(case: Case, steps: int, rounds: int = OPERATOR_ROUNDS) -> list[dict]:
    """Per-step time of AG and HG with each :data:`PERTURBATIONS` bad model against the checkpoint bad model (batch
    1; the two timed alternately ``rounds`` times, the fastest pass of each counts)."""
    from v2a_sampler.models.perturb import perturbed

    x, cond, _ = case.inputs(1)
    rows = []
    for method in ("ag", "hg"):
        for spec in PERTURBATIONS:
            bad = perturbed(case.good, spec)
            best = {"checkpoint": float("inf"), spec: float("inf")}
            for _ in range(rounds):
                best["checkpoint"] = min(best["checkpoint"], _step_ms(case.good, case.bad, cond, method, x, steps))
                best[spec] = min(best[spec], _step_ms(case.good, bad, cond, method, x, steps))
            row = {"method": method, "bad": spec, "checkpoint_ms": best["checkpoint"], "perturbed_ms": best[spec],
                   "ratio": best[spec] / best["checkpoint"]}  # fmt: skip
            rows.append(row)
            print(f"{method:<4}{spec:<28}{best[spec]:>9.2f} ms  vs checkpoint {best['checkpoint']:>8.2f} ms  "
                  f"ratio {row['ratio']:.3f}x", flush=True)  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description="per-step cost of guided sampling")
    ap.add_argument("--out", type=Path, default=Path("out/speed"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per configuration (the fastest counts)")
    ap.add_argument("--quick", action="store_true", help="batch 1 only, 3 steps")
    ap.add_argument("--large", action="store_true", help="also a random-weight MMAudio-S (small_44k architecture)")
    ap.add_argument("--compile", action="store_true", help="also the torch.compile mode (compiles per shape)")
    ap.add_argument("--modes", default=None, help="comma-separated subset of modes")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--operators", action="store_true", help="non-affine operators vs the same affine guidance")
    ap.add_argument("--perturbations", action="store_true", help="perturbed bad models vs the checkpoint bad model")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.batches, args.steps = "1", 3
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.perturbations:
        rows = measure_perturbations(embedded_case(device), args.steps)
        with open(args.out / "perturbations.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return
    if args.operators:
        rows = measure_operators(embedded_case(device), args.steps, device)
        with open(args.out / "operators.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return
    cases = [embedded_case(device)] + ([mmaudio_case(device)] if args.large else [])
    modes = ["naive", "batched", "stacked"] + (["compiled"] if args.compile else [])
    modes += ["fused", "streams", "graphs"] if device.type == "cuda" else []
    if args.modes:
        modes = [m for m in modes if m in args.modes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'})")
    print(f"{'model':<11}{'method':<7}{'batch':>6}{'mode':>10}{'step ms':>10}{'fwd ms':>9}{'outside %':>11}")
    for case in cases:
        params = sum(p.numel() for p in case.good.parameters()) / 1e6
        for batch in batches:
            for method in METHODS:
                for mode in modes:
                    r = {"model": case.name, "params_m": round(params, 1),
                         **measure(case, method, batch, mode, args.steps, device, args.repeats)}  # fmt: skip
                    rows.append(r)
                    print(f"{case.name:<11}{method:<7}{batch:>6}{mode:>10}{r['step_ms']:>10.1f}"
                          f"{r['forward_ms']:>9.1f}{r['outside_forward_pct']:>11.1f}", flush=True)  # fmt: skip
    with open(args.out / "speed.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("\nspeed-up over naive (per step):")
    for case in cases:
        for method in METHODS:
            cells = []
            for batch in batches:
                get = {r["mode"]: r["step_ms"] for r in rows if (r["model"], r["method"], r["batch"]) ==
                       (case.name, method, batch)}  # fmt: skip
                cells += [f"b{batch} {m}: {get['naive'] / v:.2f}x" for m, v in get.items() if m != "naive"]
            print(f"  {case.name:<11}{method:<6}" + "  ".join(cells))
    for case in cases:
        for mode in modes:
            pick = {m: [r["step_ms"] for r in rows if (r["model"], r["method"], r["batch"], r["mode"]) ==
                        (case.name, m, 1, mode)] for m in ("hg", "cfg")}  # fmt: skip
            if pick["hg"] and pick["cfg"]:
                ratio = statistics.mean(pick["hg"]) / statistics.mean(pick["cfg"])
                print(f"{case.name}: HG / CFG per-step time at batch 1 ({mode}): {ratio:.2f}x")


if __name__ == "__main__":
    main()
