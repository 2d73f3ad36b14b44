"""Data-set scale generation: a manifest of videos in, a folder of soundtracks and a run summary out.

    from v2a_sampler import Pipeline
    from v2a_sampler.datagen import run_manifest
    summary = run_manifest("videos.csv", "out/", Pipeline.from_pretrained(), guidance="hg", batch_size=8)

or ``v2a-sample --manifest videos.csv --out-dir out/ --batch-size 8`` (under ``torchrun --nproc-per-node N`` the
rows are sharded over the processes).

* **Manifest** (:func:`read_manifest`): a CSV file with a header row, or a JSONL file (one JSON object per line).
  Column ``video`` (required; relative paths resolve against the manifest's folder) and optional per-row options
  ``id`` (output name), ``duration`` (seconds from the start), ``seed`` and ``prompt``; other columns are kept in
  the summary. Errors are :class:`ManifestError` with one line naming the file and line.
* **Rows**: rows with the same video (after resolving) and the same options are *duplicates*: generated once,
  reported as ``duplicate``. Each distinct row writes ``<name>.wav`` (and ``<name>_v2a.mp4`` with ``mux``), where
  ``name`` is the row's ``id`` or ``<video stem>-<8 hex digits of a hash of the video and options>``: stable across
  runs and distinct for different videos with the same stem. A row without ``seed`` uses ``seed + row index``.
* **Sharding and batching**: distinct rows are dealt round-robin over the ranks (``RANK``/``WORLD_SIZE`` of
  ``torch.distributed``); each rank generates rows of equal duration (and prompt) ``batch_size`` at a time.
* **Resume**: a row is finished when all its output files exist (they are written to a temporary file and renamed),
  so a restarted run skips finished rows (``skipped``) and regenerates the rest; stale temporary files of this run's
  outputs are deleted. A video that cannot be read or generated is recorded as ``failed`` with its one-line error
  and the run goes on. Warnings about a row (a partial video, a re-encoded muxed video) are kept in its record
  (``warnings``); with ``RunConfig(strict=True)`` a partial video fails its row. ``overwrite=True`` regenerates
  every row.
* **State** (``DIR/.v2a/``): ``run.json`` (the settings outputs were made with; resuming with different settings is
  an error), ``log.rank-<r>.jsonl`` (one record per finished or failed row, appended after its files are renamed)
  and per-rank summary parts. ``DIR/summary.json`` (written atomically by rank 0 after all ranks finished) lists
  every row with its status and timing, per-rank figures and totals.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import error_line, printable
from ..media import io
from ..media.specs import DEFAULT_GL_ITERS
from ..pipelines.base import RunPlan, V2APipeline
from ..pipelines.config import MAX_SEED, RunConfig
from .common import MUX_SUFFIX, ProgressLines, captured_warnings

__all__ = [
    "LOG_PREFIX",
    "MUX_SUFFIX",
    "STATE_DIR",
    "SUMMARY_NAME",
    "DistInfo",
    "Manifest",
    "ManifestError",
    "ManifestRow",
    "dist_info",
    "output_names",
    "plan_rows",
    "read_log",
    "read_manifest",
    "run_manifest",
    "shard",
]

#: Option columns a manifest row may carry besides ``video``.
OPTION_COLUMNS = ("id", "duration", "seed", "prompt")
#: Output folder entries: the run summary, the state folder, and the mux suffix (``name_v2a.mp4``, as the CLI).
SUMMARY_NAME = "summary.json"
STATE_DIR = ".v2a"
RUN_CONFIG_NAME = "run.json"
LOG_PREFIX = "log.rank-"
PART_PREFIX = "summary.rank-"
#: Hex digits of the row hash in default output names.
HASH_DIGITS = 8
#: Temporary files of :func:`v2a_sampler.media.io.atomic_output` are ``.<target name>.<random>.part``.
TEMP_PATTERN = re.compile(r"^\.(?P<target>.+)\.[^.]+\.part$")
#: Characters kept in output names; others become ``_``.
UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
#: Rows whose frames are held while waiting for a full batch of equal duration, as a multiple of the batch size.
BUFFER_BATCHES = 4
#: How long ranks wait for each other at the final barrier (ranks may finish hours apart on large manifests).
BARRIER_TIMEOUT = _dt.timedelta(days=7)
#: Run settings that must match to resume into an existing output folder.
CONFIG_KEYS = (
    "model",
    "bad_model",
    "guidance",
    "solver",
    "steps",
    "seed",
    "duration",
    "dtype",
    "griffin_lim_iters",
    "options",
)


class ManifestError(io.V2AInputError):
    """A manifest that cannot be read: missing column, bad value, bad JSON line, ... (one line, with its location)."""


@dataclass(frozen=True)
class ManifestRow:
    """One manifest row: the resolved ``video`` path and its options (``None`` = not given)."""

    index: int  # 0-based position among the manifest's rows
    line: int  # 1-based line in the manifest file (0 for rows built in code)
    video: Path  # absolute, normalised (not symlink-resolved)
    source: str  # the video as written in the manifest
    id: str | None = None
    duration: float | None = None
    seed: int | None = None
    prompt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    base: Path = field(default_factory=Path.cwd)  # folder relative paths resolve against

    @property
    def key(self) -> str:
        """Identity of the row's work: the video (relative to the manifest folder) and its options."""
        rel = Path(os.path.relpath(self.video, self.base)).as_posix()
        return json.dumps([rel, self.duration, self.seed, self.prompt])

    @property
    def default_name(self) -> str:
        """``id`` when given, else ``<video stem>-<hash>`` (distinct for different videos or options)."""
        if self.id is not None:
            return self.id
        digest = hashlib.sha1(self.key.encode()).hexdigest()[:HASH_DIGITS]
        return f"{UNSAFE.sub('_', self.video.stem) or 'video'}-{digest}"


@dataclass(frozen=True)
class Manifest:
    """The rows of a manifest file and where it is."""

    path: Path | None
    rows: list[ManifestRow]


# ---------------------------------------------------------------------------------------------------------------
# Reading manifests
# ---------------------------------------------------------------------------------------------------------------


def _where(path: Path, line: int) -> str:
    return f"{path.name} line {line}" if line else path.name


def _text(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value).strip()
    return s or None


def _parse_row(values: dict[str, Any], index: int, line: int, path: Path, base: Path) -> ManifestRow:
    where = _where(path, line)
    video = values.get("video")
    if not isinstance(video, str) or not video.strip():
        raise ManifestError(f"{where}: missing or empty 'video'")
    source = video.strip()
    if "\x00" in source:
        raise ManifestError(f"{where}: 'video' contains a NUL character")
    full = Path(os.path.abspath(base / os.path.expanduser(source)))  # "~user" of no user stays as written
    row_id = _text(values.get("id"))
    if row_id is not None and (UNSAFE.search(row_id) or row_id.startswith(".") or len(row_id) > 200):
        raise ManifestError(f"{where}: id {row_id!r} is not a plain file name (letters, digits, '.', '_', '-')")
    duration = values.get("duration")
    if _text(duration) is None:
        duration = None
    else:
        try:
            duration = float(duration)
        except (TypeError, ValueError):
            raise ManifestError(f"{where}: bad duration {values['duration']!r} (seconds > 0)") from None
        if isinstance(values["duration"], bool) or not math.isfinite(duration) or duration <= 0:
            raise ManifestError(f"{where}: bad duration {values['duration']!r} (seconds > 0)")
    seed = values.get("seed")
    if _text(seed) is None:
        seed = None
    else:
        raw = seed
        if isinstance(raw, bool) or isinstance(raw, float):
            raise ManifestError(f"{where}: bad seed {raw!r} (an integer)")
        try:
            seed = int(str(raw).strip())
        except ValueError:
            raise ManifestError(f"{where}: bad seed {raw!r} (an integer)") from None
        if not 0 <= seed <= MAX_SEED:
            raise ManifestError(f"{where}: bad seed {raw!r} (an integer from 0 to 2**63 - 1)")
    prompt = values.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ManifestError(f"{where}: prompt must be text, got {type(prompt).__name__}")
    extra = {k: v for k, v in values.items() if k not in ("video", *OPTION_COLUMNS) and k is not None}
    try:  # kept in the summary and the logs, which are strict JSON
        json.dumps(extra, allow_nan=False)
    except (ValueError, RecursionError):
        raise ManifestError(f"{where}: other columns must hold plain JSON values (no NaN or infinity)") from None
    return ManifestRow(index, line, full, source, row_id, duration, seed, _text(prompt), extra, base)


def _read_csv(path: Path, text: str, base: Path) -> list[ManifestRow]:
    reader = csv.DictReader(text.splitlines(keepends=True))
    try:
        header = reader.fieldnames
    except csv.Error as e:
        raise ManifestError(f"{path.name}: cannot parse the CSV header ({e})") from None
    if not header:
        raise ManifestError(f"{path.name}: empty manifest (a CSV needs a header row with a 'video' column)")
    header = [h.strip() if h else h for h in header]
    reader.fieldnames = header
    if "video" not in header:
        raise ManifestError(f"{path.name}: missing column 'video' (columns: {', '.join(map(str, header))})")
    rows = []
    try:
        for values in reader:
            line = reader.line_num
            if None in values:
                raise ManifestError(f"{path.name} line {line}: more values than the {len(header)} columns")
            if not any(_text(v) for v in values.values()):
                continue  # blank line
            rows.append(_parse_row(values, len(rows), line, path, base))
    except csv.Error as e:
        raise ManifestError(f"{path.name} line {reader.line_num}: bad CSV ({e})") from None
    return rows


def _read_jsonl(path: Path, text: str, base: Path) -> list[ManifestRow]:
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path.name} line {line_no}: invalid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise ManifestError(f"{path.name} line {line_no}: JSON nested too deeply") from None
        if not isinstance(values, dict):
            raise ManifestError(f"{path.name} line {line_no}: expected a JSON object, got {type(values).__name__}")
        rows.append(_parse_row(values, len(rows), line_no, path, base))
    return rows


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read a ``.csv`` (header row) or ``.jsonl``/``.ndjson`` manifest; relative videos resolve against its folder."""
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"manifest not found: {p}")
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise ManifestError(f"unknown manifest format {p.suffix or '(no suffix)'}: use .csv or .jsonl ({p})")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{p.name}: not UTF-8 text (byte {e.start})") from None
    base = Path(os.path.abspath(p.parent))
    rows = _read_csv(p, text, base) if suffix == ".csv" else _read_jsonl(p, text, base)
    if not rows:
        raise ManifestError(f"{p.name}: the manifest has no rows")
    plan_rows(rows, p)  # id conflicts and name collisions are manifest errors
    return Manifest(Path(os.path.abspath(p)), rows)


# ---------------------------------------------------------------------------------------------------------------
# Planning: duplicates, names, seeds, shards
# ---------------------------------------------------------------------------------------------------------------


def plan_rows(rows: Sequence[ManifestRow], path: Path | None = None) -> tuple[list[ManifestRow], dict[int, int]]:
    """Distinct rows (first occurrences, in order) and ``{duplicate row index: index of its first occurrence}``.

    Raises :class:`ManifestError` when one id is given to different work, or two distinct rows get the same name.
    """
    first: dict[str, ManifestRow] = {}
    unique: list[ManifestRow] = []
    duplicates: dict[int, int] = {}
    ids: dict[str, ManifestRow] = {}
    names: dict[str, ManifestRow] = {}
    label = path.name if path is not None else "manifest"
    for row in rows:
        seen = first.get(row.key)
        if seen is not None and row.id in (None, seen.id):
            duplicates[row.index] = seen.index
            continue
        if row.id is not None and row.id in ids:
            raise ManifestError(f"{label} line {row.line}: id {row.id!r} already used on line {ids[row.id].line}")
        name = row.default_name.lower()  # case-insensitive file systems
        if name in names:
            raise ManifestError(f"{label} line {row.line}: output name {row.default_name!r} is already used on line "
                                f"{names[name].line}")  # fmt: skip
        first.setdefault(row.key, row)
        if row.id is not None:
            ids[row.id] = row
        names[name] = row
        unique.append(row)
    return unique, duplicates


def output_names(row: ManifestRow, mux: bool = False) -> list[str]:
    """File names a row writes in the output folder: ``<name>.wav`` (and ``<name>_v2a.mp4`` with ``mux``)."""
    name = row.default_name
    return [f"{name}.wav"] + ([f"{name}{MUX_SUFFIX}.mp4"] if mux else [])


def shard(rows: Sequence[ManifestRow], rank: int, world_size: int) -> list[ManifestRow]:
    """Rows of ``rank`` out of ``world_size``: every ``world_size``-th row starting at ``rank``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size}")
    return list(rows[rank::world_size])


# ---------------------------------------------------------------------------------------------------------------
# torch.distributed
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a ``torchrun`` job (rank 0 of 1 outside one)."""

    rank: int
    world_size: int
    local_rank: int


def dist_info() -> DistInfo:
    """Rank, world size and local rank from an initialised process group or ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``."""
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError("RANK and WORLD_SIZE must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad torch.distributed environment: RANK={rank}, WORLD_SIZE={world}")
    return DistInfo(rank, world, local)


def _init_group(info: DistInfo, device: torch.device) -> bool:
    """Join the job's process group (gloo on CPU, nccl on CUDA) when there are several ranks; True if created here."""
    import torch.distributed as dist

    if info.world_size == 1 or dist.is_initialized():
        return False
    if device.type == "cuda":
        gpu = torch.device("cuda", device.index if device.index is not None else info.local_rank)
        dist.init_process_group("nccl", timeout=BARRIER_TIMEOUT, device_id=gpu)
    else:
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    return True


def _barrier(device: torch.device, local_rank: int) -> None:
    import torch.distributed as dist

    if dist.get_backend() == "nccl" and device.type == "cuda":
        dist.barrier(device_ids=[device.index if device.index is not None else local_rank])
    else:
        dist.barrier()


# ---------------------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------------------


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: Any) -> None:
    with io.atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, indent=1, allow_nan=False, default=str) + "\n")


def _model_id(name: str | None) -> str | None:
    if name and name != "embedded" and Path(name).exists():
        return os.path.abspath(name)
    return name


def _check_config(state: Path, config: dict[str, Any], overwrite: bool, rank: int) -> None:
    path = state / RUN_CONFIG_NAME
    if path.exists() and not overwrite:
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if isinstance(old, dict):
            for key in CONFIG_KEYS:
                if key in old and old[key] != config.get(key):
                    raise io.V2AInputError(
                        f"{state.parent} holds outputs made with {key}={old[key]!r}, this run has {key}="
                        f"{config.get(key)!r}: use another --out-dir, or --overwrite to regenerate everything"
                    )
            return
    if rank == 0:
        _write_json(path, config)


def _clean_temp_files(folder: Path, targets: set[str], keep: set[str] | None = None) -> int:
    """Delete leftover temporary files in ``folder`` of the ``targets`` (with ``keep``: of every name not in it)."""
    removed = 0
    for entry in os.scandir(folder):
        m = TEMP_PATTERN.match(entry.name)
        if m is None or not entry.is_file(follow_symlinks=False):
            continue
        target = m.group("target")
        if target in targets or (keep is not None and target not in keep):
            Path(entry.path).unlink(missing_ok=True)
            removed += 1
    return removed


def _stderr_warn(message: str) -> None:
    print(f"warning: {printable(message)}", file=sys.stderr, flush=True)


@dataclass
class _Pending:
    row: ManifestRow
    seed: int
    frames: Any
    duration: float
    load_s: float
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Job:
    """Everything one rank's run needs, passed down whole."""

    manifest: Manifest
    out_dir: Path
    pipe: V2APipeline
    config: RunConfig
    plan: RunPlan
    dist: DistInfo
    device: torch.device
    batch_size: int
    mux: bool
    overwrite: bool
    progress: bool | Callable[[str], None] | None
    on_row: Callable[[dict[str, Any]], None] | None
    warn: Callable[[str], None]
    tag: str = ""  # "[rank r] " in multi-process runs

    @property
    def text(self) -> bool:
        return self.pipe.supports_text

    def record(self) -> dict[str, Any]:
        """The settings this folder's outputs are made with (``run.json``; resuming with others is an error)."""
        return {
            "model": _model_id(self.pipe.name),
            "bad_model": self.pipe.bad is not None,
            "guidance": self.plan.guidance.spec(),
            "solver": self.plan.solver,
            "steps": self.plan.steps,
            "seed": self.config.seed,
            "duration": self.config.duration,
            "dtype": str(self.pipe.dtype).removeprefix("torch."),
            "griffin_lim_iters": self.plan.pipeline_options.get("griffin_lim_iters", DEFAULT_GL_ITERS),
            "options": dict(self.plan.sampler.options),
        }


class _Runner:
    """Generates one rank's rows: buffering by duration, batching, writing, recording."""

    def __init__(self, job: _Job, log_path: Path, advance: Callable[[], None]) -> None:
        self.job, self.log_path, self.advance = job, log_path, advance
        self.records: list[dict[str, Any]] = []
        self.buckets: dict[tuple, list[_Pending]] = {}
        if log_path.is_file() and log_path.stat().st_size:  # a killed run may have torn the last line
            with open(log_path, "rb+") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")

    def base_record(self, row: ManifestRow, seed: int, status: str) -> dict[str, Any]:
        return {
            "row": row.index,
            "line": row.line,
            "id": row.id,
            "video": row.source,
            "path": str(row.video),
            "name": row.default_name,
            "outputs": output_names(row, self.job.mux),
            "status": status,
            "seed": seed,
            "duration": row.duration,
            "prompt": row.prompt,
            "rank": self.job.dist.rank,
            **({"extra": row.extra} if row.extra else {}),
        }

    def record(self, rec: dict[str, Any]) -> None:
        self.records.append(rec)
        if rec["status"] in ("done", "failed"):
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({**rec, "time": _now()}, allow_nan=False, default=str) + "\n")
                f.flush()
                os.fsync(f.fileno())
            if rec["status"] == "failed":
                self.job.warn(f"{self.job.tag}row {rec['row']} ({rec['video']}) failed: {rec['error']}")
            self.advance()
            if self.job.on_row is not None:
                self.job.on_row(rec)

    def fail(self, row: ManifestRow, seed: int, error: BaseException, seconds: float, warned=()) -> None:
        rec = self.base_record(row, seed, "failed")
        self.record({**rec, "error": error_line(error), "seconds": round(seconds, 4), **self.warned(row, warned)})

    def warned(self, row: ManifestRow, messages: Sequence[str]) -> dict[str, Any]:
        """Report a row's warnings (``warn``) and return them as record fields (none: no field)."""
        for m in messages:
            self.job.warn(f"{self.job.tag}row {row.index} ({row.source}): {m}")
        return {"warnings": list(messages)} if messages else {}

    def add(self, row: ManifestRow, seed: int) -> None:
        t0 = time.perf_counter()
        found: list[tuple[type[Warning], str]] = []
        try:
            wanted = row.duration if row.duration is not None else self.job.config.duration
            with captured_warnings() as found:
                frames, dur = self.job.pipe.load_video(row.video, wanted, strict=self.job.plan.strict)
        except Exception as e:  # one bad video must not stop the run
            self.fail(row, seed, e, time.perf_counter() - t0, [m for _, m in found])
            return
        key = (round(dur, 6), len(frames), row.prompt if self.job.text else None)
        bucket = self.buckets.setdefault(key, [])
        bucket.append(_Pending(row, seed, frames, dur, time.perf_counter() - t0, [m for _, m in found]))
        if len(bucket) >= self.job.batch_size:
            self.flush(key)
        elif sum(len(b) for b in self.buckets.values()) >= BUFFER_BATCHES * self.job.batch_size:
            self.flush(max(self.buckets, key=lambda k: len(self.buckets[k])))

    def flush_all(self) -> None:
        for key in list(self.buckets):
            self.flush(key)

    def flush(self, key: tuple) -> None:
        items = self.buckets.pop(key, [])
        if items:
            self.generate(items)

    def generate(self, items: list[_Pending]) -> None:
        t0 = time.perf_counter()
        prompt = items[0].row.prompt if self.job.text else None
        try:
            outs = self.job.pipe.generate([p.frames for p in items], self.job.plan, seed=[p.seed for p in items],
                                          duration=items[0].duration, prompt=prompt)  # fmt: skip
        except Exception as e:
            if len(items) > 1:  # find the row at fault: one at a time
                for p in items:
                    self.generate([p])
                return
            p = items[0]
            self.fail(p.row, p.seed, e, time.perf_counter() - t0 + p.load_s, p.warnings)
            return
        share = (time.perf_counter() - t0) / len(items)
        for p, audio in zip(items, outs, strict=True):
            t1 = time.perf_counter()
            names = output_names(p.row, self.job.mux)
            found: list[tuple[type[Warning], str]] = []
            try:
                with captured_warnings() as found:
                    audio.save(self.job.out_dir / names[0], overwrite=True)
                    if self.job.mux:
                        audio.mux(p.row.video, self.job.out_dir / names[1], overwrite=True)
            except Exception as e:
                (self.job.out_dir / names[0]).unlink(missing_ok=True)  # a row is all its files or none
                self.fail(p.row, p.seed, e, p.load_s + share + time.perf_counter() - t1,
                          p.warnings + [m for _, m in found])  # fmt: skip
                continue
            rec = self.base_record(p.row, p.seed, "done")
            rec.update(
                seconds=round(p.load_s + share + time.perf_counter() - t1, 4),
                audio_seconds=round(audio.duration, 4),
                batch=len(items),
                nfe=audio.info.get("nfe"),
                **self.warned(p.row, p.warnings + [m for _, m in found if m not in p.warnings]),
            )
            self.record(rec)


def _totals(records: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    counts = {s: sum(r["status"] == s for r in records) for s in ("done", "failed", "skipped", "duplicate")}
    audio = sum(r.get("audio_seconds") or 0.0 for r in records if r["status"] == "done")
    return {
        "rows": len(records),
        **counts,
        "generated_audio_seconds": round(float(audio), 3),
        "seconds": round(wall, 3),
        "clips_per_minute": round(60.0 * counts["done"] / wall, 3) if wall > 0 and counts["done"] else 0.0,
    }


#: Keyword settings :func:`run_manifest` accepts besides a :class:`RunConfig` (they override its fields).
_SETTINGS = ("guidance", "solver", "steps", "seed", "duration")


def run_manifest(
    manifest: str | os.PathLike | Manifest | Sequence[ManifestRow],
    out_dir: str | os.PathLike,
    pipeline: V2APipeline,
    config: RunConfig | None = None,
    *,
    batch_size: int = 1,
    mux: bool = False,
    overwrite: bool = False,
    progress: bool | Callable[[str], None] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    warn: Callable[[str], None] | None = None,
    griffin_lim_iters: int | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Generate every row of a manifest into ``out_dir``, skipping finished rows; returns the run summary.

    ``pipeline`` is any :class:`~v2a_sampler.pipelines.base.V2APipeline` (one per process). The run's settings
    are ``config`` (a :class:`~v2a_sampler.pipelines.config.RunConfig`; default: the pipeline's defaults) with
    ``settings`` (``guidance``, ``solver``, ``steps``, ``seed``, ``duration``) and ``griffin_lim_iters`` applied on
    top; they are resolved once for the pipeline before the first row. ``duration`` is the default for rows
    without one (``None``: the pipeline's default, the whole video for the embedded model and 8 s cut to the
    video for MMAudio). Under ``torchrun`` each rank generates its shard and rank 0 returns (and writes to
    ``out_dir/summary.json``) the summary of all ranks; other ranks return their own part. ``on_row`` is called
    with each ``done``/``failed`` record after it is logged; ``warn`` receives warnings (default: stderr).
    ``progress`` shows a progress bar (default: on rank 0 when stderr is a terminal); a callable instead receives
    a plain progress line every few seconds (``rows: 12/40 rows, 35s``; for logs, where a live bar cannot draw).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    unknown = sorted(set(settings) - set(_SETTINGS))
    if unknown:
        raise TypeError(f"run_manifest() got unexpected keyword argument(s) {', '.join(unknown)}")
    config = config or RunConfig()
    options = dict(config.options)
    if griffin_lim_iters is not None:
        options["griffin_lim_iters"] = griffin_lim_iters
    config = config.replace(**settings, options=options)
    plan = pipeline.plan(config)  # resolved once: a setting that can never work fails before the first row
    if isinstance(manifest, Manifest):
        man = manifest
    elif isinstance(manifest, str | os.PathLike):
        man = read_manifest(manifest)
    else:
        man = Manifest(None, list(manifest))
        if not man.rows:
            raise ManifestError("the manifest has no rows")
    info = dist_info()
    device = torch.device(getattr(pipeline, "device", "cpu"))
    own_group = _init_group(info, device)
    job = _Job(man, Path(out_dir), pipeline, config, plan, info, device, batch_size, mux, overwrite, progress,
               on_row, warn or _stderr_warn, f"[rank {info.rank}] " if info.world_size > 1 else "")  # fmt: skip
    try:
        return _run(job)
    finally:
        if own_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run(job: _Job) -> dict[str, Any]:
    started, t_start = _now(), time.perf_counter()
    man, out_dir, info, mux = job.manifest, job.out_dir, job.dist, job.mux
    unique, duplicates = plan_rows(man.rows, man.path)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = out_dir / STATE_DIR
    state.mkdir(exist_ok=True)
    config = job.record()
    _check_config(state, config, job.overwrite, info.rank)
    part = state / f"{PART_PREFIX}{info.rank}.json"
    part.unlink(missing_ok=True)

    seed = job.config.seed
    seeds = {r.index: (r.seed if r.seed is not None else seed + r.index) for r in unique}
    mine = shard(unique, info.rank, info.world_size)
    # leftovers of a killed run: each rank deletes its own rows' temporary files; rank 0 also the run's other ones
    all_names = {n for r in unique for n in output_names(r, mux)} if info.rank == 0 else None
    _clean_temp_files(out_dir, {n for r in mine for n in output_names(r, mux)}, all_names)
    _clean_temp_files(state, {part.name} | ({RUN_CONFIG_NAME} if info.rank == 0 else set()))
    if not job.text and info.rank == 0 and any(r.prompt for r in man.rows):
        job.warn(f"{job.tag}the model has no text condition: prompts are recorded in {SUMMARY_NAME} but not used")

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    lines = ProgressLines(job.progress) if callable(job.progress) else None
    show = job.progress is True or (job.progress is None and info.rank == 0 and sys.stderr.isatty())
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), disable=not show, transient=True) as bar:  # fmt: skip
        pending = [r for r in mine if job.overwrite or not all((out_dir / n).is_file() for n in output_names(r, mux))]
        task = bar.add_task(f"{job.tag}rows", total=len(pending))
        done = [0]

        def advance() -> None:
            bar.advance(task)
            done[0] += 1
            if lines is not None:
                lines.update(f"{job.tag}rows", done[0], len(pending), "rows")

        runner = _Runner(job, state / f"{LOG_PREFIX}{info.rank}.jsonl", advance)
        todo = {r.index for r in pending}
        for r in mine:
            if r.index not in todo:
                runner.record({**runner.base_record(r, seeds[r.index], "skipped"), "seconds": 0.0})
        for r in pending:
            runner.add(r, seeds[r.index])
        runner.flush_all()
    records = runner.records
    if info.rank == 0:
        names = {r.index: r for r in unique}
        for dup, orig in duplicates.items():
            row = man.rows[dup]
            rec = runner.base_record(row, seeds[orig], "duplicate")
            rec.update(name=names[orig].default_name, outputs=output_names(names[orig], mux), duplicate_of=orig,
                       seconds=0.0)  # fmt: skip
            records.append(rec)
    wall = time.perf_counter() - t_start
    mine_part = {"rank": info.rank, "started": started, "finished": _now(), "wall_seconds": wall, "rows": records}
    if info.world_size > 1:
        _write_json(part, mine_part)
        _barrier(job.device, info.local_rank)
        if info.rank != 0:
            return _summary(man, out_dir, config, info.world_size, job.batch_size, mux, [mine_part], started)
        parts = [json.loads((state / f"{PART_PREFIX}{r}.json").read_text()) for r in range(info.world_size)]
    else:
        parts = [mine_part]
    summary = _summary(man, out_dir, config, info.world_size, job.batch_size, mux, parts, started)
    _write_json(out_dir / SUMMARY_NAME, summary)
    return summary


def _summary(man, out_dir, config, world, batch_size, mux, parts, started) -> dict[str, Any]:
    rows = sorted((r for p in parts for r in p["rows"]), key=lambda r: r["row"])
    wall = max(p["wall_seconds"] for p in parts)
    per_rank = [{"rank": p["rank"], **_totals([r for r in p["rows"] if r["rank"] == p["rank"]], p["wall_seconds"])}
                for p in parts]  # fmt: skip
    totals = _totals(rows, wall)
    totals["unique"] = totals["rows"] - totals["duplicate"]
    return {
        "version": 1,
        "manifest": str(man.path) if man.path is not None else None,
        "out_dir": os.path.abspath(out_dir),
        "started": started,
        "finished": _now(),
        "world_size": world,
        "batch_size": batch_size,
        "mux": mux,
        "config": config,
        "complete": totals["failed"] == 0,
        "totals": totals,
        "per_rank": per_rank,
        "rows": rows,
    }


def read_log(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of the per-rank logs of an output folder (a torn last line of a killed run is ignored)."""
    records = []
    for path in sorted((Path(out_dir) / STATE_DIR).glob(f"{LOG_PREFIX}*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
