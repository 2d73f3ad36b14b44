"""``v2a-sample``: the command-line entry point.

Every user error ends in one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from . import guidance as G

EXIT_USAGE = 2

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False)


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print one error line and return the exit to raise."""
    err.print(f"error: {message}", markup=False)
    return typer.Exit(code)


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
    defaults = ", ".join(f"{k}{tuple(v) if len(v) > 1 else '(' + str(v[0]) + ')'}" for k, v in G.PAPER_DEFAULTS.items())
    out.print(f"Bare names use AudioMoG's V2A settings: {defaults}.", markup=False)


def _explain(spec: str) -> None:
    g = G.parse(spec)
    table = Table(title=escape(f"{g.spec()}  ({g.nfe_per_step} NFE/step, affine={g.is_affine})"))
    table.add_column("branch")
    table.add_column("coefficient", justify="right")
    for key, c in g.coefficients().items():
        table.add_row(escape(key), f"{c:+.6g}")
    out.print(table)
    if isinstance(g, G.Interval):
        out.print(f"Outside noise levels [{g.lo:g}, {g.hi:g}]: {g.fallback.spec()}", markup=False)


@app.command()
def main(
    videos: Annotated[list[Path] | None, typer.Argument(help="Input video files.", show_default=False)] = None,
    guidance: Annotated[
        str,
        typer.Option(
            "--guidance",
            "-g",
            help='Guidance spec: none, cfg(4.5), ag(2), pg(2.7,0.15), hg(2.7,2.5,1.2), "hg" (paper defaults), '
            "linear combinations, intervals G@[lo,hi]. See --list-guidance.",
        ),
    ] = "hg",
    list_guidance: Annotated[bool, typer.Option("--list-guidance", help="Show guidance presets and exit.")] = False,
    explain: Annotated[
        bool, typer.Option("--explain", help="Print the branch coefficients and NFE of --guidance and exit.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Generate a soundtrack for each video with guided flow/diffusion sampling."""
    if list_guidance:
        _list_guidance()
        return
    try:
        G.parse(guidance)
    except ValueError as e:
        raise fail(str(e)) from None
    if explain:
        _explain(guidance)
        return
    if not videos:
        raise fail("no input video given (see v2a-sample --help)")
    for v in videos:
        if not v.exists():
            raise fail(f"input not found: {v}")
    raise fail(
        "no video-to-audio model is bundled in this version yet; the embedded model arrives with the Pipeline "
        "(see README). Try --list-guidance or --explain.",
        code=3,
    )


def run() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    run()
