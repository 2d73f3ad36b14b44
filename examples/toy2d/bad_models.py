"""The bad-model zoo: which bad model makes autoguidance work, and does the diagnostic predict it?

    python examples/toy2d/bad_models.py --out out/bad_models                 # both families (~1.5 h, shared 2 cores)
    python examples/toy2d/bad_models.py --family ours --out out/bad_models   # one family
    python examples/toy2d/bad_models.py --out out/bad_models --stage confirm # only the HG / AG / CFG confirmation

For each lab family (``ours``: flow-matching ``ToyMLP``; ``edm2``: EDM2's log-density networks) it trains or derives
every bad model of the zoo (all from the family's good recipe, each run under 10 minutes on one CPU thread; trained
models are cached in ``OUT/<family>/models``):

* ``early<k>``: the good run's checkpoint after ``k`` iterations;
* ``w<d>_it<k>``: width ``d`` instead of 64, ``k`` iterations (``w32_it512`` is EDM2's / AudioMoG's bad model;
  ``w<d>_it4096`` is a reduced width at full length);
* ``*_ema<s>``: the same with another EMA profile (relative std ``s``);
* ``*_seed<k>``: the same recipe with another training seed;
* ``dropout<p>`` / ``skip<i>``: the good model itself with dropout at sampling / hidden layer ``i`` skipped.

Every bad model gets the diagnostic (:mod:`v2a_sampler.diagnostics`, exact, on held-out data and on unguided
trajectories: mean alignment, mean ``w*``, error ratio) and AG at ``w*``, 2 and 3 with the lab's metrics; then the
correlations between the diagnostic and AG's gain. Stage ``confirm`` takes each family's best bad model (pre-declared
rule: lowest AG outlier rate at w = 2 among bad models keeping >= 0.85x the unguided recall there) and measures
AG, CFG and HG against each other on fresh seeds.

Writes ``OUT/zoo.csv``, ``OUT/correlations.csv``, ``OUT/confirm.csv``, ``OUT/zoo_table.md`` and
``OUT/alignment_vs_gain.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from v2a_sampler.diagnostics import diagnose
from v2a_sampler.lab import edm2_toy
from v2a_sampler.lab import experiment as E
from v2a_sampler.lab import zoo as Z
from v2a_sampler.lab.families import FAMILIES, Family, get_family
from v2a_sampler.models import from_pretrained
from v2a_sampler.training import edm2_recipe
from v2a_sampler.training.lab_recipes import GOOD
from v2a_sampler.training.trainer import train

#: AG weights of the zoo (besides w*), and of the confirmation (AG, CFG).
ZOO_WEIGHTS = (2.0, 3.0)
CONFIRM_WEIGHTS = (1.5, 2.0, 3.0)
#: HG settings of the confirmation: AudioMoG's toy setting, and the same with the best bad model at w3 = 3.
CONFIRM_HG = ((1.5, 1.5, 2.0), (2.0, 2.0, 2.0))
#: Samples: held-out data for the diagnostic, trajectories, samples per AG run (all split over the family's classes).
N_DIAG, N_TRAJ, N_SAMPLES = 4096, 2048, 4096
#: Confirmation: samples per class and seeds (disjoint from the zoo's seed 0, against winner's-curse bias).
CONFIRM_SAMPLES, CONFIRM_SEEDS = 8192, (1, 2, 3)
#: Seed of the held-out data of the zoo's diagnostic (as in :func:`v2a_sampler.lab.zoo.measure`).
Z_SEED = 0
#: Rule for the "best" bad model: AG at w = 2 must keep this share of the unguided recall.
RECALL_FLOOR = 0.85
#: Checkpoints, widths, EMA profiles and seeds of the zoo.
EARLY = (128, 256, 512, 1024, 2048)
REDUCED = {32: (256, 512, 1024, 2048), 16: (512,)}
EMA_VARIANTS = (0.01, 0.05, 0.1)
SEEDS = (1, 2, 3, 4)
EARLY_SEEDS = (1, 2)
DROPOUTS = (0.1, 0.2)
SKIPS = (0, 3)
#: Predictors and outcomes of the correlation table.
PREDICTORS = (
    "data_alignment",
    "traj_alignment",
    "data_alignment_low",
    "traj_alignment_low",
    "data_w_star",
    "traj_w_star",
    "targets_w_star",
    "data_error_ratio",
    "data_guided_error_2",
    "traj_guided_error_2",
)
OUTCOMES = ("ag2_outlier_ratio", "ag2_recall_ratio", "agsched_outlier_ratio")
#: Kinds of bad model made by perturbing the good model at sampling time (no training).
PERTURBED = ("dropout", "skip")


@dataclass
class Bad:
    """A zoo entry: how it was made, and the (cached) network."""

    name: str
    kind: str
    params: dict[str, Any]
    net: Any
    train_seconds: float
    stochastic: bool = False


# ---------------------------------------------------------------------------------------------------------------
# Building the zoo
# ---------------------------------------------------------------------------------------------------------------


def _cached(folder: Path) -> Any | None:
    return from_pretrained(folder) if (folder / "config.json").is_file() else None


def _seconds(folder: Path) -> float:
    meta = json.loads((folder / "config.json").read_text()).get("training", {})
    return float(meta.get("zoo_train_seconds", meta.get("train_seconds", math.nan)))


def zoo_ours(work: Path, progress: bool) -> tuple[list[Bad], Any, Any]:
    """Our family's zoo (flow-matching ToyMLP, the lab's trainer), the zoo run's final good model (as a denoiser and
    as a network)."""
    runs, out = work / "runs", []

    def run(name: str, cfg: Any, desc: str) -> tuple[dict[int, Path], float]:
        folder = runs / name
        stamp = folder / "seconds.txt"
        if not stamp.is_file():
            start = time.perf_counter()
            train(cfg, folder, progress=progress, description=desc)
            stamp.write_text(f"{time.perf_counter() - start:.1f}\n")
        from v2a_sampler.training.trainer import list_checkpoints

        return list_checkpoints(folder), float(stamp.read_text())

    base = GOOD.replace(checkpoint_at=list(EARLY), save_training_state=False)
    ckpt, secs = run("good", base, "zoo: good run")
    good = from_pretrained(ckpt[GOOD.iterations])
    for it in EARLY:
        out.append(Bad(f"early{it}", "early", {"iteration": it, "width": 64}, from_pretrained(ckpt[it]), secs))
    for width, its in REDUCED.items():
        cfg = base.replace(arch_kwargs={**GOOD.arch_kwargs, "hidden_dim": width}, checkpoint_at=list(its))
        ckpt, secs = run(f"w{width}", cfg, f"zoo: width {width}")
        for it in (*its, GOOD.iterations):
            kind = "width" if it == GOOD.iterations else "width+early"
            params = {"iteration": it, "width": width}
            out.append(Bad(f"w{width}_it{it}", kind, params, from_pretrained(ckpt[it]), secs))
    short = {"iterations": 512, "checkpoint_at": []}
    paper = base.replace(arch_kwargs={**GOOD.arch_kwargs, "hidden_dim": 32}, **short)
    early = base.replace(**short)
    for label, cfg in (("w32_it512", paper), ("early512", early)):
        for std in EMA_VARIANTS:
            if std == GOOD.ema_std:
                continue
            ckpt, secs = run(f"{label}_ema{std:g}", cfg.replace(ema_std=std), f"zoo: {label} ema {std}")
            params = {"iteration": 512, "width": cfg.arch_kwargs["hidden_dim"], "ema_std": std}
            out.append(Bad(f"{label}_ema{std:g}", "ema", params, from_pretrained(ckpt[512]), secs))
    for label, cfg, seeds in (("w32_it512", paper, SEEDS), ("early512", early, EARLY_SEEDS)):
        for seed in seeds:
            ckpt, secs = run(f"{label}_seed{seed}", cfg.replace(seed=seed), f"zoo: {label} seed {seed}")
            params = {"iteration": 512, "width": cfg.arch_kwargs["hidden_dim"], "seed": seed}
            out.append(Bad(f"{label}_seed{seed}", "seed", params, from_pretrained(ckpt[512]), secs))
    out += perturbations(good, lambda net: net)
    return out, good, good


def zoo_edm2(work: Path, progress: bool) -> tuple[list[Bad], Any, Any]:
    """EDM2's family's zoo (exact-score training of log-density networks), the zoo run's final good model (as a
    class-A denoiser and as a network)."""
    models, out = work / "models", []
    base = edm2_recipe.RECIPES["good"]
    extra = tuple(s for s in EMA_VARIANTS if s != base.ema_std)

    def run(name: str, recipe: edm2_recipe.Recipe, keep: list[tuple[str, int, float]]) -> None:
        """Train ``recipe`` once and save the ``(name, iteration, ema_std)`` entries of ``keep`` (unless cached)."""
        if all((models / k).is_dir() for k, _, _ in keep):
            return
        start = time.perf_counter()
        nets = edm2_recipe.train_net(recipe, progress=progress, description=f"zoo: {name}")
        secs = round(time.perf_counter() - start, 1)
        for k, it, std in keep:
            edm2_toy.save_net(nets[(it, std)], models / k, recipe, it, std, zoo_train_seconds=secs)

    def load(name: str) -> Any:
        return from_pretrained(models / name)

    good_keep = [("good", base.iterations, base.ema_std)] + [(f"early{it}", it, base.ema_std) for it in EARLY]
    good_keep += [(f"early512_ema{s:g}", 512, s) for s in extra]
    run("good run", base.replace(checkpoint_at=EARLY, extra_ema_stds=extra), good_keep)
    good = load("good")
    good_secs = _seconds(models / "good")
    for it in EARLY:
        out.append(Bad(f"early{it}", "early", {"iteration": it, "width": 64}, load(f"early{it}"), good_secs))
    for width, its in REDUCED.items():
        keep = [(f"w{width}_it{it}", it, base.ema_std) for it in (*its, base.iterations)]
        if width == 32:
            keep += [(f"w32_it512_ema{s:g}", 512, s) for s in extra]
        run(f"width {width}", base.replace(hidden_dim=width, checkpoint_at=its, extra_ema_stds=extra), keep)
        for it in (*its, base.iterations):
            name = f"w{width}_it{it}"
            kind = "width" if it == base.iterations else "width+early"
            out.append(Bad(name, kind, {"iteration": it, "width": width}, load(name), _seconds(models / name)))
    for label in ("w32_it512", "early512"):
        for s in extra:
            name = f"{label}_ema{s:g}"
            params = {"iteration": 512, "width": 32 if label.startswith("w32") else 64, "ema_std": s}
            out.append(Bad(name, "ema", params, load(name), _seconds(models / name)))
    for label, width, seeds in (("w32_it512", 32, SEEDS), ("early512", 64, EARLY_SEEDS)):
        for seed in seeds:
            name = f"{label}_seed{seed}"
            run(name, base.replace(hidden_dim=width, iterations=512, seed=seed), [(name, 512, base.ema_std)])
            params = {"iteration": 512, "width": width, "seed": seed}
            out.append(Bad(name, "seed", params, load(name), _seconds(models / name)))
    uncond = edm2_toy.pretrained_net("uncond")

    def dispatch(net: Any) -> Any:
        return edm2_toy.class_dispatch({edm2_toy.CLASS_A: net}, uncond)

    out = [Bad(b.name, b.kind, b.params, dispatch(b.net), b.train_seconds, b.stochastic) for b in out]
    out += perturbations(good, dispatch)
    return out, dispatch(good), good


def perturbations(good: Any, wrap: Callable[[Any], Any]) -> list[Bad]:
    """Bad models made from the good network itself: dropout at sampling and skipped hidden layers."""
    out = []
    for p in DROPOUTS:
        net = Z.perturbed_copy(good, dropout=p)
        out.append(Bad(f"dropout{p:g}", "dropout", {"dropout": p}, wrap(net), 0.0, stochastic=True))
        out[-1].params["_module"] = net
    for i in SKIPS:
        out.append(Bad(f"skip{i}", "skip", {"skip": i}, wrap(Z.perturbed_copy(good, skip=(i,))), 0.0))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------------------


def measure_family(family: Family, work: Path, progress: bool) -> list[dict[str, Any]]:
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "rows.json"
    done = {r["name"]: r for r in json.loads(cache.read_text())} if cache.is_file() else {}
    bads, good, good_net = (zoo_edm2 if family.name == "edm2" else zoo_ours)(work, progress)
    shipped = family.models()
    exact = shipped["exact"]
    same = _same_weights(good_net, _shipped_good_net(family))
    base = Z.ag_metrics(family, good, None, 1.0, N_SAMPLES // len(family.classes))
    rows = []
    for b in bads:
        if b.name in done:
            rows.append(done[b.name])
            continue
        start = time.perf_counter()
        stochastic = [b.params["_module"]] if b.stochastic else []
        m = Z.measure(
            family,
            good,
            b.net,
            exact,
            ZOO_WEIGHTS,
            N_DIAG,
            N_TRAJ // len(family.classes),
            N_SAMPLES // len(family.classes),
            stochastic=stochastic,
        )
        row = {"family": family.name, "name": b.name, "kind": b.kind}
        row.update({k: v for k, v in b.params.items() if not k.startswith("_")})
        row["train_seconds"] = b.train_seconds
        row["measure_seconds"] = round(time.perf_counter() - start, 1)
        row.update(m)
        for key in ("ag2", "ag3", "agwstar", "agsched"):
            row[f"{key}_outlier_ratio"] = row[f"{key}_outlier_rate"] / base["outlier_rate"]
            row[f"{key}_recall_ratio"] = row[f"{key}_recall"] / base["recall"]
        row.update({f"none_{k}": v for k, v in base.items()})
        row["good_reproduced"] = same
        rows.append(row)
        done[b.name] = row
        cache.write_text(json.dumps(list(done.values()), indent=1))
        if progress:
            print(
                f"{family.name:>5} {b.name:<18} align data {row['data_alignment']:+.3f} "
                f"traj {row['traj_alignment']:+.3f}  w* {row['data_w_star']:.2f}  "
                f"AG(2): outliers x{row['ag2_outlier_ratio']:.2f} recall "
                f"x{row['ag2_recall_ratio']:.2f}  ({row['measure_seconds']:.0f} s)",
                flush=True,
            )
    return rows


def _shipped_good_net(family: Family) -> torch.nn.Module:
    if family.name == "edm2":
        return edm2_toy.pretrained_net("good")
    from v2a_sampler.lab.toy2d import pretrained

    return pretrained("good")


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two networks hold identical weights (the zoo's good run reproduces the shipped good model)."""
    ta, tb = a.state_dict(), b.state_dict()
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def correlations(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every predictor against every outcome, per family and pooled, for all bad models and for the trained ones
    only (without the perturbed good models, whose AG outcomes are of another kind: collapse or noise)."""
    out = []
    for fam in (*FAMILIES, "both"):
        for subset in ("all", "trained"):
            sel = [r for r in rows if fam in ("both", r["family"]) and (subset == "all" or r["kind"] not in PERTURBED)]
            if len(sel) < 4:
                continue
            for pred in PREDICTORS:
                for outcome in OUTCOMES:
                    x = [float(r[pred]) for r in sel]
                    if pred.endswith("error_ratio") or "guided_error" in pred:
                        x = [math.log10(v) if v > 0 else math.nan for v in x]
                    c = Z.correlation(x, [float(r[outcome]) for r in sel])
                    out.append({"family": fam, "subset": subset, "predictor": pred, "outcome": outcome, **c})
    return out


# ---------------------------------------------------------------------------------------------------------------
# Confirmation: the best bad model against CFG and HG, on fresh seeds
# ---------------------------------------------------------------------------------------------------------------


def best(rows: list[dict[str, Any]], family: str) -> dict[str, Any]:
    sel = [r for r in rows if r["family"] == family and r["ag2_recall_ratio"] >= RECALL_FLOOR]
    if not sel:
        sel = [r for r in rows if r["family"] == family]
    return min(sel, key=lambda r: r["ag2_outlier_rate"])


def confirm(family: Family, work: Path, name: str, progress: bool) -> list[dict[str, Any]]:
    bads, _, _ = (zoo_edm2 if family.name == "edm2" else zoo_ours)(work, False)
    shipped = family.models()
    chosen = {b.name: b for b in bads}[name]
    paper_bad = {b.name: b for b in bads}["w32_it512"]
    models = {"good": shipped["good"], "exact": shipped["exact"], "best": chosen.net, "paper": paper_bad.net}
    rows = [E.Method("exact", "none", model="exact"), E.Method("none", "none")]
    for w in CONFIRM_WEIGHTS:
        rows.append(E.Method(f"cfg({w:g})", f"cfg({w})"))
        rows.append(E.Method(f"ag({w:g})", f"ag({w})", bad="best"))
        rows.append(E.Method(f"ag({w:g})_paper", f"ag({w})", bad="paper"))
    for w1, w2, w3 in CONFIRM_HG:
        rows.append(E.Method(f"hg({w1:g},{w2:g},{w3:g})", f"hg({w1},{w2},{w3})", bad="best"))
    # AG at the best bad model's denoising-optimal schedule w*(t) (measured on held-out data, as in the zoo)
    x0, labels = family.held_out(N_DIAG, Z_SEED)
    grid = family.grid(shipped["good"].schedule)[:-1].tolist()
    Z.reset_dropout([chosen.params["_module"]] if chosen.stochastic else [])
    report = diagnose(shipped["good"], chosen.net, x0, {"label": labels}, levels=grid, exact=shipped["exact"])
    rows.append(E.Method("ag(w*(t))", report.w_star_guidance(clip=(0.0, Z.W_STAR_MAX)), bad="best"))
    from v2a_sampler.lab.families import run

    stochastic = [chosen.params["_module"]] if chosen.stochastic else []

    def step(method: str) -> None:
        Z.reset_dropout(stochastic)
        if progress:
            print(f"  {family.name} confirm: {method}", flush=True)

    per_seed, _ = run(family, models, rows, CONFIRM_SAMPLES, list(CONFIRM_SEEDS), on_step=step, keep=None)
    summary = E.summarize(per_seed)
    none = next(r for r in summary if r["method"] == "none")
    for r in summary:
        r["family"], r["best_bad"] = family.name, name
        r["outlier_ratio"] = r["outlier_rate"] / none["outlier_rate"]
        r["recall_ratio"] = r["recall"] / none["recall"]
    return summary


# ---------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------


def write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            vals = [r.get(c, "") for c in cols]
            w.writerow([f"{v:.5g}" if isinstance(v, float) else v for v in vals])


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| family | bad model | kind | align (data) | align (traj) | w* (data) | w* (targets, 95% CI) | err ratio | "
        "AG(mean w*) outl. / recall | AG(w*(t)) outl. / recall | AG(2) outl. / prec. / recall / cov. / SW2 | "
        "AG(3) outl. / recall |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['family']} | `{r['name']}` | {r['kind']} | {r['data_alignment']:+.3f} | {r['traj_alignment']:+.3f} "
            f"| {r['data_w_star']:.2f} | {r['targets_w_star']:.2f} [{r['targets_w_star_lo']:.2f}, "
            f"{r['targets_w_star_hi']:.2f}] | {r['data_error_ratio']:.1f} | "
            f"{r['agwstar_outlier_ratio']:.2f}x / {r['agwstar_recall_ratio']:.2f}x (w={r['w_star_used']:.2f}) | "
            f"{r['agsched_outlier_ratio']:.2f}x / {r['agsched_recall_ratio']:.2f}x | "
            f"{r['ag2_outlier_ratio']:.2f}x / {r['ag2_precision']:.3f} / {r['ag2_recall_ratio']:.2f}x / "
            f"{r['ag2_coverage']:.3f} / {r['ag2_sliced_w2']:.3f} | "
            f"{r['ag3_outlier_ratio']:.2f}x / {r['ag3_recall_ratio']:.2f}x |"
        )
    return "\n".join(lines)


def scatter(rows: list[dict[str, Any]], path: Path) -> None:
    """AG's outlier ratio at w = 2 against the diagnostic's mean alignment (data, trajectories) and error ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({r["kind"] for r in rows})
    markers = dict(zip(kinds, "osD^v<>pX*", strict=False))
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2), sharey=True)
    panels = (
        ("data_alignment", "mean alignment cos(e, D_b - D_g) on held-out data", False),
        ("traj_alignment", "mean alignment on unguided trajectories", False),
        ("data_error_ratio", "mean error ratio E|D_b - D*|² / E|D_g - D*|² (data)", True),
    )
    for ax, (pred, label, log_x) in zip(axes, panels, strict=True):
        for k, fam in enumerate(FAMILIES):
            for kind in kinds:
                sel = [r for r in rows if r["family"] == fam and r["kind"] == kind]
                if sel:
                    ax.scatter(
                        [r[pred] for r in sel],
                        [r["ag2_outlier_ratio"] for r in sel],
                        c=f"C{k}",
                        marker=markers[kind],
                        label=f"{fam}: {kind}",
                        s=30,
                    )
        ax.axhline(1.0, color="grey", lw=0.8)
        if log_x:
            ax.set_xscale("log")
        else:
            ax.axvline(0.0, color="grey", lw=0.8)
        ax.set_xlabel(label)
        ax.set_yscale("log")
    axes[0].set_ylabel("AG at w = 2: outlier rate / unguided (log; below 1 = fewer outliers)")
    axes[2].legend(fontsize=7, ncol=2)
    fig.suptitle("Bad-model zoo: what predicts AG's gain? (one point per bad model; 26 per family)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--family", choices=FAMILIES, action="append", help="default: both")
    ap.add_argument("--stage", choices=("zoo", "confirm", "all"), default="all")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    families = args.family or list(FAMILIES)
    progress = not args.quiet
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for name in families:
        rows += measure_family(get_family(name), args.out / name, progress)
    write_rows(rows, args.out / "zoo.csv")
    write_rows(correlations(rows), args.out / "correlations.csv")
    (args.out / "zoo_table.md").write_text(table(rows) + "\n")
    scatter(rows, args.out / "alignment_vs_gain.png")
    print(f"zoo: {len(rows)} bad models, {time.perf_counter() - start:.0f} s")
    if args.stage in ("confirm", "all"):
        conf = []
        for name in families:
            chosen = best(rows, name)["name"]
            conf += confirm(get_family(name), args.out / name, chosen, progress)
        write_rows(conf, args.out / "confirm.csv")
        for r in conf:
            print(
                f"{r['family']:>5} {r['method']:<16} outliers {100 * r['outlier_rate']:.2f}% "
                f"(x{r['outlier_ratio']:.2f}) recall {r['recall']:.3f} (x{r['recall_ratio']:.2f}) "
                f"precision {r['precision']:.3f} coverage {r['coverage']:.3f} sw2 {r['sliced_w2']:.4f}"
            )
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
