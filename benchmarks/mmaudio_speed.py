"""MMAudio sampling time: the official sampling loop vs ours (batched CFG, and HG with a small bad model).

Same random weights for both (the official network's state dict loads into ours unchanged), same latent shapes,
25 Euler steps:

* ``official cfg``: ``FlowMatching.to_data`` over ``MMAudio.ode_wrapper`` (two network forwards per step, the
  conditions pre-processed once), as the official demo samples;
* ``ours cfg``: ``solvers.sample(..., guidance="cfg(4.5)")``: both branches in one batched forward per step;
* ``ours hg``: hierarchical guidance with ``--bad-variant`` as the bad model (4 branches, 2 forwards per step).

Targets (issue #8, on GPU): ours cfg <= 0.7x official cfg per clip; ours hg <= 1.0x official cfg.

    python benchmarks/mmaudio_speed.py --official /path/to/MMAudio --device cuda --dtype bf16
    python benchmarks/mmaudio_speed.py --official /path/to/MMAudio --reduced --threads 1   # CPU smoke run

The official code (and its torchdiffeq/einops imports) is needed only for the official rows. Writes
``mmaudio_speed.csv`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

from v2a_sampler import solvers
from v2a_sampler.mmaudio.network import VARIANTS, MMAudio

CFG_STRENGTH = 4.5  # the official demo's default
STEPS = 25  # the official demo's default
WEIGHT_STD = 0.02  # random weights (the official init zeroes the output layers)
#: A reduced width/depth for CPU smoke runs (same code paths).
REDUCED = dict(hidden_dim=64, depth=4, fused_depth=2, num_heads=2)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _random(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, WEIGHT_STD)
    return model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", default=None, help="checkout of hkchengrex/MMAudio (for the official rows)")
    ap.add_argument("--variant", default="large_44k", choices=list(VARIANTS))
    ap.add_argument("--bad-variant", default="small_44k", choices=list(VARIANTS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--reduced", action="store_true", help="reduced width/depth (CPU smoke run)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("out/mmaudio_speed"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    over = REDUCED if args.reduced else {}
    good = _random(MMAudio.from_variant(args.variant, **over), 0).to(device, dtype).eval()
    bad = _random(MMAudio.from_variant(args.bad_variant, **over), 1).to(device, dtype).eval()
    n, a = good.sequence_lengths(args.duration), good.arch_kwargs
    official = None
    if args.official:
        sys.path.insert(0, str(Path(args.official).resolve()))
        from mmaudio.model.flow_matching import FlowMatching
        from mmaudio.model.networks import MMAudio as Official

        kw = {k: a[k] for k in ("latent_dim", "clip_dim", "sync_dim", "text_dim", "hidden_dim", "depth",
                                "fused_depth", "num_heads", "mlp_ratio", "text_seq_len", "v2")}  # fmt: skip
        official = Official(**kw, latent_seq_len=n["latent"], clip_seq_len=n["clip"], sync_seq_len=n["sync"])
        official.load_state_dict(good.state_dict(), strict=True)
        official = official.to(device, dtype).eval()
        fm = FlowMatching(min_sigma=0.0, inference_mode="euler", num_steps=args.steps)
    rows = []
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), {args.dtype}, "
          f"{args.variant} (bad: {args.bad_variant}){' reduced' if args.reduced else ''}, {args.duration:g} s, "
          f"{args.steps} Euler steps")  # fmt: skip
    for batch in [int(b) for b in args.batches.split(",")]:
        g = torch.Generator(device).manual_seed(batch)
        x = torch.randn(batch, n["latent"], a["latent_dim"], device=device, generator=g).to(dtype)
        cond = {
            "clip": torch.randn(batch, n["clip"], a["clip_dim"], device=device, generator=g).to(dtype),
            "sync": torch.randn(batch, n["sync"], a["sync_dim"], device=device, generator=g).to(dtype),
            "text": torch.randn(batch, a["text_seq_len"], a["text_dim"], device=device, generator=g).to(dtype),
        }
        runs = {}
        if official is not None:

            def run_official(x=x, cond=cond, batch=batch):
                with torch.no_grad():
                    c = official.preprocess_conditions(cond["clip"], cond["sync"], cond["text"])
                    e = official.get_empty_conditions(batch)
                    return fm.to_data(lambda t, z: official.ode_wrapper(t, z, c, e, CFG_STRENGTH), x.clone())

            runs["official cfg"] = run_official

        def ours(spec: str, x=x, cond=cond):
            def run():
                with torch.no_grad():
                    return solvers.sample(good, x, cond, guidance=spec, bad=bad, solver="euler", steps=args.steps)

            return run

        runs["ours cfg"] = ours(f"cfg({CFG_STRENGTH})")
        runs["ours hg"] = ours("hg")
        times = {name: _time(fn, device, args.repeats) for name, fn in runs.items()}
        base = times.get("official cfg")
        for name, sec in times.items():
            rel = sec / base if base else float("nan")
            setting = {"device": str(device), "dtype": args.dtype, "variant": args.variant,
                       "bad_variant": args.bad_variant, "reduced": args.reduced, "duration": args.duration,
                       "steps": args.steps, "threads": torch.get_num_threads()}  # fmt: skip
            rows.append({**setting, "batch": batch, "run": name, "seconds_per_batch": sec,
                         "seconds_per_clip": sec / batch, "vs_official_cfg": rel})  # fmt: skip
            print(f"  batch {batch:>2}  {name:<13} {sec:8.3f} s/batch  {sec / batch:8.3f} s/clip  {rel:5.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "mmaudio_speed.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
