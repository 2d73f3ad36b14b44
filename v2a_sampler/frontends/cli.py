"""``v2a-sample``: generate soundtracks for videos from the command line.

    v2a-sample video.mp4 --guidance hg            # writes video.wav next to the video
    v2a-sample clips/*.mp4 --out sounds/ --mux     # several inputs (or a quoted glob), WAV + muxed MP4 each

Every user error ends in one ``error:`` line on stderr and a non-zero exit code, never a traceback; outputs are
written atomically and existing files are never replaced without ``--overwrite``.
"""

from __future__ import annotations

import glob
import sys
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

EXIT_USAGE = 2  # bad arguments or inputs
EXIT_RUNTIME = 1  # the run itself failed (model, numerics)
#: Guidance of the embedded model when --guidance is not given (MMAudio pipelines use their own default).
DEFAULT_GUIDANCE = "hg"
#: Values of --dtype.
DTYPES = ("float32", "float16", "bfloat16")
#: ``--model`` prefix selecting an official MMAudio variant.
MMAUDIO_PREFIX = "mmaudio:"
MUX_SUFFIX = "_v2a"  # video.mp4 -> video_v2a.mp4
GLOB_CHARS = "*?["

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False)


class CliError(Exception):
    """A user-facing failure: one line, an exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


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


def _explain(g: G.Guidance) -> None:
    table = Table(title=escape(f"{g.spec()}  ({g.nfe_per_step} NFE/step, affine={g.is_affine})"))
    table.add_column("branch")
    table.add_column("coefficient", justify="right")
    for key, c in g.coefficients().items():
        table.add_row(escape(key), f"{c:+.6g}")
    out.print(table)
    if isinstance(g, G.Interval):
        out.print(f"Outside noise levels [{g.lo:g}, {g.hi:g}]: {g.fallback.spec()}", markup=False)


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


def _check_overwrite(plans: list[tuple[Path, Path | None]], extra: list[Path], overwrite: bool) -> None:
    if overwrite:
        return
    for p in [q for pair in plans for q in pair if q is not None] + extra:
        if p.exists():
            raise CliError(f"output exists: {p} (pass --overwrite to replace it)")


def _save_spectrogram(mel, path: Path, title: str, overwrite: bool) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CliError("--spectrogram needs matplotlib (pip install matplotlib)") from None
    from ..media.io import atomic_output

    fig, ax = plt.subplots(figsize=(8, 3))
    ax.imshow(mel.numpy(), origin="lower", aspect="auto", cmap="magma")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("frame")
    ax.set_ylabel("mel band")
    fig.tight_layout()
    with atomic_output(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


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
    solver: Annotated[str, typer.Option(help="euler, heun, dpmpp_2m or dpmpp_2m_sde.")] = "euler",
    steps: Annotated[int, typer.Option(min=1, help="Solver steps.")] = 25,
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
            help="Model folder, Hugging Face repo id, or mmaudio:VARIANT for the official MMAudio checkpoints "
            "(small_16k, small_44k, medium_44k, large_44k, large_44k_v2). Default: the embedded model."
        ),
    ] = None,
    bad_model: Annotated[
        str | None,
        typer.Option(
            help="Bad model folder/repo id, or mmaudio:VARIANT with an MMAudio --model; 'none' disables "
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
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16.")] = "float32",
    spectrogram: Annotated[
        Path | None, typer.Option(help="Write a PNG of the generated log-mel (a folder for several inputs).")
    ] = None,
    list_guidance: Annotated[bool, typer.Option("--list-guidance", help="Show guidance presets and exit.")] = False,
    explain: Annotated[
        bool, typer.Option("--explain", help="Print the branch coefficients and NFE of --guidance and exit.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
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
    try:
        g = G.parse(guidance) if guidance is not None else None
        if explain:
            g = g or G.parse(DEFAULT_GUIDANCE)
            _explain(g)
            return
        load = {"model": model, "bad_model": bad_model, "device": device, "dtype": dtype, "compile": compile_model}
        text = {"prompt": prompt, "negative_prompt": negative_prompt}
        if manifest is not None:
            if prompt is not None or negative_prompt is not None:
                raise CliError("with --manifest give prompts per row (column 'prompt'), not --prompt")
            _run_manifest(manifest, videos, g, solver, steps, seed, out_path, out_dir, mux, overwrite, duration,
                          load, spectrogram, batch_size, fail_on_error, quiet)  # fmt: skip
            return
        if out_dir is not None:
            raise CliError("--out-dir goes with --manifest; for videos on the command line use --out")
        if not videos:
            raise CliError("no input video given (see v2a-sample --help)")
        _run(videos, g, solver, steps, seed, out_path, mux, overwrite, duration, load, text, spectrogram, quiet)
    except CliError as e:
        err.print(f"error: {e}", markup=False)
        raise typer.Exit(e.code) from None
    except ValueError as e:  # includes V2AInputError
        err.print(f"error: {_first_line(e)}", markup=False)
        raise typer.Exit(EXIT_USAGE) from None
    except (RuntimeError, FloatingPointError, OSError) as e:
        err.print(f"error: {_first_line(e)}", markup=False)
        raise typer.Exit(EXIT_RUNTIME) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise CliError(f"unknown dtype {dtype!r}; expected {', '.join(DTYPES[:-1])} or {DTYPES[-1]}")


def _load_pipeline(model: str | None, bad_model: str | None, device: str, dtype: str, compile: bool,
                   rank_device: int | None = None):  # fmt: skip
    """The pipeline for ``--model`` / ``--bad-model`` (``mmaudio:VARIANT`` loads the official MMAudio files)."""
    import torch

    from ..pipelines.embedded import MMAUDIO_REPO, Pipeline

    _check_dtype(dtype)
    try:
        torch_device = torch.device(device)
    except RuntimeError:
        raise CliError(f"unknown device {device!r}") from None
    if torch_device.type == "cuda" and torch_device.index is None and rank_device is not None:
        torch_device = torch.device("cuda", rank_device)  # one GPU per rank
    torch_dtype = getattr(torch, dtype)
    mm = model is not None and model.startswith(MMAUDIO_PREFIX)
    mm_bad = bad_model is not None and bad_model.startswith(MMAUDIO_PREFIX)
    if mm_bad and not mm:
        raise CliError("--bad-model mmaudio:VARIANT needs an MMAudio --model (mmaudio:VARIANT)")
    if mm and bad_model is not None and not mm_bad and bad_model.lower() != "none":
        raise CliError("with an MMAudio --model the bad model is mmaudio:VARIANT")
    try:
        if mm:
            bad_variant = bad_model.removeprefix(MMAUDIO_PREFIX) if mm_bad else None
            variant = model.removeprefix(MMAUDIO_PREFIX)
            pipe = Pipeline.from_pretrained(
                MMAUDIO_REPO, variant=variant, bad_variant=bad_variant, device=torch_device, dtype=torch_dtype
            )
        else:
            bad_arg: str | bool | None = False if (bad_model or "").lower() == "none" else bad_model
            pipe = Pipeline.from_pretrained(model, bad=bad_arg, device=torch_device, dtype=torch_dtype)
            pipe.model.to(torch_dtype)
            if pipe.bad is not None:
                pipe.bad.to(torch_dtype)
    except (ValueError, RuntimeError) as e:
        raise CliError(f"cannot load model {model or '(embedded)'}: {_first_line(e)}", EXIT_RUNTIME) from None
    except Exception as e:  # corrupt weights surface as library-specific errors
        raise CliError(f"cannot load model {model or '(embedded)'}: {type(e).__name__}: {_first_line(e)}",
                       EXIT_RUNTIME) from None  # fmt: skip
    if compile:
        pipe.compile()
    return pipe


def _run(videos, g, solver, steps, seed, out_path, mux, overwrite, duration, load, text, spectrogram,
         quiet) -> None:  # fmt: skip
    from ..core import solvers
    from .datagen import supports_text

    solvers.solver_name(solver)  # validate before any work
    if duration is not None and not duration > 0:
        raise CliError(f"--duration must be positive, got {duration}")
    inputs = expand_inputs(videos)
    plans = plan_outputs(inputs, out_path, mux)
    pngs: list[Path] = []
    if spectrogram is not None:
        if len(inputs) > 1 or spectrogram.suffix.lower() != ".png":
            pngs = [spectrogram / (src.stem + ".png") for src in inputs]
        else:
            pngs = [spectrogram]
    _check_overwrite(plans, pngs, overwrite)
    t_load = time.perf_counter()
    pipe = _load_pipeline(**load)
    text = {k: v for k, v in text.items() if v is not None}
    if text and not supports_text(pipe):
        raise CliError(f"model {load['model'] or '(embedded)'} has no text condition: --prompt/--negative-prompt "
                       "need one (e.g. --model mmaudio:large_44k_v2)")  # fmt: skip
    g = G.resolve(g or getattr(pipe, "default_guidance", DEFAULT_GUIDANCE), pipe.model, pipe.bad)
    load_s = time.perf_counter() - t_load
    nfe = pipe.nfe(g, solver, steps)
    stages = nfe // g.nfe_per_step
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
        transient=True,
    ) as progress:
        files = progress.add_task("videos", total=len(inputs))
        for i, (src, (wav, mp4)) in enumerate(zip(inputs, plans, strict=True)):
            t0 = time.perf_counter()
            task = progress.add_task(f"{src.name}", total=stages)

            def tick(_info, task=task):
                progress.advance(task)

            audio = pipe(src, guidance=g, solver=solver, steps=steps, seed=seed + i, duration=duration, callback=tick,
                         **text)  # fmt: skip
            wav.parent.mkdir(parents=True, exist_ok=True)
            audio.save(wav, overwrite=overwrite)
            written = [wav]
            if mp4 is not None:
                audio.mux(src, mp4, overwrite=overwrite)
                written.append(mp4)
            if pngs:
                pngs[i].parent.mkdir(parents=True, exist_ok=True)
                _save_spectrogram(audio.mel, pngs[i], f"{src.name}  {g.spec()}", overwrite)
                written.append(pngs[i])
            progress.remove_task(task)
            progress.advance(files)
            secs = time.perf_counter() - t0 + (load_s if i == 0 else 0.0)
            names = ", ".join(str(w) for w in written)
            out.print(f"{src.name}: {g.spec()} {solver} x{steps}, NFE {audio.info['nfe']}, {secs:.1f}s -> {names}",
                      markup=False, soft_wrap=True)  # fmt: skip


def _run_manifest(manifest, videos, g, solver, steps, seed, out_path, out_dir, mux, overwrite, duration, load,
                  spectrogram, batch_size, fail_on_error, quiet) -> None:  # fmt: skip
    """``--manifest``: data-set scale generation (:mod:`v2a_sampler.datagen`), one process per torchrun rank."""

    from ..core import solvers
    from . import datagen

    if videos:
        raise CliError("give input videos or --manifest, not both")
    if out_path is not None:
        raise CliError("a --manifest run writes into --out-dir DIR, not --out")
    if out_dir is None:
        raise CliError("--manifest needs --out-dir DIR")
    if spectrogram is not None:
        raise CliError("--spectrogram is not available with --manifest")
    solvers.solver_name(solver)
    _check_dtype(load["dtype"])  # before reading the manifest
    if duration is not None and not duration > 0:
        raise CliError(f"--duration must be positive, got {duration}")
    rows = datagen.read_manifest(manifest)  # before loading anything: a bad manifest fails fast
    info = datagen.dist_info()
    pipe = _load_pipeline(**load, rank_device=info.local_rank if info.world_size > 1 else None)
    g = g or getattr(pipe, "default_guidance", DEFAULT_GUIDANCE)
    summary = datagen.run_manifest(rows, out_dir, pipe, guidance=g, solver=solver, steps=steps, seed=seed,
                                   duration=duration, batch_size=batch_size, mux=mux, overwrite=overwrite,
                                   progress=False if quiet else None,
                                   warn=lambda m: err.print(f"warning: {m}", markup=False))  # fmt: skip
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
