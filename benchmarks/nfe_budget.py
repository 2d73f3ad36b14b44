"""Quality at equal compute: guidance methods x solvers swept over NFE budgets (per sample).

Each budget is turned into the most steps a (method, solver) pair can afford with its exact cost (CFG/AG 2, PG 3,
HG 4 branch evaluations per stage; Heun with N steps on a grid ending at sigma = 0 runs 2N - 1 stages), see
``benchmarks/bench.py``. Pairs whose single step already exceeds the budget are skipped. The ``nfe`` column is what
the sampler counted (``info.nfe``), not the budget.

* ``toy2d``: the 2D lab with exact metrics, at the lab's settings (``examples/toy2d/reproduce.py``: CFG 3, AG 3,
  PG (2, 2), HG (1.5, 1.5, 2), bad model ``bad_small``, Karras grid 80 -> 0.002).
* ``v2a``: the embedded V2A model at AudioMoG's V2A weights (bare names ``cfg``/``ag``/``pg``/``hg``) on held-out
  synthetic clips (as ``benchmarks/v2a_quality.py``): onset F1, class accuracy, Fréchet distance, diversity.

Besides the affine methods (:data:`METHODS`), the non-affine operators (:data:`OPERATOR_METHODS`: APG, guidance
rescale, CFG-Zero*, MAMBO-G at their defaults) wrap each task's CFG; they cost what CFG costs. The command line runs
all of them (``--methods``); :func:`run` defaults to the affine ones.

    python benchmarks/nfe_budget.py --quick --out out/nfe_budget        # < 3 minutes on 2 CPU cores
    python benchmarks/nfe_budget.py --out out/nfe_budget_full           # the full run (see NFE_BUDGET.md)

Writes ``OUT/results.csv`` (one row per task x method x solver x budget x seed), ``OUT/results_mean.csv`` (mean and
std over seeds), ``OUT/quality_vs_nfe.png`` (one panel per task, error bars = std over seeds) and
``OUT/summary.md`` (best method per budget per task).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import bench
import torch

from v2a_sampler.lab import experiment as E
from v2a_sampler.lab.metrics import METRIC_NAMES as LAB_METRICS
from v2a_sampler.lab.metrics import evaluate as lab_evaluate
from v2a_sampler.lab.metrics import outlier_threshold
from v2a_sampler.lab.toy2d import Toy2D, make_toy2d, pretrained
from v2a_sampler.solvers import SOLVERS, get_solver, get_timesteps, sample

TASKS = ("toy2d", "v2a")
METHODS = ("none", "cfg", "ag", "pg", "hg")
#: Non-affine operators around each task's CFG (``{}``), at their defaults.
OPERATOR_METHODS = {"apg": "apg({})", "rescale": "rescale({})", "zero_star": "zero_star({})", "mambo": "mambo({})"}
ALL_METHODS = (*METHODS, *OPERATOR_METHODS)
#: The solvers swept by default (the committed results); ``--solvers`` takes any of the registry's.
SOLVER_NAMES = ("euler", "heun", "dpmpp_2m", "dpmpp_2m_sde")
#: Bad model of the lab task (the paper's smaller, shorter-trained network).
LAB_BAD = "bad_small"
V2A_METRICS = ("onset_f1", "class_accuracy", "fd", "diversity")
#: The metric that ranks methods in summary.md, and whether higher is better.
PRIMARY: dict[str, tuple[str, bool]] = {"toy2d": ("sliced_w2", False), "v2a": ("fd", False)}
#: A second metric shown next to the primary one.
SECONDARY: dict[str, tuple[str, bool]] = {"toy2d": ("outlier_rate", False), "v2a": ("onset_f1", True)}
KEYS = ("task", "method", "solver", "budget", "steps", "nfe")
COLUMNS = (*KEYS, "seed", "seconds", *LAB_METRICS, *V2A_METRICS)
#: Seed offsets: noise of seed replicate s, class/clip-sample i is ``NOISE_STRIDE * s + i``; SDE noise adds SDE_OFFSET.
NOISE_STRIDE = 1000
SDE_OFFSET = 10**5
#: Held-out clip seeds relative to EVAL_SEED_OFFSET (the same clips as benchmarks/v2a_quality.py).
CLIP_SEED, REF_SEED = 500, 900
#: Generated samples per clip per seed replicate (diversity needs >= 2).
SAMPLES_PER_CLIP = 2


@dataclass(frozen=True)
class Config:
    """One benchmark configuration."""

    budgets: tuple[int, ...]
    seeds: int
    lab_samples: int  # samples per class of the 2D lab
    clips: int  # held-out V2A clips
    duration: float  # seconds per V2A clip


QUICK = Config(budgets=(8, 32, 64), seeds=2, lab_samples=384, clips=2, duration=1.0)
FULL = Config(budgets=(8, 16, 32, 64, 128), seeds=3, lab_samples=1024, clips=6, duration=4.0)  # 31 min on 2 cores


def lab_specs(methods: Sequence[str] = METHODS) -> dict[str, str]:
    """Guidance specs of the lab task (the lab's paper settings; operators around the lab's CFG)."""
    return {m: E.PAPER_GUIDANCE[m] if m in METHODS else OPERATOR_METHODS[m].format(E.PAPER_GUIDANCE["cfg"])
            for m in methods}  # fmt: skip


def v2a_specs(methods: Sequence[str] = METHODS) -> dict[str, str]:
    """Guidance specs of the V2A task (bare names: AudioMoG's V2A weights; operators around ``cfg``)."""
    return {m: m if m in METHODS else OPERATOR_METHODS[m].format("cfg") for m in methods}


def plan(
    budgets: Sequence[int], specs: Mapping[str, str], solvers: Sequence[str], final_sigma_zero: bool = True
) -> list[tuple[int, str, str, int]]:
    """Every affordable ``(budget, method, solver, steps)``; combinations that cannot fit one step are left out."""
    out = []
    for budget in budgets:
        for method, spec in specs.items():
            for solver in solvers:
                steps = bench.steps_for_budget(budget, bench.nfe_per_step(spec), solver, final_sigma_zero)
                if steps is not None:
                    out.append((budget, method, solver, steps))
    return out


def _ends_at_zero(schedule: Any) -> bool:
    return schedule.terms(float(schedule.data_end)).sigma == 0.0


def lab_draw(
    models: Mapping[str, Any], spec: str, solver: str, steps: int, label: int, n: int, seed: int
) -> tuple[torch.Tensor, int]:
    """``n`` lab samples of class ``label`` on the lab's Karras grid with ``steps`` steps; returns ``(x, info.nfe)``."""
    net = models["good"]
    ts = get_timesteps(net.schedule, steps, grid="karras", sigma_max=E.SIGMA_MAX, sigma_min=E.SIGMA_MIN)
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    cond = {"label": torch.full((n,), label, dtype=torch.long)}
    x, info = sample(net, noise, cond=cond, guidance=spec, bad=models[LAB_BAD], solver=solver, timesteps=ts,
                     generator=torch.Generator().manual_seed(SDE_OFFSET + seed))  # fmt: skip
    return x.to(torch.float64), info.nfe


def run_lab(
    budgets: Sequence[int],
    seeds: int,
    n_per_class: int,
    methods: Sequence[str] = METHODS,
    solvers: Sequence[str] = SOLVER_NAMES,
    models: Mapping[str, Any] | None = None,
    toy: Toy2D | None = None,
) -> list[dict[str, Any]]:
    """Per-seed rows of the 2D lab task (metrics averaged over the two classes)."""
    toy = toy or make_toy2d()
    models = models or {k: pretrained(k) for k in ("good", LAB_BAD)}
    specs = lab_specs(methods)
    thresholds = [outlier_threshold(toy, c) for c in range(toy.num_classes)]
    todo = plan(budgets, specs, solvers, _ends_at_zero(models["good"].schedule))
    rows = []
    for s in range(seeds):
        refs = [
            toy.sample(n_per_class, c, torch.Generator().manual_seed(E.REFERENCE_SEED + NOISE_STRIDE * s + c))[0]
            for c in range(toy.num_classes)
        ]
        for budget, method, solver, steps in todo:
            t0 = time.perf_counter()
            acc: dict[str, list[float]] = {k: [] for k in LAB_METRICS}
            nfe = 0
            for c in range(toy.num_classes):
                x, nfe = lab_draw(models, specs[method], solver, steps, c, n_per_class, NOISE_STRIDE * s + c)
                for k, v in lab_evaluate(toy, x, c, refs[c], thresholds[c]).items():
                    acc[k].append(v)
            row = {"task": "toy2d", "method": method, "solver": solver, "budget": budget, "steps": steps, "nfe": nfe}
            row |= {"seed": s, "seconds": time.perf_counter() - t0, **{k: sum(v) / len(v) for k, v in acc.items()}}
            rows.append(row)
    return rows


def run_v2a(
    budgets: Sequence[int],
    seeds: int,
    clips: int,
    duration: float,
    methods: Sequence[str] = METHODS,
    solvers: Sequence[str] = SOLVER_NAMES,
    pipe: Any = None,
) -> list[dict[str, Any]]:
    """Per-seed rows of the V2A task: :data:`SAMPLES_PER_CLIP` soundtracks per held-out clip per seed replicate."""
    from v2a_sampler.media.specs import resize_frames
    from v2a_sampler.metrics import evaluate_tracks
    from v2a_sampler.pipelines.embedded import Pipeline
    from v2a_sampler.synth import make_clip
    from v2a_sampler.training.synth_v2a import EVAL_SEED_OFFSET, RENDER_SIZE

    pipe = pipe or Pipeline.from_pretrained()
    vs = pipe.video_spec
    made = [make_clip(EVAL_SEED_OFFSET + CLIP_SEED + i, duration=duration, fps=vs.fps, size=RENDER_SIZE)
            for i in range(clips)]  # fmt: skip
    frames = [resize_frames(torch.from_numpy(c.frames), vs.frame_size * 3) for c in made]
    events = [c.events for c in made]
    refs = [make_clip(EVAL_SEED_OFFSET + REF_SEED + i, duration=duration, fps=vs.fps, size=32).audio
            for i in range(clips)]  # fmt: skip
    specs = v2a_specs(methods)
    todo = plan(budgets, specs, solvers, _ends_at_zero(pipe.model.schedule))
    rows = []
    for s in range(seeds):
        for budget, method, solver, steps in todo:
            t0 = time.perf_counter()
            # item j * clips + i is sample j of clip i, with noise seed NOISE_STRIDE * s + j * clips + i
            outs = pipe(frames * SAMPLES_PER_CLIP, guidance=specs[method], solver=solver, steps=steps,
                        seed=NOISE_STRIDE * s)  # fmt: skip
            tracks = [[(outs[j * clips + i].waveform.numpy(), outs[j * clips + i].sample_rate)
                       for j in range(SAMPLES_PER_CLIP)] for i in range(clips)]  # fmt: skip
            secs = (time.perf_counter() - t0) / len(outs)
            m = evaluate_tracks(tracks, events, refs)
            row = {"task": "v2a", "method": method, "solver": solver, "budget": budget, "steps": steps}
            row |= {"nfe": int(outs[0].info["nfe"]), "seed": s, "seconds": secs, **{k: m.get(k) for k in V2A_METRICS}}
            rows.append(row)
    return rows


def _metric_cols(task: str) -> tuple[str, ...]:
    return LAB_METRICS if task == "toy2d" else V2A_METRICS


def summarize(per_seed: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (task, method, solver, budget)."""
    out = []
    for task in TASKS:
        rows = [r for r in per_seed if r["task"] == task]
        if rows:
            out += bench.aggregate(rows, KEYS, (*_metric_cols(task), "seconds"))
    return out


def _best(rows: Sequence[Mapping[str, Any]], metric: str, higher: bool) -> Mapping[str, Any] | None:
    ok = [r for r in rows if not math.isnan(r[metric])]
    if not ok:
        return None
    return max(ok, key=lambda r: r[metric]) if higher else min(ok, key=lambda r: r[metric])


def _cell(r: Mapping[str, Any] | None, metric: str) -> str:
    if r is None:
        return "-"
    std = r[metric + bench.STD_SUFFIX]
    spread = "" if math.isnan(std) else f" ± {std:.2g}"
    return f"{r[metric]:.4g}{spread} ({r['solver']}, {r['steps']} st)"


def summary_markdown(mean_rows: Sequence[Mapping[str, Any]]) -> str:
    """Per task: the best (method, solver) per budget, and each method's best solver per budget."""
    parts = []
    for task in TASKS:
        rows = [r for r in mean_rows if r["task"] == task]
        if not rows:
            continue
        metric, higher = PRIMARY[task]
        metric2, higher2 = SECONDARY[task]
        arrow = "higher" if higher else "lower"
        parts.append(f"## {task}: ranked by `{metric}` ({arrow} is better), mean ± std over {rows[0]['seeds']} seeds\n")
        parts.append(f"| budget | best method | solver | steps | nfe | {metric} | {metric2} |")
        parts.append("|---|---|---|---|---|---|---|")
        budgets = sorted({r["budget"] for r in rows})
        for b in budgets:
            best = _best([r for r in rows if r["budget"] == b], metric, higher)
            if best is None:
                continue
            m2 = f"{best[metric2]:.4g}"
            parts.append(f"| {b} | **{best['method']}** | {best['solver']} | {best['steps']} | {best['nfe']} | "
                         f"{best[metric]:.4g} ± {best[metric + bench.STD_SUFFIX]:.2g} | {m2} |")  # fmt: skip
        parts.append(f"\nEach method's best solver per budget (`{metric}`; `{metric2}` ranks best in brackets):\n")
        methods = [m for m in ALL_METHODS if any(r["method"] == m for r in rows)]
        parts.append("| budget | " + " | ".join(methods) + " |")
        parts.append("|---|" + "---|" * len(methods))
        for b in budgets:
            cells = []
            for m in methods:
                cand = [r for r in rows if r["budget"] == b and r["method"] == m]
                best2 = _best(cand, metric2, higher2)
                extra = "" if best2 is None else f" [{best2[metric2]:.3g}]"
                cells.append(_cell(_best(cand, metric, higher), metric) + extra if cand else "-")
            parts.append(f"| {b} | " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts)


def run(config: Config, out: str | Path, tasks: Sequence[str] = TASKS, **kwargs: Any) -> list[dict[str, Any]]:
    """Run ``tasks`` at ``config`` and write results.csv, results_mean.csv, quality_vs_nfe.png, summary.md.

    ``kwargs`` (``methods``, ``solvers``) go to :func:`run_lab` / :func:`run_v2a`. Returns the per-seed rows.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    if "toy2d" in tasks:
        rows += run_lab(config.budgets, config.seeds, config.lab_samples, **kwargs)
    if "v2a" in tasks:
        rows += run_v2a(config.budgets, config.seeds, config.clips, config.duration, **kwargs)
    bench.write_csv(rows, out / "results.csv", COLUMNS)
    mean_rows = summarize(rows)
    metric_cols = [c for t in tasks for c in _metric_cols(t)]
    mean_cols = [*KEYS, "seeds", "seconds", *(x for c in metric_cols for x in (c, c + bench.STD_SUFFIX))]
    bench.write_csv(mean_rows, out / "results_mean.csv", mean_cols)
    panels = [(f"{t} (best solver per method)", PRIMARY[t][0], _best_solver_rows(mean_rows, t)) for t in tasks]
    bench.plot_errorbars(panels, "nfe", lambda r: r["method"], out / "quality_vs_nfe.png", log_x=True)
    (out / "summary.md").write_text(summary_markdown(mean_rows))
    return rows


def _best_solver_rows(mean_rows: Sequence[Mapping[str, Any]], task: str) -> list[Mapping[str, Any]]:
    """For the plot: per (method, budget), the row of the best solver under the task's primary metric."""
    metric, higher = PRIMARY[task]
    groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for r in mean_rows:
        if r["task"] == task:
            groups.setdefault((r["method"], r["budget"]), []).append(r)
    best = [_best(rs, metric, higher) for rs in groups.values()]
    return [r for r in best if r is not None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--quick", action="store_true", help="3 budgets, 2 seeds, few samples and clips")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--budgets", default=None, help="comma-separated NFE budgets per sample (overrides the mode)")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--samples", type=int, default=None, help="lab samples per class")
    ap.add_argument("--clips", type=int, default=None)
    ap.add_argument("--duration", type=float, default=None, help="seconds per V2A clip")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--solvers", default=",".join(SOLVER_NAMES), help=f"any of {', '.join(SOLVERS)}")
    ap.add_argument("--methods", default=",".join(ALL_METHODS), help=f"any of {', '.join(ALL_METHODS)}")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = QUICK if args.quick else FULL
    if args.budgets:
        cfg = replace(cfg, budgets=tuple(int(b) for b in args.budgets.split(",")))
    cfg = replace(cfg, seeds=args.seeds or cfg.seeds, lab_samples=args.samples or cfg.lab_samples,
                  clips=args.clips or cfg.clips, duration=args.duration or cfg.duration)  # fmt: skip
    t0 = time.perf_counter()
    names = tuple(get_solver(n.strip()).name for n in args.solvers.split(","))
    methods = tuple(m.strip() for m in args.methods.split(","))
    unknown = sorted(set(methods) - set(ALL_METHODS))
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; expected any of {', '.join(ALL_METHODS)}")
    run(cfg, args.out, tasks=[t.strip() for t in args.tasks.split(",")], solvers=names, methods=methods)
    elapsed = time.perf_counter() - t0
    print((args.out / "summary.md").read_text())
    print(f"config {cfg}; wrote {args.out}/results.csv, quality_vs_nfe.png, summary.md; total time {elapsed:.1f} s")


if __name__ == "__main__":
    main()
