"""``v2a-eval``: score a folder of generated soundtracks against references, per clip (CSV) and overall (markdown).

    v2a-eval out/ --reference clips/                 # out/eval.csv + out/eval.md
    v2a-eval out/ -r clips/manifest.jsonl --metrics onsets,fd --out reports/

**Generated clips**: with a ``summary.json`` of a ``--manifest`` run (:mod:`v2a_sampler.datagen`), its finished rows
(each knows its source video and seed; rows of one video with different seeds are *samples* of one clip); else every
audio file (``.wav``, ``.flac``, ``.ogg``) in the folder, matched to references by file stem (a ``-<8 hex>`` name
suffix is ignored).

**References**: the synthetic world's event sidecars (``clip.events.json`` beside ``clip.mp4``, found next to the
source video or in a ``--reference`` folder) give onset and class ground truth; audio files (``.wav``, ``.flac``,
``.ogg``) in ``--reference`` folders, or the ``audio`` column of a synthetic ``manifest.jsonl``, are the real tracks
for Fréchet distance.

**Metrics** (:data:`METRICS`, the names ``--metrics`` takes): ``onsets`` (onset precision/recall/F1 within
±``tolerance``, pooled over clips), ``class_accuracy`` (timbre classifier on the audible events, pooled), ``fd``
(Fréchet distance of classifier window embeddings to the reference audio), ``diversity`` (mean pairwise distance of
samples of the same clip) — the definitions of :func:`v2a_sampler.metrics.evaluate_tracks`. More metrics plug in
by name: :func:`register_metric` in Python, a ``v2a_sampler.metrics`` entry point of an installed package, or
``--metrics package.module:function``. A metric whose inputs are missing is skipped with a note.
"""

from __future__ import annotations

import csv
import importlib
import importlib.metadata
import io as _io
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from rich.console import Console

from ..errors import error_line
from ..media import io
from ..metrics.classifier import TimbreClassifier, class_counts, load_classifier, window_embeddings
from ..metrics.diversity import DIVERSITY_SPACES, diversity
from ..metrics.frechet import frechet_distance
from ..metrics.inputs import METRIC_SAMPLE_RATE, audible_events, prepare_audio
from ..metrics.onsets import DEFAULT_TOLERANCE_S, OnsetCounts, onset_counts
from .common import EXIT_RUNTIME, EXIT_USAGE

__all__ = [
    "CSV_NAME",
    "DEFAULT_METRICS",
    "ENTRY_POINT_GROUP",
    "MD_NAME",
    "METRICS",
    "EvalClip",
    "EvalContext",
    "Evaluation",
    "Metric",
    "collect_generated",
    "evaluate_folder",
    "get_metric",
    "register_metric",
    "write_report",
]

CSV_NAME, MD_NAME = "eval.csv", "eval.md"
#: Entry-point group through which installed packages contribute metrics (name -> Metric or callable).
ENTRY_POINT_GROUP = "v2a_sampler.metrics"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
EVENTS_SUFFIX = ".events.json"
#: ``<stem>-<8 hex>``: the default output names of a manifest run.
HASH_SUFFIX = re.compile(r"^(?P<stem>.+)-[0-9a-f]{8}$")
#: Manifest-run statuses whose outputs exist.
FINISHED = ("done", "skipped")


MetricValue = float | int | None


# ---------------------------------------------------------------------------------------------------------------
# Clips, context, registry
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class EvalClip:
    """A generated track to score: its file, the clip it belongs to (``source``) and that clip's events."""

    name: str  # file name relative to the evaluated folder
    path: Path
    source: str  # identity of the scored clip: samples (seeds) of one clip share it
    events: list[dict[str, Any]] | None = None  # audible and silent GT events (None: no reference)
    events_path: Path | None = None
    seed: int | None = None
    _audio: tuple[torch.Tensor, int] | None = field(default=None, repr=False)

    def load(self) -> tuple[torch.Tensor, int]:
        """Mono float32 waveform ``[N]`` and its sample rate (cached while the clip is being scored)."""
        if self._audio is not None:
            return self._audio
        return io.read_audio(self.path)

    @property
    def audio(self) -> torch.Tensor:
        return self.load()[0]

    @property
    def sample_rate(self) -> int:
        return self.load()[1]


@dataclass
class EvalContext:
    """What set-level metrics see: every clip, the reference tracks and the shared classifier and settings."""

    clips: list[EvalClip]
    reference_audio: list[tuple[torch.Tensor, int]]
    classifier: TimbreClassifier
    tolerance: float = DEFAULT_TOLERANCE_S
    diversity_space: str = "embedding"
    _embeddings: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def embeddings(self, clip: EvalClip) -> torch.Tensor:
        """Classifier window embeddings ``[W, D]`` of a clip (computed once)."""
        if clip.name not in self._embeddings:
            audio, rate = clip.load()
            self._embeddings[clip.name] = window_embeddings(audio, rate, self.classifier)
        return self._embeddings[clip.name]

    def samples(self) -> dict[str, list[EvalClip]]:
        """Clips grouped by source, in order."""
        groups: dict[str, list[EvalClip]] = {}
        for clip in self.clips:
            groups.setdefault(clip.source, []).append(clip)
        return groups


@dataclass(frozen=True)
class Metric:
    """A named metric.

    ``scope="clip"``: ``compute(clip, ctx)`` returns a number, a ``{column: number}`` dict or None per clip; the
    summary is ``summarize(per-clip dicts)`` or, by default, the mean of each column over clips with a value.
    ``scope="set"``: ``compute(ctx)`` returns the summary (number, dict or None) from all clips at once.
    ``needs``: ``"events"`` (scored only on clips with reference events), ``"reference_audio"``.
    """

    name: str
    compute: Callable[..., Any]
    scope: str = "clip"
    needs: tuple[str, ...] = ()
    summarize: Callable[[list[dict[str, MetricValue]]], dict[str, MetricValue]] | None = None
    description: str = ""


#: Registered metrics by name (the built-ins first).
METRICS: dict[str, Metric] = {}


def register_metric(
    name: str,
    compute: Callable[..., Any] | None = None,
    *,
    scope: str = "clip",
    needs: Sequence[str] = (),
    summarize: Callable[[list[dict[str, MetricValue]]], dict[str, MetricValue]] | None = None,
    description: str = "",
) -> Any:
    """Register a metric under ``name`` (usable as a decorator); returns the :class:`Metric` (or the decorator)."""
    if scope not in ("clip", "set"):
        raise ValueError(f"metric scope must be 'clip' or 'set', got {scope!r}")

    def add(fn: Callable[..., Any]) -> Metric:
        metric = Metric(name, fn, scope, tuple(needs), summarize, description or (fn.__doc__ or "").strip())
        METRICS[name] = metric
        return metric

    return add if compute is None else add(compute)


def _as_metric(name: str, obj: Any) -> Metric:
    if isinstance(obj, Metric):
        return obj
    if callable(obj):
        return Metric(name, obj, "clip", (), None, (getattr(obj, "__doc__", "") or "").strip())
    raise ValueError(f"metric {name!r} is a {type(obj).__name__}, not a Metric or a callable")


def get_metric(name: str) -> Metric:
    """A metric by name: registered, from an installed package's entry point, or ``module:function``."""
    if name in METRICS:
        return METRICS[name]
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return _as_metric(name, ep.load())
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot load metric {name!r}: {e}") from None
        return _as_metric(attr, obj)
    known = sorted(set(METRICS) | {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})
    raise ValueError(f"unknown metric {name!r}; known: {', '.join(known)} (or module:function)")


# -- built-in metrics ---------------------------------------------------------------------------------------------


def _onsets(clip: EvalClip, ctx: EvalContext) -> dict[str, MetricValue]:
    audio, rate = clip.load()
    c = onset_counts(audio, rate, clip.events or [], ctx.tolerance)
    p, r, f1 = c.prf()
    return {"onset_precision": p, "onset_recall": r, "onset_f1": f1, "onset_matched": c.matched,
            "onset_detected": c.estimated, "onset_reference": c.reference}  # fmt: skip


def _pooled_onsets(rows: list[dict[str, MetricValue]]) -> dict[str, MetricValue]:
    total = OnsetCounts(0, 0, 0)
    for r in rows:
        total += OnsetCounts(int(r["onset_matched"]), int(r["onset_detected"]), int(r["onset_reference"]))
    p, r, f1 = total.prf()
    return {"onset_precision": p, "onset_recall": r, "onset_f1": f1, "onset_matched": total.matched,
            "onset_detected": total.estimated, "onset_reference": total.reference}  # fmt: skip


def _class_accuracy(clip: EvalClip, ctx: EvalContext) -> dict[str, MetricValue]:
    audio, rate = clip.load()
    correct, total = class_counts(audio, rate, clip.events or [], ctx.classifier)
    return {"class_accuracy": correct / total if total else None, "class_correct": correct, "class_total": total}


def _pooled_class_accuracy(rows: list[dict[str, MetricValue]]) -> dict[str, MetricValue]:
    correct, total = sum(int(r["class_correct"]) for r in rows), sum(int(r["class_total"]) for r in rows)
    return {"class_accuracy": correct / total if total else None, "class_correct": correct, "class_total": total}


def _fd(ctx: EvalContext) -> dict[str, MetricValue]:
    generated = torch.cat([ctx.embeddings(c) for c in ctx.clips])
    reference = torch.cat([window_embeddings(a, r, ctx.classifier) for a, r in ctx.reference_audio])
    return {"fd": frechet_distance(generated, reference), "fd_windows": generated.shape[0],
            "fd_reference_windows": reference.shape[0]}  # fmt: skip


def _diversity(ctx: EvalContext) -> dict[str, MetricValue] | None:
    values = []
    for group in ctx.samples().values():
        if len(group) >= 2:
            tracks = [prepare_audio(*c.load()) for c in group]
            values.append(diversity(tracks, METRIC_SAMPLE_RATE, ctx.diversity_space, ctx.classifier))
    if not values:
        return None
    return {"diversity": float(np.mean(values)), "diversity_clips": len(values)}


register_metric("onsets", _onsets, needs=("events",), summarize=_pooled_onsets,
                description="onset precision/recall/F1 against the audible events, pooled over clips")  # fmt: skip
register_metric("class_accuracy", _class_accuracy, needs=("events",), summarize=_pooled_class_accuracy,
                description="timbre-classifier accuracy on the audible events, pooled over clips")  # fmt: skip
register_metric("fd", _fd, scope="set", needs=("reference_audio",),
                description="Fréchet distance of classifier window embeddings to the reference audio")  # fmt: skip
register_metric("diversity", _diversity, scope="set",
                description="mean pairwise embedding distance of samples (seeds) of the same clip")  # fmt: skip

#: What ``v2a-eval`` computes without ``--metrics``.
DEFAULT_METRICS = ("onsets", "class_accuracy", "fd", "diversity")


# ---------------------------------------------------------------------------------------------------------------
# Finding clips and references
# ---------------------------------------------------------------------------------------------------------------


def _load_events(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
        events = data["events"] if isinstance(data, dict) else data
        audible_events(events)  # validates the fields metrics read
        return list(events)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise io.V2AInputError(f"cannot read events {path}: {type(e).__name__}: {e}") from None


@dataclass
class _References:
    events: dict[str, Path] = field(default_factory=dict)  # stem -> events sidecar
    audio: list[Path] = field(default_factory=list)


def _scan_references(paths: Iterable[str | os.PathLike], exclude: set[Path]) -> _References:
    refs = _References()
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in sorted(p.iterdir()):
                if f.name.startswith(".") or not f.is_file():
                    continue
                if f.name.endswith(EVENTS_SUFFIX):
                    refs.events.setdefault(f.name[: -len(EVENTS_SUFFIX)], f)
                elif f.suffix.lower() in AUDIO_SUFFIXES and f.resolve() not in exclude:
                    refs.audio.append(f)
        elif p.is_file() and p.suffix.lower() in (".jsonl", ".ndjson"):
            for n, line in enumerate(p.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise io.V2AInputError(f"{p.name} line {n}: invalid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise io.V2AInputError(f"{p.name} line {n}: expected a JSON object")
                if row.get("events"):
                    ev = p.parent / row["events"]
                    for key in (row.get("id"), Path(str(row.get("video") or "")).stem, ev.name[: -len(EVENTS_SUFFIX)]):
                        if key:
                            refs.events.setdefault(str(key), ev)
                if row.get("audio"):
                    refs.audio.append(p.parent / row["audio"])
        elif p.is_file() and p.name.endswith(EVENTS_SUFFIX):
            refs.events.setdefault(p.name[: -len(EVENTS_SUFFIX)], p)
        elif p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES:
            refs.audio.append(p)
        else:
            raise io.V2AInputError(f"reference not found or not a folder, manifest.jsonl, events JSON or audio: {p}")
    return refs


def collect_generated(folder: str | os.PathLike) -> list[EvalClip]:
    """The generated tracks of a folder: a manifest run's finished rows (``summary.json``) or every audio file."""
    root = Path(folder)
    if not root.is_dir():
        raise io.V2AInputError(f"not a folder: {root}")
    summary = root / "summary.json"
    clips: list[EvalClip] = []
    if summary.is_file():
        try:
            rows = json.loads(summary.read_text())["rows"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise io.V2AInputError(f"cannot read {summary}: {type(e).__name__}: {e}") from None
        for row in rows:
            if row.get("status") not in FINISHED:
                continue
            wav = root / row["outputs"][0]
            if wav.is_file():
                clips.append(EvalClip(wav.name, wav, source=str(row.get("path") or row["video"]), seed=row.get("seed")))
        return clips
    for f in sorted(root.iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in AUDIO_SUFFIXES:
            clips.append(EvalClip(f.name, f, source=_stem(f)))
    return clips


def _stem(path: Path) -> str:
    m = HASH_SUFFIX.match(path.stem)
    return m.group("stem") if m else path.stem


def _attach_events(clips: list[EvalClip], refs: _References) -> None:
    from ..synth import events_path

    for clip in clips:
        candidates: list[Path | None] = []
        source = Path(clip.source)
        if source.suffix:  # a video path of a manifest run: its sidecar first
            candidates.append(events_path(source))
        for key in (source.stem, Path(clip.name).stem, _stem(Path(clip.name))):
            candidates.append(refs.events.get(key))
        found = next((c for c in candidates if c is not None and c.is_file()), None)
        if found is not None:
            clip.events, clip.events_path = _load_events(found), found
            if not source.suffix:
                clip.source = str(found)  # samples of one clip share its events file


# ---------------------------------------------------------------------------------------------------------------
# Evaluating
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """Per-clip rows (the CSV), the summary (the markdown table), notes on skipped metrics, and counts."""

    folder: Path
    rows: list[dict[str, Any]]
    summary: dict[str, MetricValue]
    notes: list[str]
    counts: dict[str, int]


def _as_dict(name: str, value: Any) -> dict[str, MetricValue] | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return {str(k): _number(v) for k, v in value.items()}
    return {name: _number(value)}


def _number(v: Any) -> MetricValue:
    if v is None:
        return None
    if isinstance(v, torch.Tensor | np.ndarray | np.generic):
        v = np.asarray(v).item()
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    v = float(v)
    return None if math.isnan(v) else v


def _mean_summary(rows: list[dict[str, MetricValue]]) -> dict[str, MetricValue]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out = {}
    for k in keys:
        vals = [float(r[k]) for r in rows if r.get(k) is not None]
        out[k] = float(np.mean(vals)) if vals else None
    return out


def evaluate_folder(
    folder: str | os.PathLike,
    references: Sequence[str | os.PathLike] = (),
    metrics: Sequence[str | Metric] | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE_S,
    diversity_space: str = "embedding",
    classifier: TimbreClassifier | str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Score the generated tracks in ``folder`` with ``metrics`` (default :data:`DEFAULT_METRICS`)."""
    if diversity_space not in DIVERSITY_SPACES:
        raise ValueError(f"unknown diversity space {diversity_space!r}; expected one of {DIVERSITY_SPACES}")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be positive, got {tolerance}")
    chosen = [m if isinstance(m, Metric) else get_metric(m) for m in (metrics or DEFAULT_METRICS)]
    root = Path(folder)
    clips = collect_generated(root)
    if not clips:
        raise io.V2AInputError(f"no generated audio ({', '.join(AUDIO_SUFFIXES)}) in {root}")
    refs = _scan_references(references, {c.path.resolve() for c in clips})
    _attach_events(clips, refs)
    model = classifier if isinstance(classifier, TimbreClassifier) else load_classifier(classifier)
    reference_audio = [io.read_audio(p) for p in refs.audio]
    ctx = EvalContext(clips, reference_audio, model, tolerance, diversity_space)
    notes: list[str] = []
    with_events = [c for c in clips if c.events is not None]
    active: list[Metric] = []
    for m in chosen:
        if "events" in m.needs and not with_events:
            notes.append(f"{m.name}: skipped, no clip has reference events (pass --reference with .events.json)")
        elif "reference_audio" in m.needs and not reference_audio:
            notes.append(f"{m.name}: skipped, no reference audio (pass --reference with audio files)")
        else:
            active.append(m)
    if "events" in {n for m in active for n in m.needs} and len(with_events) < len(clips):
        notes.append(f"{len(clips) - len(with_events)} of {len(clips)} clips have no reference events")
    wants_embeddings = any(m.compute is _fd for m in active)

    rows: list[dict[str, Any]] = []
    per_metric: dict[str, list[dict[str, MetricValue]]] = {m.name: [] for m in active}
    for i, clip in enumerate(clips):
        audio, rate = io.read_audio(clip.path)
        clip._audio = (audio, rate)
        row: dict[str, Any] = {
            "file": clip.name,
            "source": clip.source,
            "seed": clip.seed,
            "duration_s": round(audio.shape[-1] / rate, 4),
            "events": clip.events_path.name if clip.events_path else None,
            "num_audible_events": len(audible_events(clip.events)[0]) if clip.events is not None else None,
        }
        try:
            for m in active:
                if m.scope != "clip" or ("events" in m.needs and clip.events is None):
                    continue
                values = _as_dict(m.name, m.compute(clip, ctx))
                if values is not None:
                    row.update(values)
                    per_metric[m.name].append(values)
            if wants_embeddings:
                ctx.embeddings(clip)
        finally:
            clip._audio = None
        rows.append(row)
        if progress is not None:
            progress(i + 1, len(clips))

    summary: dict[str, MetricValue] = {}
    for m in active:
        if m.scope == "clip":
            got = per_metric[m.name]
            if got:
                summary.update((m.summarize or _mean_summary)(got))
            else:
                notes.append(f"{m.name}: no value for any clip")
        else:
            values = _as_dict(m.name, m.compute(ctx))
            if values is None:
                why = " (needs two or more samples of one clip)" if m.name == "diversity" else ""
                notes.append(f"{m.name}: no value{why}")
            else:
                summary.update(values)
    counts = {
        "clips": len(clips),
        "clips_with_events": len(with_events),
        "sources": len(ctx.samples()),
        "reference_tracks": len(reference_audio),
    }
    return Evaluation(root, rows, summary, notes, counts)


# ---------------------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------------------


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _csv_text(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in columns])
    return buf.getvalue()


def markdown(ev: Evaluation) -> str:
    """The summary as a markdown document: counts, a metric table and notes."""
    c = ev.counts
    lines = [
        f"# Evaluation of {ev.folder}",
        "",
        f"{c['clips']} generated tracks of {c['sources']} clips, {c['clips_with_events']} with reference events; "
        f"{c['reference_tracks']} reference audio tracks.",
        "",
        "| metric | value |",
        "|---|---:|",
    ]
    for k, v in ev.summary.items():
        lines.append(f"| {k} | {'-' if v is None else (f'{v:.4f}' if isinstance(v, float) else v)} |")
    if ev.notes:
        lines += ["", *[f"* {n}" for n in ev.notes]]
    lines += ["", f"Per-clip values: `{CSV_NAME}`.", ""]
    return "\n".join(lines)


def write_report(ev: Evaluation, out_dir: str | os.PathLike | None = None, overwrite: bool = False) -> list[Path]:
    """Write ``eval.csv`` (per clip) and ``eval.md`` (summary) into ``out_dir`` (default: the evaluated folder)."""
    out = Path(out_dir) if out_dir is not None else ev.folder
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / CSV_NAME, out / MD_NAME]
    if not overwrite:
        for p in paths:
            if p.exists():
                raise io.V2AInputError(f"output exists: {p} (pass --overwrite to replace it)")
    for p, text in zip(paths, (_csv_text(ev.rows), markdown(ev)), strict=True):
        with io.atomic_output(p, overwrite=overwrite) as tmp:
            tmp.write_text(text)
    return paths


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None)
_err = Console(stderr=True, highlight=False, soft_wrap=True)
_out = Console(highlight=False, soft_wrap=True)


def _list_metrics() -> None:
    for name, m in METRICS.items():
        _out.print(f"{name:<16}{m.scope:<6}{m.description}", markup=False)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in METRICS:
            _out.print(f"{ep.name:<16}      (entry point {ep.value})", markup=False)


@app.command()
def main(
    folder: Annotated[Path | None, typer.Argument(help="Folder of generated audio.", show_default=False)] = None,
    reference: Annotated[
        list[Path] | None,
        typer.Option(
            "--reference",
            "-r",
            help="Reference folder (.events.json sidecars and/or audio files), synthetic manifest.jsonl, events JSON "
            "or audio file; repeatable. Sidecars beside a manifest run's source videos are found without it.",
            show_default=False,
        ),
    ] = None,
    metrics: Annotated[
        str, typer.Option(help="Comma-separated metric names (see --list-metrics) or module:function.")
    ] = ",".join(DEFAULT_METRICS),
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for eval.csv and eval.md (default: FOLDER).")
    ] = None,
    tolerance: Annotated[float, typer.Option(help="Onset matching tolerance, seconds.")] = DEFAULT_TOLERANCE_S,
    diversity_space: Annotated[str, typer.Option(help="embedding or logmel.")] = "embedding",
    classifier: Annotated[
        Path | None, typer.Option(help="Timbre classifier checkpoint stem (default: the shipped one).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing eval.csv/eval.md.")] = False,
    list_metrics: Annotated[bool, typer.Option("--list-metrics", help="List the metrics and exit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the output paths.")] = False,
) -> None:
    """Score generated soundtracks: per-clip CSV and summary markdown (onset F1, class accuracy, FD, diversity)."""
    if list_metrics:
        _list_metrics()
        return
    try:
        if folder is None:
            raise ValueError("no folder given (see v2a-eval --help)")
        names = [n.strip() for n in metrics.split(",") if n.strip()]
        if not names:
            raise ValueError("--metrics names no metric")
        chosen = [get_metric(n) for n in names]
        ev = evaluate_folder(folder, reference or [], chosen, tolerance=tolerance, diversity_space=diversity_space,
                             classifier=classifier)  # fmt: skip
        paths = write_report(ev, out, overwrite)
    except ValueError as e:  # includes V2AInputError
        _err.print(f"error: {error_line(e)}", markup=False)
        raise typer.Exit(EXIT_USAGE) from None
    except (RuntimeError, OSError) as e:
        _err.print(f"error: {error_line(e)}", markup=False)
        raise typer.Exit(EXIT_RUNTIME) from None
    if not quiet:
        _out.print(markdown(ev), markup=False)
    _out.print(f"-> {paths[0]}, {paths[1]}", markup=False)


def run() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        _err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    run()
