"""Which guidance at equal cost, with statistics that hold: tuned on validation clips, scored on disjoint test clips.

For every NFE budget and method (none, CFG, AG, PG, HG on the embedded V2A model, and ``amg``: its AMG-trained
variant ``embedded-amg`` with CFG):

1. **Validation** (clips from ``v2a_sampler.tune.VALIDATION_SEED_OFFSET``): the solver is chosen among
   ``--solvers`` at the method's paper weights, then the weights are tuned for that solver and budget by
   :func:`v2a_sampler.tune.tune` (coordinate search with successive halving) on ``--metric``.
2. **Test** (the held-out clips of ``benchmarks/v2a_quality.py``, disjoint from validation and training): every
   method's chosen setting generates the same clips with the same noise seeds; per clip and seed the sufficient
   statistics of every metric are kept (``results_per_clip.csv``).
3. **Comparison**: per budget, each method against CFG (and the best method against the runner-up) by the paired
   bootstrap over test clips (:func:`v2a_sampler.metrics.stats.paired_bootstrap`, 95 % percentile intervals,
   ``*`` where the interval excludes 0); distribution metrics against one fixed reference set of real audio with at
   least ``--ref-windows`` embedding windows: the Fréchet distance (at equal generated window counts for every
   method) and KID with its standard error.

    python benchmarks/equal_nfe.py --quick --out out/equal_nfe          # a few minutes on 2 CPU cores
    python benchmarks/equal_nfe.py --out benchmarks/results/equal_nfe    # the committed run (see the README)

Writes ``OUT/settings.csv`` (the validation choices), ``OUT/results_per_clip.csv``, ``OUT/results.csv`` (pooled
test metrics per budget and method) and ``OUT/summary.md``. Each finished (budget, method) is kept in
``OUT/parts/`` at once, so a killed run resumes where it stopped, and budgets can run in parallel processes
(``--budgets 16,32,64`` and ``--budgets 128`` into one OUT; then a plain run finds every part and writes the tables).
A part made with another model or configuration is an error, not silently reused.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads: BLAS threads stall on shared cores

import argparse
import hashlib
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import bench
import torch

from v2a_sampler import guidance as G
from v2a_sampler import tune as T
from v2a_sampler.core.guidance import AMG_DEFAULT_CFG
from v2a_sampler.media.specs import resize_frames
from v2a_sampler.metrics.stats import (
    ClipScores,
    Comparison,
    clip_scores,
    kid,
    paired_bootstrap,
    pooled,
    reference_windows,
)
from v2a_sampler.pipelines import Pipeline, RunConfig
from v2a_sampler.solvers import get_solver
from v2a_sampler.synth import make_clip
from v2a_sampler.training.synth_v2a import EVAL_SEED_OFFSET, RENDER_SIZE

METHODS = ("none", "cfg", "ag", "pg", "hg", "amg")
BASELINE = "cfg"
#: The AMG-trained variant (MGAudio), sampled with CFG tuned on this grid of weights; pipeline by shipped name.
AMG, AMG_MODEL, AMG_GRID = "amg", "embedded-amg", (1.0, 3.0)
#: Test clips (as benchmarks/v2a_quality.py) and the reference audio for FD/KID (other clips).
TEST_SEED = EVAL_SEED_OFFSET + 500
REFERENCE_SEED = EVAL_SEED_OFFSET + 900
NOISE_SEED = 10_000  # test noise: NOISE_SEED + 1000 * seed + clip
REPORTED = ("onset_f1", "class_accuracy", "fd", "kid")


@dataclass(frozen=True)
class Config:
    budgets: tuple[int, ...]
    solvers: tuple[str, ...]
    val_clips: int
    val_seeds: int
    test_clips: int
    test_seeds: int
    duration: float
    ref_windows: int
    grid_points: int
    passes: int


QUICK = Config(budgets=(16, 64), solvers=("euler", "dpmpp_2m"), val_clips=4, val_seeds=1, test_clips=6,
               test_seeds=2, duration=2.0, ref_windows=200, grid_points=3, passes=1)  # fmt: skip
FULL = Config(budgets=(16, 32, 64, 128), solvers=("euler", "heun", "dpmpp_2m", "dpmpp_2m_sde"), val_clips=12,
              val_seeds=2, test_clips=48, test_seeds=3, duration=4.0, ref_windows=2000, grid_points=5,
              passes=1)  # fmt: skip


def choose(
    pipe: Pipeline, val: T.ValidationSet, method: str, budget: int, config: Config, metric: str
) -> dict[str, Any] | None:
    """The solver (at the paper weights) and then the weights (tuned) of ``method`` at ``budget``, on validation.

    ``amg`` is the AMG-trained variant with CFG: its solver is chosen at MGAudio's ``cfg(1.45)`` and its weight tuned
    on :data:`AMG_GRID` (small extra guidance is what it is trained for)."""
    family = "cfg" if method == AMG else method
    paper = f"cfg({AMG_DEFAULT_CFG:g})" if method == AMG else method
    per_step = G.parse(paper).nfe_per_step
    units = [(c, s) for s in range(config.val_seeds) for c in range(len(val.clips))]
    best_solver, best_score = None, None
    higher = T.METRICS[metric]
    for solver in config.solvers:
        if get_solver(solver).steps_for_budget(budget, per_step) is None:
            continue
        scorer = T._Scorer(pipe, val, solver, budget, metric, 0, {})
        score = scorer.value(G.parse(paper), units)
        if best_score is None or (score > best_score if higher else score < best_score):
            best_solver, best_score = solver, score
    if best_solver is None:
        return None
    if method == "none":
        return {"solver": best_solver, "spec": "none", "val_score": best_score}
    space = T.SearchSpace.default(family, config.grid_points)
    if method == AMG:
        lo, hi = AMG_GRID
        space = T.SearchSpace(family, {"w": tuple(round(lo + (hi - lo) * k / (config.grid_points - 1), 6)
                                                  for k in range(config.grid_points))})  # fmt: skip
    res = T.tune(pipe, val, family, budget, best_solver, metric, config.val_seeds, space, passes=config.passes)
    return {"solver": best_solver, "spec": res.best.spec(), "val_score": res.score}


def test_scores(
    pipe: Pipeline,
    frames: Sequence[torch.Tensor],
    events: Sequence[list],
    spec: str,
    solver: str,
    budget: int,
    config: Config,
) -> tuple[ClipScores, int, int]:
    g = G.parse(spec)
    steps = get_solver(solver).steps_for_budget(budget, g.nfe_per_step)
    plan = pipe.plan(RunConfig(guidance=g, solver=solver, steps=steps))
    tracks: list[list] = [[] for _ in frames]
    for s in range(config.test_seeds):
        seeds = [NOISE_SEED + 1000 * s + i for i in range(len(frames))]
        outs = pipe.generate(frames, plan, seed=seeds, duration=config.duration)
        for i, a in enumerate(outs):
            tracks[i].append((a.waveform.numpy(), a.sample_rate))
    units = [[t] for clip in tracks for t in clip]  # one unit per (clip, seed), clip-major
    unit_events = [events[i] for i in range(len(frames)) for _ in range(config.test_seeds)]
    return clip_scores(units, unit_events), steps, plan.nfe


def _by_clip(scores: ClipScores, seeds: int) -> ClipScores:
    """Units (clip-major, ``seeds`` per clip) merged per clip: the bootstrap resamples clips, keeping pairs."""
    n = len(scores) // seeds
    out = ClipScores([], [], [], [])
    for i in range(n):
        sl = range(i * seeds, (i + 1) * seeds)
        total = scores.onsets[sl[0]]
        for k in sl[1:]:
            total = total + scores.onsets[k]
        out.onsets.append(total)
        out.class_correct.append(sum(scores.class_correct[k] for k in sl))
        out.class_total.append(sum(scores.class_total[k] for k in sl))
        out.windows.append(torch.cat([scores.windows[k] for k in sl]))
    return out


PARTS = "parts"


def _part_path(out: Path, budget: int, method: str) -> Path:
    return out / PARTS / f"{budget:04d}-{method}.pt"


def _signature(pipe: Pipeline, amg_pipe: Pipeline, config: Config, metric: str) -> dict[str, Any]:
    """What a saved part must have been made with to be reused: the weights (a hash of the good, bad and AMG
    networks' tensors, so a retrained model never reuses old parts), the metric and the configuration but its
    budget list."""
    kept = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items() if k != "budgets"}
    return {"weights": weights_hash(pipe, amg_pipe), "metric": metric, **kept}


def weights_hash(*pipes: Pipeline) -> str:
    """SHA-256 (16 hex digits) over the named tensors of every network of ``pipes`` (a perturbation bad model
    counts by its spec: it has no weights of its own)."""
    h = hashlib.sha256()
    for pipe in pipes:
        for role, net in (("good", pipe.model), ("bad", pipe.bad)):
            h.update(role.encode())
            if net is None:
                continue
            spec = getattr(getattr(net, "perturbation", None), "spec", None)
            if spec is not None:
                h.update(spec().encode())
                continue
            for name, t in sorted(net.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _load_part(path: Path, signature: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    part = torch.load(path, weights_only=False)
    if part["signature"] != signature:
        raise SystemExit(f"error: {path} was made with {part['signature']}, not {signature}; use another --out")
    return part


def _save_part(path: Path, part: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(part, tmp)
    tmp.replace(path)  # atomic: a killed run never leaves half a part


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--metric", default="onset_f1", help="the validation metric tuned for")
    ap.add_argument("--budgets", default=None)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--model", default=None, help="pipeline folder (default: the embedded model)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = QUICK if args.quick else FULL
    if args.budgets:
        config = replace(config, budgets=tuple(int(b) for b in args.budgets.split(",")))
    methods = [m.strip() for m in args.methods.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pipe = Pipeline.from_pretrained(args.model)
    vs = pipe.video_spec
    val = T.ValidationSet.synthetic(pipe, config.val_clips, config.duration)
    clips = [make_clip(TEST_SEED + i, duration=config.duration, fps=vs.fps, size=RENDER_SIZE)
             for i in range(config.test_clips)]  # fmt: skip
    frames = [resize_frames(torch.from_numpy(c.frames), vs.frame_size * 3) for c in clips]
    events = [list(c.events) for c in clips]
    refs, i = [], 0
    while sum(r.shape[0] for r in refs) < config.ref_windows:
        c = make_clip(REFERENCE_SEED + i, duration=config.duration, fps=vs.fps, size=32)
        refs.append(reference_windows([(c.audio, c.sample_rate)]))
        i += 1
    reference = torch.cat(refs)

    amg_pipe = Pipeline.from_pretrained(AMG_MODEL)
    signature = _signature(pipe, amg_pipe, config, args.metric)
    settings, per_clip, pooled_rows, scores = [], [], [], {}
    for budget in config.budgets:
        for method in methods:
            part = _load_part(_part_path(args.out, budget, method), signature)
            if part is not None:
                if part["chosen"] is not None:
                    settings.append(part["setting"])
                    per_clip += part["per_clip"]
                    pooled_rows.append(part["pooled"])
                    scores[(budget, method)] = part["scores"]
                    print(f"budget {budget} {method}: {part['chosen']['spec']} (from {PARTS}/)", flush=True)
                continue
            if method == AMG:
                # the tuner tries stronger CFG on it on purpose: the pipeline's warning about that is expected here
                warnings.filterwarnings("ignore", message="model was trained with AMG")
            here = amg_pipe if method == AMG else pipe
            chosen = choose(here, val, method, budget, config, args.metric)
            if chosen is None:
                _save_part(_part_path(args.out, budget, method), {"signature": signature, "chosen": None})
                continue
            settings.append({"budget": budget, "method": method, **chosen})
            sc, steps, nfe = test_scores(here, frames, events, chosen["spec"], chosen["solver"], budget, config)
            scores[(budget, method)] = _by_clip(sc, config.test_seeds)
            first_row = len(per_clip)
            for u in range(len(sc)):
                clip, seed = divmod(u, config.test_seeds)
                o = sc.onsets[u]
                per_clip.append({"budget": budget, "method": method, "spec": chosen["spec"], "solver": chosen["solver"],
                                 "steps": steps, "nfe": nfe, "clip": clip, "seed": seed, "onset_matched": o.matched,
                                 "onset_estimated": o.estimated, "onset_reference": o.reference,
                                 "class_correct": sc.class_correct[u], "class_total": sc.class_total[u],
                                 "windows": int(sc.windows[u].shape[0])})  # fmt: skip
            merged = scores[(budget, method)]
            k, k_se = kid(torch.cat(merged.windows), reference)
            pooled_rows.append({"budget": budget, "method": method, "spec": chosen["spec"], "solver": chosen["solver"],
                                "steps": steps, "nfe": nfe, "onset_f1": pooled(merged, "onset_f1"),
                                "class_accuracy": pooled(merged, "class_accuracy"),
                                "fd": pooled(merged, "fd", reference), "kid": k, "kid_se": k_se,
                                "gen_windows": int(sum(w.shape[0] for w in merged.windows)),
                                "ref_windows": int(reference.shape[0])})  # fmt: skip
            print(f"budget {budget} {method}: {chosen['spec']} {chosen['solver']} x{steps} "
                  f"-> onset F1 {pooled_rows[-1]['onset_f1']:.3f}, KID {k:.4f} ± {k_se:.4f}", flush=True)  # fmt: skip
            _save_part(_part_path(args.out, budget, method),
                       {"signature": signature, "chosen": chosen, "setting": settings[-1],
                        "per_clip": per_clip[first_row:], "pooled": pooled_rows[-1],
                        "scores": scores[(budget, method)]})  # fmt: skip
    for name, rows in (("settings.csv", settings), ("results_per_clip.csv", per_clip), ("results.csv", pooled_rows)):
        if rows:
            bench.write_csv(rows, args.out / name, list(rows[0]))
    text = summary(pooled_rows, scores, reference, config, args.metric)
    (args.out / "summary.md").write_text(text)
    print(text)
    print(f"config {config}; total time {time.perf_counter() - t0:.0f} s")


def summary(rows: Sequence[dict[str, Any]], scores: dict, reference: torch.Tensor, config: Config, metric: str) -> str:
    parts = [f"Weights and solvers tuned for `{metric}` on {config.val_clips} validation clips x {config.val_seeds} "
             f"seeds; scored on {config.test_clips} disjoint test clips x {config.test_seeds} seeds "
             f"({config.duration:g} s each); differences to `{BASELINE}` by the paired bootstrap over test clips "
             f"(95 % intervals, * = excludes 0); reference set {int(reference.shape[0])} windows.\n"]  # fmt: skip
    for budget in config.budgets:
        here = [r for r in rows if r["budget"] == budget]
        if not here:
            continue
        parts.append(f"### {budget} NFE\n")
        parts.append(
            "| method | setting | onset F1 | Δ onset F1 vs cfg | class acc | Δ class acc | FD | Δ FD | KID ± SE |"
        )
        parts.append("|---|---|---:|---|---:|---|---:|---|---|")
        base = scores.get((budget, BASELINE))
        for r in here:
            mine = scores[(budget, r["method"])]
            cells = []
            for m in ("onset_f1", "class_accuracy", "fd"):
                val = f"{r[m]:.3f}"
                if base is None or r["method"] == BASELINE:
                    cells += [val, ""]
                else:
                    cmp = paired_bootstrap(base, mine, m, reference if m == "fd" else None, n_boot=1000)
                    cells += [val, cmp.cell()]
            parts.append(f"| {r['method']} | `{r['spec']}` {r['solver']} x{r['steps']} | " + " | ".join(cells)
                         + f" | {r['kid']:.4f} ± {r['kid_se']:.4f} |")  # fmt: skip
        parts.append("")
        for m, label in WINNER_METRICS.items():
            best, runner, cmp = winner(here, scores, m, reference)
            if cmp is not None:
                parts.append(f"- best {label}: `{best}`; minus the runner-up `{runner}`: {cmp.cell()}")
        parts.append("")
    parts[1:1] = winners_table(rows, scores, reference, config.budgets)
    return "\n".join(parts)


#: Metrics whose winner per budget is tested against the runner-up, and how the summary names them.
WINNER_METRICS = {"onset_f1": "onset F1", "class_accuracy": "class accuracy", "fd": "FD"}
LOWER_IS_BETTER = ("fd", "kid")


def winner(
    here: Sequence[dict[str, Any]], scores: dict, metric: str, reference: torch.Tensor
) -> tuple[str | None, str | None, Comparison | None]:
    """``(best, runner_up, comparison)`` among one budget's methods on ``metric``: the paired bootstrap of best minus
    runner-up over the test clips (``None`` with fewer than two methods)."""
    if len(here) < 2:
        return None, None, None
    ranked = sorted(here, key=lambda r: r[metric], reverse=metric not in LOWER_IS_BETTER)
    best, runner = ranked[0], ranked[1]
    a, b = scores[(best["budget"], runner["method"])], scores[(best["budget"], best["method"])]
    cmp = paired_bootstrap(a, b, metric, reference if metric == "fd" else None, n_boot=1000)
    return best["method"], runner["method"], cmp


def winners_table(
    rows: Sequence[dict[str, Any]], scores: dict, reference: torch.Tensor, budgets: Sequence[int]
) -> list[str]:
    """Markdown: per budget, the winner of every metric with its margin over the runner-up (``*``: significant)."""
    lines = ["| NFE | best onset F1 (margin over runner-up) | best class acc | lowest FD | lowest KID ± SE |",
             "|---|---|---|---|---|"]  # fmt: skip
    for budget in budgets:
        here = [r for r in rows if r["budget"] == budget]
        if len(here) < 2:
            continue
        cells = []
        for m in WINNER_METRICS:
            best, runner, cmp = winner(here, scores, m, reference)
            value = next(r[m] for r in here if r["method"] == best)
            cells.append(f"`{best}` {value:.3f} ({cmp.cell()} vs `{runner}`)")
        k = min(here, key=lambda r: r["kid"])
        cells.append(f"`{k['method']}` {k['kid']:.4f} ± {k['kid_se']:.4f}")
        lines.append(f"| {budget} | " + " | ".join(cells) + " |")
    return ["", *lines, ""]


if __name__ == "__main__":
    main()
