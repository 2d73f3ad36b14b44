"""``v2a-sample``: generate soundtracks for videos from the command line.

    v2a-sample video.mp4 --guidance hg            # writes video.wav next to the video
    v2a-sample clips/*.mp4 --out sounds/ --mux     # several inputs (or a quoted glob), WAV + muxed MP4 each

Every user error ends in one ``error:`` line on stderr and a non-zero exit code, never a traceback; outputs are
written atomically and existing files are never replaced without ``--overwrite``. Every input and every output path
is checked before a model is loaded; when one of several inputs fails during generation the others are still
generated, each failure gets its ``error:`` line and the exit code is non-zero.
"""

from __future__ import annotations

import glob
import importlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import __version__
from ..core import guidance as G
from ..core import solvers
from ..core.denoisers import FlowSchedule
from ..errors import error_line, printable
from ..pipelines.config import DTYPES, STEPS_WARN, ConfigError, RunConfig
from .common import EXIT_RUNTIME, EXIT_USAGE, MUX_SUFFIX, ProgressLines, captured_warnings, exit_code

GLOB_CHARS = "*?["

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None)
# messages quote file names and user text: no emoji codes (":smile:"), no highlighting, no wrapping
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
out = Console(highlight=False, emoji=False)


class CliError(Exception):
    """A user-facing failure: one line (or one line per problem found), an exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE, more: list[str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.lines = [*(more or []), message]


def _fail_all(problems: list[str], code: int = EXIT_USAGE) -> None:
    """Raise one :class:`CliError` reporting every problem found (one ``error:`` line each)."""
    if problems:
        raise CliError(problems[-1], code, more=problems[:-1])


def _warn(message: str) -> None:
    _plain_line(f"warning: {message}")


def _version(value: bool) -> None:
    if value:
        out.print(f"v2a-sampler {__version__}")
        raise typer.Exit()


def _list_guidance() -> None:
    table = Table(title="Guidance presets (eps = any prediction type; c = all conditions, null = dropped)")
    table.add_column("spec")
    table.add_column("formula")
    table.add_column("NFE/step", justify="right")
    for spec, formula, nfe in G.presets():
        table.add_row(escape(spec), escape(formula), escape(nfe))
    out.print(table)
    defaults = ", ".join(f"{k}({','.join(f'{v:g}' for v in vals)})" for k, vals in G.PAPER_DEFAULTS.items())
    out.print(f"Bare names use AudioMoG's V2A settings: {defaults}.", markup=False)


def _list_solvers() -> None:
    table = Table(title="Solvers (stages = model evaluations per step and branch)")
    for col in ("solver", "aliases", "stages/step", "options", "what it is"):
        table.add_column(col)
    for s in solvers.SOLVERS.values():
        opts = ", ".join(f"{o.name}={o.default:g} ({o.help})" for o in s.options) or "-"
        table.add_row(s.name, ", ".join(s.aliases) or "-", str(s.stages_per_step), escape(opts),
                      escape(f"{s.summary} ({s.source})"))  # fmt: skip
    out.print(table)


def _explain(g: G.Guidance, steps: int) -> None:
    """Branch coefficients and NFE of ``g``; where they vary over the run (weight schedules, windows, intervals,
    zero_star's zero-init), also per step of the pipelines' uniform flow grid with ``steps`` steps."""
    table = Table(title=escape(f"{g.spec()}  ({g.nfe_per_step} NFE/step, affine={g.is_affine})"))
    table.add_column("branch")
    table.add_column("coefficient", justify="right")
    for key, c in g.coefficients().items():
        table.add_row(escape(key), f"{c:+.6g}")
    out.print(table)
    if isinstance(g, G.Interval):
        out.print(f"Outside noise levels [{g.lo:g}, {g.hi:g}]: {g.fallback.spec()}", markup=False)
    if not g.is_linear:
        out.print(f"Non-linear: {g.spec()} combines these branches (formula: --list-guidance).", markup=False)
    schedule = FlowSchedule()
    levels = [schedule.terms(float(t)).noise_level for t in solvers.get_timesteps(schedule, steps)]
    rows = G.step_table(g, levels)
    if all((r["coefficients"], r["notes"]) == (rows[0]["coefficients"], rows[0]["notes"]) for r in rows):
        return
    keys = [b.key for b in g.all_branches]
    per_step = Table(title=f"Per step ({steps} steps, uniform flow grid; first stage of each step)")
    for col in ("step", "noise level", "NFE", *keys, "note"):
        per_step.add_column(escape(col), justify="left" if col == "note" else "right")
    for r in rows:
        cells = [f"{r['coefficients'][k]:+.4g}" if k in r["coefficients"] else "-" for k in keys]
        per_step.add_row(str(r["step"]), f"{r['level']:.3f}", str(r["nfe"]), *cells, escape("; ".join(r["notes"])))
    out.print(per_step)


def expand_inputs(args: list[str]) -> list[Path]:
    """Paths from arguments; arguments with glob characters that are not files are expanded (sorted)."""
    paths: list[Path] = []
    for a in args:
        if any(ch in a for ch in GLOB_CHARS) and not Path(a).exists():
            hits = sorted(glob.glob(a, recursive=True))
            if not hits:
                raise CliError(f"no file matches {a}")
            paths += [Path(h) for h in hits]
        else:
            paths.append(Path(a))
    for p in paths:
        if not p.exists():
            raise CliError(f"input not found: {p}")
        if p.is_dir():
            raise CliError(f"input is a directory, not a video: {p}")
    return paths


def plan_outputs(inputs: list[Path], out_arg: Path | None, mux: bool) -> list[tuple[Path, Path | None]]:
    """``(wav, mp4 or None)`` per input: next to the input, inside ``--out`` (a folder), or ``--out`` itself."""
    if out_arg is not None and len(inputs) > 1 and out_arg.suffix.lower() == ".wav":
        raise CliError(f"--out {out_arg} names one file but {len(inputs)} inputs were given; pass a folder")
    plans = []
    for src in inputs:
        if out_arg is None:
            wav = src.with_suffix(".wav")
        elif out_arg.suffix.lower() == ".wav":
            wav = out_arg
        else:
            wav = out_arg / (src.stem + ".wav")
        mp4 = wav.with_name(wav.stem + MUX_SUFFIX + ".mp4") if mux else None
        plans.append((wav, mp4))
    names = [p for pair in plans for p in pair if p is not None]
    dupes = {str(p) for p in names if names.count(p) > 1}
    if dupes:
        raise CliError(f"several inputs would write the same output: {sorted(dupes)[0]} (use distinct names)")
    return plans


def check_outputs(paths: list[Path], overwrite: bool) -> list[str]:
    """Problems with writing ``paths`` (each named as the user gave it), found before any work: a path that is a
    folder, an existing file without ``overwrite``, a folder that cannot be created or written to."""
    problems: list[str] = []
    folders: dict[Path, str | None] = {}
    for p in paths:
        if p.is_dir():
            problems.append(f"output path is a folder: {p}")
        elif p.exists() and not overwrite:
            problems.append(f"output exists: {p} (pass --overwrite to replace it)")
        folder = p.parent
        if folder not in folders:
            folders[folder] = _folder_problem(folder)
            if folders[folder] is not None:
                problems.append(folders[folder])
    return problems


def _folder_problem(folder: Path) -> str | None:
    """Why files cannot be written into ``folder`` (created if missing), or ``None``."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot write to {folder}: {existing} is a file, not a folder"
    try:  # a real attempt (permissions, read-only file systems, ACLs), not a guess from mode bits; deleted at once
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        return f"cannot write to {folder}: {e.strerror or error_line(e)}"
    return None


def _check_matplotlib() -> None:
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        raise CliError("--spectrogram needs matplotlib (pip install matplotlib)") from None


def _save_spectrogram(mel, axes, path: Path, title: str, overwrite: bool) -> None:
    """The log-mel as a PNG with seconds and Hz axes (:func:`v2a_sampler.frontends.plots.save_spectrogram`)."""
    from .plots import PlotUnavailable, save_spectrogram

    try:
        save_spectrogram(mel, axes, path, title, overwrite=overwrite)
    except PlotUnavailable:
        raise CliError("--spectrogram needs matplotlib (pip install matplotlib)") from None


@app.command()
def main(
    videos: Annotated[
        list[str] | None, typer.Argument(help="Input videos (paths or quoted globs).", show_default=False)
    ] = None,
    guidance: Annotated[
        str | None,
        typer.Option(
            "--guidance",
            "-g",
            help='Guidance spec: none, cfg(4.5), ag(2), pg(2.7,0.15), hg(2.7,2.5,1.2), "hg" (paper defaults), '
            "linear combinations, intervals G@[lo,hi]. See --list-guidance. Default: hg for the embedded model, "
            "cfg(4.5) for MMAudio (the official demo).",
            show_default=False,
        ),
    ] = None,
    solver: Annotated[
        str | None,
        typer.Option(
            help=f"One of {', '.join(solvers.SOLVERS)} (default: euler). See --list-solvers.", show_default=False
        ),  # fmt: skip
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Solver steps (default: 25).", show_default=False)] = None,
    grid: Annotated[
        str | None,
        typer.Option(
            help="Time grid: uniform, shifted (flow shift: -O shift=3) or karras (-O rho=7, -O sigma_min=..., "
            "-O sigma_max=...; flow models need sigma_max). Default: the model's (uniform for flow models).",
            show_default=False,
        ),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            "-O",
            help="Solver, grid or pipeline option NAME=VALUE, repeatable (e.g. eta=0.5 for dpmpp_2m_sde, s_churn=1 "
            "for heun_edm, brownian=1 for Brownian-tree noise, rho=5 with --grid karras; griffin_lim_iters=32 for "
            "the embedded model).",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed; input i uses seed + i.")] = 0,
    out_path: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output .wav (one input) or folder (default: next to input).")
    ] = None,
    mux: Annotated[bool, typer.Option("--mux", help="Also write <name>_v2a.mp4 with the new soundtrack.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    duration: Annotated[
        float | None,
        typer.Option(
            help="Seconds from the start to generate (default: the whole video; MMAudio: 8 s, cut to the video)."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model folder, Hugging Face repo id, embedded-amg (the embedded model's AMG-trained variant), or "
            "mmaudio:VARIANT for the official MMAudio checkpoints (small_16k, small_44k, medium_44k, large_44k, "
            "large_44k_v2). Default: the embedded model."
        ),
    ] = None,
    bad_model: Annotated[
        str | None,
        typer.Option(
            help="Bad model folder/repo id, mmaudio:VARIANT with an MMAudio --model, or a perturbed version of the "
            "model itself: perturb:skip=2 (skipped block), perturb:identity=1 (identity attention, PAG), "
            "perturb:attn_dropout=0.1, perturb:blur=2 (SEG), perturb:dropout=0.1; 'none' disables "
            "(default: the model's bad/)."
        ),
    ] = None,
    prompt: Annotated[
        str | None, typer.Option(help="Text prompt (models with a text condition, e.g. MMAudio).")
    ] = None,
    negative_prompt: Annotated[
        str | None, typer.Option(help="Negative text prompt: replaces the null text of the unconditional branches.")
    ] = None,
    compile_model: Annotated[
        bool, typer.Option("--compile", help="Sample through torch.compile-d networks (compiles once per length).")
    ] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps ...")] = "cpu",
    dtype: Annotated[str, typer.Option(help=f"{', '.join(DTYPES[:-1])} or {DTYPES[-1]}.")] = "float32",
    spectrogram: Annotated[
        Path | None, typer.Option(help="Write a PNG of the generated log-mel (a folder for several inputs).")
    ] = None,
    list_guidance: Annotated[bool, typer.Option("--list-guidance", help="Show guidance presets and exit.")] = False,
    list_solvers: Annotated[bool, typer.Option("--list-solvers", help="Show the solvers and exit.")] = False,
    explain: Annotated[
        bool, typer.Option("--explain", help="Print the branch coefficients and NFE of --guidance and exit.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or progress lines.")] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="A partial video (only its first part decodes: truncated or damaged) is an error, not a warning.",
        ),
    ] = False,
    manifest: Annotated[
        Path | None,
        typer.Option(
            help="CSV (header row) or JSONL manifest: column 'video' (relative to the manifest's folder), optional "
            "id, duration, seed, prompt. Writes <name>.wav per row and summary.json into --out-dir; resumable; "
            "sharded over ranks under torchrun.",
            show_default=False,
        ),
    ] = None,
    out_dir: Annotated[Path | None, typer.Option(help="Output folder of a --manifest run.", show_default=False)] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="--manifest: clips of equal duration generated per forward.")
    ] = 1,
    fail_on_error: Annotated[
        bool, typer.Option("--fail-on-error", help="--manifest: exit 1 when any row failed (default: exit 0).")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Generate a soundtrack for each video with guided flow sampling (WAV, and with --mux an MP4)."""
    if list_guidance:
        _list_guidance()
        return
    if list_solvers:
        _list_solvers()
        return
    try:
        config = RunConfig(model=model, bad_model=bad_model, device=device, dtype=dtype, compile=compile_model,
                           guidance=guidance, solver=solver, steps=steps, seed=seed, duration=duration,
                           options={**_options(option), **({"grid": grid} if grid is not None else {})},
                           strict=strict)  # fmt: skip
        if explain:
            from ..pipelines.loader import default_guidance  # reads the model's config files, not its weights

            _explain(
                G.parse(config.guidance or default_guidance(config)),
                config.steps or _pipeline_class(config).default_steps,
            )
            return
        if config.steps is not None and config.steps > STEPS_WARN:
            _warn(f"--steps {config.steps} is far beyond where quality saturates (a few dozen); this run will be "
                  "slow")  # fmt: skip
        text = {"prompt": prompt, "negative_prompt": negative_prompt}
        if manifest is not None:
            if prompt is not None or negative_prompt is not None:
                raise CliError("with --manifest give prompts per row (column 'prompt'), not --prompt")
            _run_manifest(config, manifest, videos, out_path, out_dir, mux, overwrite, spectrogram, batch_size,
                          fail_on_error, quiet)  # fmt: skip
            return
        if out_dir is not None:
            raise CliError("--out-dir goes with --manifest; for videos on the command line use --out")
        if not videos:
            raise CliError("no input video given (see v2a-sample --help)")
        _run(config, videos, out_path, mux, overwrite, text, spectrogram, quiet)
    except typer.Exit:  # a RuntimeError to Python: not a failure to report here
        raise
    except CliError as e:
        for line in e.lines:
            _plain_line(f"error: {line}")
        raise typer.Exit(e.code) from None
    except ValueError as e:  # includes V2AInputError and ConfigError
        _plain_line(f"error: {error_line(e)}")
        raise typer.Exit(EXIT_USAGE) from None
    except (RuntimeError, FloatingPointError, OSError) as e:  # includes PipelineLoadError
        _plain_line(f"error: {error_line(e)}")
        raise typer.Exit(EXIT_RUNTIME) from None


def _options(items: list[str] | None) -> dict[str, int | float]:
    """``--option NAME=VALUE`` pairs (numbers) as a dict."""
    out: dict[str, int | float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--option expects NAME=VALUE, got {item!r}")
        try:
            out[name.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            raise ConfigError(f"--option {name.strip()} needs a number, got {value!r}") from None
    return out


def _pipeline_class(config: RunConfig):
    """The pipeline class ``config`` would load (without loading it)."""
    from ..pipelines.embedded import Pipeline
    from ..pipelines.mmaudio import MMAudioPipeline

    return MMAudioPipeline if config.is_mmaudio else Pipeline


def _load(config: RunConfig, rank_device: int | None = None):
    from ..pipelines.loader import load_pipeline

    return load_pipeline(config, rank_device)


def _run(config: RunConfig, videos, out_path, mux, overwrite, text, spectrogram, quiet) -> None:
    """Videos on the command line: everything is checked first (inputs probed and scanned, output paths, optional
    dependencies), then the model is loaded and each input generated; a failing input does not stop the others."""
    inputs = expand_inputs(videos)
    plans = plan_outputs(inputs, out_path, mux)
    pngs: list[Path] = []
    if spectrogram is not None:
        _check_matplotlib()
        if len(inputs) > 1 or spectrogram.suffix.lower() != ".png":
            pngs = [spectrogram / (src.stem + ".png") for src in inputs]
        else:
            pngs = [spectrogram]
    partial = _probe_inputs(inputs, config.strict, config.duration)
    _fail_all(check_outputs([q for pair in plans for q in pair if q is not None] + pngs, overwrite))
    t_load = time.perf_counter()
    pipe = _load(config)
    text = {k: v for k, v in text.items() if v is not None}
    if text and not pipe.supports_text:
        raise CliError(f"model {config.model or '(embedded)'} has no text condition: --prompt/--negative-prompt "
                       "need one (e.g. --model mmaudio:large_44k_v2)")  # fmt: skip
    plan = pipe.plan(config)
    if mux:
        from ..media.io import AAC_RATES

        if pipe.sample_rate not in AAC_RATES:
            raise CliError(f"--mux needs an AAC sample rate; the model generates {pipe.sample_rate} Hz")
    load_s = time.perf_counter() - t_load
    several = len(inputs) > 1
    codes: list[int] = []
    bar = not quiet and err.is_terminal  # rich's live bar only on a terminal; elsewhere occasional plain lines
    lines = None if quiet or bar else ProgressLines(_plain_line)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not bar,
        transient=True,
    ) as progress:
        files = progress.add_task("videos", total=len(inputs))
        for i, (src, (wav, mp4)) in enumerate(zip(inputs, plans, strict=True)):
            t0 = time.perf_counter()
            task = progress.add_task(f"{src.name}", total=plan.stages)

            def tick(done: int, total: int, task=task, src=src) -> None:
                progress.update(task, completed=done)
                if lines is not None:
                    lines.update(src.name, done, total, "solver stages")

            written: list[Path] = []
            warned: list[tuple[type[Warning], str]] = []
            try:
                with captured_warnings() as warned:
                    audio = pipe.generate(src, plan, seed=config.seed + i, duration=config.duration, progress=tick,
                                          **text)  # fmt: skip
                    _write_outputs(
                        audio, src, wav, mp4, pngs[i] if pngs else None, plan, overwrite, written, pipe.mel_axes
                    )
            except (ValueError, RuntimeError, FloatingPointError, OSError) as e:
                _report_warnings(warned, src in partial)
                for p in written:  # this input's files written before the failure: none is left behind
                    p.unlink(missing_ok=True)
                codes.append(exit_code(e))
                _plain_line(f"error: {f'{src}: ' if several else ''}{error_line(e)}")
                continue
            finally:
                progress.remove_task(task)
                progress.advance(files)
            _report_warnings(warned, src in partial)
            secs = time.perf_counter() - t0 + (load_s if i == 0 else 0.0)
            names = ", ".join(str(w) for w in written)
            out.print(printable(f"{src.name}: {plan.describe()}, NFE {audio.info['nfe']}, {secs:.1f}s -> {names}"),
                      markup=False, soft_wrap=True)  # fmt: skip
    if codes:  # every failure has had its error line
        raise typer.Exit(EXIT_RUNTIME if EXIT_RUNTIME in codes else EXIT_USAGE)


def _plain_line(line: str) -> None:
    """One line on stderr, exactly as given (control characters escaped)."""
    err.print(printable(line), markup=False)


def _probe_inputs(inputs: list[Path], strict: bool, duration: float | None) -> set[Path]:
    """Probe every input and scan its packets (the first ``duration`` seconds matter) before anything is loaded:
    all bad inputs are reported together (exit 2); partial videos are warned about here (with ``strict``: reported
    as bad). Returns the partial ones."""
    from ..media import io

    problems: list[str] = []
    partial: set[Path] = set()
    for src in inputs:
        try:
            with captured_warnings() as warned:
                io.probe_video(src, scan=True, strict=strict, needed=duration)
        except io.V2AInputError as e:
            problems.append(error_line(e))
            continue
        for category, message in warned:
            _warn(message)
            partial.update([src] if issubclass(category, io.PartialVideoWarning) else [])
    _fail_all(problems)
    return partial


def _report_warnings(warned: list[tuple[type[Warning], str]], already_partial: bool) -> None:
    from ..media.io import PartialVideoWarning

    for category, message in warned:
        if not (already_partial and issubclass(category, PartialVideoWarning)):  # said once, when probed
            _warn(message)


def _write_outputs(audio, src: Path, wav: Path, mp4: Path | None, png: Path | None, plan, overwrite: bool,
                   written: list[Path], axes=None) -> None:  # fmt: skip
    """Write one input's files, appending each to ``written`` as soon as it exists."""
    wav.parent.mkdir(parents=True, exist_ok=True)
    audio.save(wav, overwrite=overwrite)
    written.append(wav)
    if mp4 is not None:
        audio.mux(src, mp4, overwrite=overwrite)
        written.append(mp4)
    if png is not None:
        png.parent.mkdir(parents=True, exist_ok=True)
        _save_spectrogram(audio.mel, axes, png, f"{src.name}  {plan.guidance.spec()}", overwrite)
        written.append(png)


def _run_manifest(config: RunConfig, manifest, videos, out_path, out_dir, mux, overwrite, spectrogram, batch_size,
                  fail_on_error, quiet) -> None:  # fmt: skip
    """``--manifest``: data-set scale generation (:mod:`v2a_sampler.datagen`), one process per torchrun rank."""
    from . import datagen

    if videos:
        raise CliError("give input videos or --manifest, not both")
    if out_path is not None:
        raise CliError("a --manifest run writes into --out-dir DIR, not --out")
    if out_dir is None:
        raise CliError("--manifest needs --out-dir DIR")
    if spectrogram is not None:
        raise CliError("--spectrogram is not available with --manifest")
    rows = datagen.read_manifest(manifest)  # before loading anything: a bad manifest fails fast
    problem = _folder_problem(out_dir)
    if problem is not None:
        raise CliError(problem)
    info = datagen.dist_info()
    pipe = _load(config, rank_device=info.local_rank if info.world_size > 1 else None)
    pipe.plan(config)  # a setting that can never work fails here, before the first row
    progress = False if quiet else (None if err.is_terminal else _plain_line)  # a bar on a terminal, else lines
    summary = datagen.run_manifest(rows, out_dir, pipe, config, batch_size=batch_size, mux=mux, overwrite=overwrite,
                                   progress=progress, warn=_warn)  # fmt: skip
    t = summary["totals"]
    failed = t["failed"]
    if info.rank == 0:
        procs = f"{info.world_size} processes" if info.world_size > 1 else "1 process"
        out.print(f"{t['rows']} rows: {t['done']} done, {t['skipped']} already done, {t['duplicate']} duplicate, "
                  f"{failed} failed; {t['seconds']:.1f}s, {t['clips_per_minute']:.1f} clips/min ({procs}) -> "
                  f"{out_dir / datagen.SUMMARY_NAME}", markup=False, soft_wrap=True)  # fmt: skip
    if failed and fail_on_error:
        raise CliError(f"{failed} of {t['rows']} rows failed (listed in {out_dir / datagen.SUMMARY_NAME})",
                       EXIT_RUNTIME)  # fmt: skip
    if failed and info.rank == 0:
        rows_failed = f"{failed} row{'s' if failed != 1 else ''} failed"
        err.print(f"note: {rows_failed} (listed in {out_dir / datagen.SUMMARY_NAME}); they are retried on the next "
                  "run; --fail-on-error makes this exit 1", markup=False)  # fmt: skip


def run() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    run()
