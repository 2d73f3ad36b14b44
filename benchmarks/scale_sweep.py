"""Guidance-scale sweeps: each CFG, AG, PG and HG weight varied alone (x factor) around the defaults, several seeds.

* 2D lab (always): around the lab's settings (CFG 3, AG 3, PG (2, 2), HG (1.5, 1.5, 2)), bad model ``bad_small``,
  the lab's Heun solver on its Karras grid; exact metrics.
* V2A (``--v2a``): around AudioMoG's V2A weights (CFG 3, AG 1.2, PG (2.7, 0.15), HG (2.7, 2.5, 1.2)) with the
  pipeline's Euler solver; onset F1, class accuracy, FD, diversity on held-out clips.

    python benchmarks/scale_sweep.py --quick --out out/scale_sweep [--v2a]     # about a minute (+ ~1 min V2A)
    python benchmarks/scale_sweep.py --out out/scale_sweep_full --v2a

Writes ``OUT/scale_sweep.csv`` (per seed), ``OUT/scale_sweep_mean.csv`` (mean, std over seeds) and
``OUT/scale_sweep.png`` (primary metric against the weight factor, one series per weight, error bars = std).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import bench
import torch

from v2a_sampler.guidance import PAPER_DEFAULTS
from v2a_sampler.lab import experiment as E
from v2a_sampler.lab.metrics import METRIC_NAMES as LAB_METRICS
from v2a_sampler.lab.metrics import evaluate as lab_evaluate
from v2a_sampler.lab.metrics import outlier_threshold
from v2a_sampler.lab.toy2d import make_toy2d, pretrained

#: Default weights per method of each task (the lab's values are those of E.PAPER_GUIDANCE).
LAB_DEFAULTS: dict[str, tuple[float, ...]] = {"cfg": (3.0,), "ag": (3.0,), "pg": (2.0, 2.0), "hg": (1.5, 1.5, 2.0)}
V2A_DEFAULTS: dict[str, tuple[float, ...]] = {m: PAPER_DEFAULTS[m] for m in ("cfg", "ag", "pg", "hg")}
PARAM_NAMES: dict[str, tuple[str, ...]] = {"cfg": ("w",), "ag": ("w",), "pg": ("w1", "w2"), "hg": ("w1", "w2", "w3")}
QUICK_FACTORS = (0.5, 1.0, 2.0)
FULL_FACTORS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
LAB_BAD = "bad_small"
V2A_METRICS = ("onset_f1", "class_accuracy", "fd", "diversity")
PRIMARY = {"toy2d": "sliced_w2", "v2a": "fd"}
KEYS = ("task", "method", "param", "factor", "value", "spec", "nfe")
COLUMNS = (*KEYS, "seed", *LAB_METRICS, *V2A_METRICS)
#: Steps of the V2A sweep (quick / full) with the pipeline's default solver.
V2A_STEPS_QUICK, V2A_STEPS_FULL = 10, 25
SAMPLES_PER_CLIP = 2
NOISE_STRIDE = 1000


def variants(defaults: Mapping[str, tuple[float, ...]], factors: Sequence[float]) -> list[dict[str, Any]]:
    """One entry per (method, weight, factor): that weight scaled by ``factor``, the others at their defaults.

    The all-default spec of a method appears once per weight (factor 1), so every series passes through it.
    """
    out = []
    for method, ws in defaults.items():
        for i, param in enumerate(PARAM_NAMES[method]):
            for f in factors:
                vals = list(ws)
                vals[i] = ws[i] * f
                spec = f"{method}({','.join(f'{v:g}' for v in vals)})"
                out.append({"method": method, "param": param, "factor": f, "value": vals[i], "spec": spec})
    return out


def sweep_lab(factors: Sequence[float], seeds: int, n_per_class: int) -> list[dict[str, Any]]:
    """Per-seed lab rows (metrics averaged over classes); identical specs are sampled once per seed."""
    toy = make_toy2d()
    models = {"good": pretrained("good"), LAB_BAD: pretrained(LAB_BAD)}
    thresholds = [outlier_threshold(toy, c) for c in range(toy.num_classes)]
    rows, vs = [], variants(LAB_DEFAULTS, factors)
    for s in range(seeds):
        refs = [
            toy.sample(n_per_class, c, torch.Generator().manual_seed(E.REFERENCE_SEED + NOISE_STRIDE * s + c))[0]
            for c in range(toy.num_classes)
        ]
        cache: dict[str, dict[str, Any]] = {}
        for v in vs:
            if v["spec"] not in cache:
                method = E.Method(v["spec"], v["spec"], bad=LAB_BAD)
                acc: dict[str, list[float]] = {k: [] for k in LAB_METRICS}
                nfe = 0
                for c in range(toy.num_classes):
                    x, nfe = E.draw(method, models, toy, c, n_per_class, NOISE_STRIDE * s + c)
                    for k, val in lab_evaluate(toy, x, c, refs[c], thresholds[c]).items():
                        acc[k].append(val)
                cache[v["spec"]] = {"nfe": nfe, **{k: sum(a) / len(a) for k, a in acc.items()}}
            rows.append({"task": "toy2d", **v, "seed": s, **cache[v["spec"]]})
    return rows


def sweep_v2a(factors: Sequence[float], seeds: int, clips: int, duration: float, steps: int) -> list[dict[str, Any]]:
    """Per-seed V2A rows at AudioMoG's V2A weights, :data:`SAMPLES_PER_CLIP` soundtracks per clip per seed."""
    from v2a_sampler.media.specs import resize_frames
    from v2a_sampler.metrics import evaluate_tracks
    from v2a_sampler.pipelines.embedded import Pipeline
    from v2a_sampler.synth import make_clip
    from v2a_sampler.training.synth_v2a import EVAL_SEED_OFFSET, RENDER_SIZE

    pipe = Pipeline.from_pretrained()
    vs_ = pipe.video_spec
    made = [make_clip(EVAL_SEED_OFFSET + 500 + i, duration=duration, fps=vs_.fps, size=RENDER_SIZE)
            for i in range(clips)]  # fmt: skip
    frames = [resize_frames(torch.from_numpy(c.frames), vs_.frame_size * 3) for c in made]
    refs = [make_clip(EVAL_SEED_OFFSET + 900 + i, duration=duration, fps=vs_.fps, size=32).audio
            for i in range(clips)]  # fmt: skip
    rows = []
    for s in range(seeds):
        cache: dict[str, dict[str, Any]] = {}
        for v in variants(V2A_DEFAULTS, factors):
            if v["spec"] not in cache:
                outs = pipe(frames * SAMPLES_PER_CLIP, guidance=v["spec"], steps=steps, seed=NOISE_STRIDE * s)
                tracks = [[(outs[j * clips + i].waveform.numpy(), outs[j * clips + i].sample_rate)
                           for j in range(SAMPLES_PER_CLIP)] for i in range(clips)]  # fmt: skip
                m = evaluate_tracks(tracks, [c.events for c in made], refs)
                cache[v["spec"]] = {"nfe": int(outs[0].info["nfe"]), **{k: m.get(k) for k in V2A_METRICS}}
            rows.append({"task": "v2a", **v, "seed": s, **cache[v["spec"]]})
    return rows


def write_outputs(rows: Sequence[Mapping[str, Any]], out: Path) -> list[dict[str, Any]]:
    """CSV per seed, CSV of means/stds, and the error-bar plot; returns the mean rows."""
    bench.write_csv(rows, out / "scale_sweep.csv", COLUMNS)
    tasks = [t for t in PRIMARY if any(r["task"] == t for r in rows)]
    mean_rows: list[dict[str, Any]] = []
    for t in tasks:
        metrics = LAB_METRICS if t == "toy2d" else V2A_METRICS
        mean_rows += bench.aggregate([r for r in rows if r["task"] == t], KEYS, metrics)
    metric_cols = [c for t in tasks for c in (LAB_METRICS if t == "toy2d" else V2A_METRICS)]
    cols = [*KEYS, "seeds", *(x for c in metric_cols for x in (c, c + bench.STD_SUFFIX))]
    bench.write_csv(mean_rows, out / "scale_sweep_mean.csv", cols)
    panels = [(f"{t}: one weight x factor", PRIMARY[t], [r for r in mean_rows if r["task"] == t]) for t in tasks]
    bench.plot_errorbars(panels, "factor", lambda r: f"{r['method']}.{r['param']}", out / "scale_sweep.png", log_x=True)
    return mean_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--quick", action="store_true", help="3 factors, 2 seeds, few samples/clips")
    ap.add_argument("--v2a", action="store_true", help="also sweep the embedded V2A model")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    factors = QUICK_FACTORS if args.quick else FULL_FACTORS
    seeds = args.seeds or (2 if args.quick else 3)
    rows = sweep_lab(factors, seeds, 512 if args.quick else 2048)
    if args.v2a:
        clips, duration, steps = (2, 1.5, V2A_STEPS_QUICK) if args.quick else (8, 5.0, V2A_STEPS_FULL)
        rows += sweep_v2a(factors, seeds, clips, duration, steps)
    mean_rows = write_outputs(rows, args.out)
    for r in mean_rows:
        m = PRIMARY[r["task"]]
        print(f"{r['task']:<6} {r['spec']:<20} {r['param']:<3} x{r['factor']:<5g} {m}={r[m]:.4g}±{r[m + '_std']:.2g}")
    print(f"wrote {args.out}/scale_sweep.csv, scale_sweep_mean.csv, scale_sweep.png; {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
