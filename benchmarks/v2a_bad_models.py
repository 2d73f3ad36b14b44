"""Which bad model should the embedded model ship with? Every candidate's AG and HG quality on the VALIDATION split.

Candidates (all guide the same good model): the trained ones of a recipe run (``v2a-train v2a --out RUN``):
earlier checkpoints, the shared base fine-tuned for fewer iterations (AudioMoG V2A), a smaller network (EDM2);
and perturbations of the good model itself (``perturb:...``: skipped blocks, identity attention (PAG), blurred
queries (SEG)). For each, AG at ``ag(2)`` (a weight where AG acts; AudioMoG's V2A ``ag(1.2)`` barely moves the
model) and HG at AudioMoG's V2A weights (the pipeline default) run on the validation clips of
``benchmarks/v2a_quality.py`` (``--split val``: seeds ``VALIDATION_SEED_OFFSET + i``, disjoint from the test clips),
Euler 25 steps, the same noise for every candidate.

Beside the quality, the autoguidance diagnostic of issue #14 (``v2a_sampler.diagnostics``: the mean over noise
levels of the denoising-optimal AG weight ``w*`` and the lower bound of the removable share of the error, from
per-sample targets on the validation clips' log-mels, with 95 % delta-method intervals) when that module exists;
otherwise the columns say ``n/a``.

Does the diagnostic predict anything on a real model? ``summary.md`` ends with the Spearman correlation over the
candidates between each diagnostic quantity (w*, the removable share, and the bad model's excess held-out loss,
which ranked the 2D lab's bad models) and each method's quality, with permutation p-values
(:func:`v2a_sampler.lab.zoo.correlation`).

Selection rule (fixed before measuring): among the candidates whose HG onset F1 is within ``F1_SLACK`` of the best
HG onset F1, the one with the lowest HG FD (HG is the pipeline's default guidance; onset timing first, then the
distribution match); AG(2) quality is reported beside it.

    python benchmarks/v2a_bad_models.py --run runs/v2a2 --out out/bad_models [--clips 16] [--samples 2]

Writes ``OUT/candidates.csv`` (one row per candidate x method), ``OUT/diagnostic.csv`` and ``OUT/summary.md``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import bench
import torch
from v2a_quality import METRICS, EvalSet, method_row

from v2a_sampler.models import from_pretrained
from v2a_sampler.models.perturb import is_spec as is_perturbation
from v2a_sampler.models.perturb import perturbed
from v2a_sampler.pipelines.embedded import Pipeline
from v2a_sampler.training.trainer import checkpoint_name
from v2a_sampler.training.v2a_recipe import RUN_DIRS, bad_candidates, run_recipe

#: Methods each candidate is scored with: label -> guidance spec.
METHODS = {"ag(2)": "ag(2)", "hg": "hg"}
#: Perturbations of the good model among the candidates (the SLG / PAG / SEG families of models/perturb.py).
PERTURBATIONS = ("perturb:skip=1", "perturb:skip=4", "perturb:identity=1", "perturb:identity=4", "perturb:blur=2")
#: Selection: candidates within this much of the best HG onset F1 compete on HG FD.
F1_SLACK = 0.02
DIAGNOSTIC_COLUMNS = ("w_star_mean", "w_star_mean_lo", "w_star_mean_hi", "rel_reduction_lb_mean", "excess_loss_mean")
#: Diagnostic quantities whose rank correlation with each method's quality over the candidates is reported.
PREDICTORS = {"w*": "w_star_mean", "removable share ≥": "rel_reduction_lb_mean", "excess loss": "excess_loss_mean"}


def candidates(run: Path, extra: Sequence[str] = PERTURBATIONS) -> dict[str, Any]:
    """``{name: model folder or perturbation spec}`` of every candidate of a recipe run."""
    found: dict[str, Any] = dict(bad_candidates(run, run_recipe(run)))
    for spec in extra:
        found[spec] = spec
    return found


def diagnostic(good: Any, bad: Any, data: EvalSet, audio_spec: Any) -> dict[str, float | str]:
    """Issue #14's diagnostic of ``bad`` for ``good`` on the validation clips (n/a when the module is missing)."""
    try:
        from v2a_sampler.diagnostics import diagnose  # type: ignore[import-not-found]
    except ImportError:
        return dict.fromkeys(DIAGNOSTIC_COLUMNS, "n/a")
    x0 = torch.stack([audio_spec.normalize(audio_spec.log_mel(torch.from_numpy(a))) for a, _ in data.real])
    n = min(x0.shape[-1], audio_spec.num_frames(len(data.real[0][0]) / data.real[0][1]))
    cond = {"video": torch.stack(data.frames)}
    report = diagnose(good, bad, x0[..., :n].float(), cond, estimator="targets", batch_size=8)
    stats = report.summary_stats()
    return {k: stats.get(k, math.nan) for k in DIAGNOSTIC_COLUMNS}


def select(rows: Sequence[Mapping[str, Any]]) -> str:
    """The selection rule of the module docstring, on the ``hg`` rows."""
    hg = [r for r in rows if r["method"] == "hg"]
    best_f1 = max(float(r["onset_f1"]) for r in hg)
    eligible = [r for r in hg if float(r["onset_f1"]) >= best_f1 - F1_SLACK]
    return min(eligible, key=lambda r: float(r["fd"]))["bad"]


def summary(rows: Sequence[Mapping[str, Any]], diag: Mapping[str, Mapping[str, Any]], chosen: str, caption: str) -> str:
    lines = [caption, "", "| bad model | AG(2) onset F1 | AG(2) class acc | AG(2) FD | HG onset F1 | HG class acc | "
             "HG FD | w* (95 % CI) | removable share ≥ | excess loss |", "|---|" + "---:|" * 9]  # fmt: skip
    by = {(r["bad"], r["method"]): r for r in rows}
    for name in dict.fromkeys(r["bad"] for r in rows):
        ag, hg, d = by.get((name, "ag(2)")), by.get((name, "hg")), diag.get(name, {})
        cells = []
        for r in (ag, hg):
            cells += (
                ["-"] * 3 if r is None else [f"{r[k]:.3f}" for k in ("onset_f1", "class_accuracy")] + [f"{r['fd']:.2f}"]
            )
        w = d.get("w_star_mean", "n/a")
        if isinstance(w, float):
            cells.append(f"{w:.2f} ({d['w_star_mean_lo']:.2f}, {d['w_star_mean_hi']:.2f})")
            cells.append(f"{d['rel_reduction_lb_mean']:.3f}")
        else:
            cells += ["n/a (issue #14)"] * 2
        excess = d.get("excess_loss_mean")
        cells.append(f"{excess:.4f}" if isinstance(excess, float) and math.isfinite(excess) else "n/a")
        mark = " **(shipped)**" if name == chosen else ""
        lines.append(f"| `{name}`{mark} | " + " | ".join(cells) + " |")
    lines += ["", *predictions(rows, diag)]
    return "\n".join(lines) + "\n"


def predictions(rows: Sequence[Mapping[str, Any]], diag: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown table: Spearman's rho (permutation p) over the candidates of each diagnostic quantity against each
    method's onset F1 and FD."""
    from v2a_sampler.lab.zoo import correlation

    names = [n for n in dict.fromkeys(r["bad"] for r in rows) if isinstance(diag.get(n, {}).get("w_star_mean"), float)]
    if len(names) < 4:
        return []
    by = {(r["bad"], r["method"]): r for r in rows}
    targets = [(f"{m} {label}", m, k) for m in METHODS for label, k in (("onset F1", "onset_f1"), ("FD", "fd"))]
    header = "| diagnostic | " + " | ".join(t for t, _, _ in targets) + " |"
    out = [f"Spearman's rho over the {len(names)} candidates (two-sided permutation p):", "", header,
           "|---|" + "---:|" * len(targets)]  # fmt: skip
    for label, key in PREDICTORS.items():
        cells = []
        for _, method, metric in targets:
            pairs = [(float(diag[n][key]), float(by[(n, method)][metric])) for n in names if (n, method) in by]
            c = correlation([a for a, _ in pairs], [b for _, b in pairs])
            cells.append(f"{c['spearman']:+.2f} (p {c['spearman_p']:.2f})" if "spearman_p" in c else "n/a")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def _read_csv(path: Path) -> list[dict[str, Any]]:
    import csv

    def value(v: str) -> Any:
        try:
            return float(v)
        except ValueError:
            return v

    with path.open() as f:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def collect(folders: Sequence[Path], args: argparse.Namespace, good_folder: Path) -> None:
    rows = [r for d in folders for r in _read_csv(d / "candidates.csv")]
    diag = {r["bad"]: r for d in folders if (d / "diagnostic.csv").is_file() for r in _read_csv(d / "diagnostic.csv")}
    write_outputs(rows, diag, args, good_folder, seconds=None)


def write_diagnostic(diag: Mapping[str, Mapping[str, Any]], out: Path) -> Path:
    """``OUT/diagnostic.csv``: one row per candidate, the :data:`DIAGNOSTIC_COLUMNS`."""
    rows = [{"bad": k, **{c: v.get(c) for c in DIAGNOSTIC_COLUMNS}} for k, v in diag.items()]
    return bench.write_csv(rows, out / "diagnostic.csv", ("bad", *DIAGNOSTIC_COLUMNS))


def write_outputs(
    rows: Sequence[Mapping[str, Any]],
    diag: Mapping[str, Mapping[str, Any]],
    args: argparse.Namespace,
    good_folder: Path,
    seconds: float | None,
) -> None:
    """``candidates.csv``, ``diagnostic.csv`` and ``summary.md`` (the table and the selection) in ``args.out``."""
    bench.write_csv(rows, args.out / "candidates.csv", ("bad", "method", "nfe", "seconds_per_clip", *METRICS))
    write_diagnostic(diag, args.out)
    chosen = select(rows)
    took = "" if seconds is None else f" ({seconds:.0f} s)"
    caption = (f"Bad-model candidates for {good_folder}: {args.clips} validation clips x {args.samples} seeds, "
               f"{args.duration:g} s, Euler {args.steps}; selection: lowest HG FD among candidates within "
               f"{F1_SLACK} of the best HG onset F1 -> `{chosen}`{took}")  # fmt: skip
    text = summary(rows, diag, chosen, caption)
    (args.out / "summary.md").write_text(text)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="recipe run folder (v2a-train v2a --out RUN)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--only", default=None, help="comma-separated candidate names (default: all)")
    ap.add_argument("--no-diagnostic", action="store_true")
    ap.add_argument("--diagnostic-only", action="store_true", help="only the diagnostic (diagnostic.csv), no sampling")
    ap.add_argument(
        "--collect",
        default=None,
        help="comma-separated OUT folders of earlier runs (e.g. candidates "
        "split over processes with --only): summarise and select over their rows instead of running",
    )
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    recipe = run_recipe(args.run)  # the run's own recipe (--quick, --iters ...)
    good_folder = args.run / RUN_DIRS["main"] / checkpoint_name(recipe["iterations"])
    if args.collect:
        collect([Path(d) for d in args.collect.split(",")], args, good_folder)
        return
    good = from_pretrained(good_folder)
    found = candidates(args.run)
    if args.only:
        found = {k: v for k, v in found.items() if k in args.only.split(",")}
    data = EvalSet.make(Pipeline(good), "val", args.clips, args.duration)
    rows, diag = [], {}
    t0 = time.perf_counter()
    for name, where in found.items():
        bad = perturbed(good, where) if is_perturbation(where) else from_pretrained(where)
        pipe = Pipeline(good, bad)
        for label, spec in {} if args.diagnostic_only else METHODS.items():
            row = method_row(pipe, data, spec, args.samples, args.steps)
            rows.append({"bad": name, **row, "method": label})
            print(f"{name:>22} {label:>6}: " + "  ".join(f"{k} {row[k]:.3f}" for k in METRICS if row[k] is not None),
                  flush=True)  # fmt: skip
        if not args.no_diagnostic:
            diag[name] = diagnostic(good, bad, data, pipe.audio_spec)
            print(f"{name:>22} diagnostic: {diag[name]}", flush=True)
        if not args.diagnostic_only:
            bench.write_csv(rows, args.out / "candidates.csv", ("bad", "method", "nfe", "seconds_per_clip", *METRICS))
    if args.diagnostic_only:
        write_diagnostic(diag, args.out)
        return
    write_outputs(rows, diag, args, good_folder, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
