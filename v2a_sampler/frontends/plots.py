"""Spectrogram pictures with real axes (seconds across, Hz up), shared by ``v2a-sample --spectrogram`` and
``v2a-app``.

The mel bands are drawn as equal rows (the mel scale, as a spectrogram is usually read) and the y ticks are placed
at the band positions of round frequencies with :meth:`~v2a_sampler.media.audio.MelAxes.band_of`, so the labels
read in Hz; frame ``k`` is drawn over its centre time :meth:`~v2a_sampler.media.audio.MelAxes.frame_seconds`.
Without axes (a pipeline that does not know its mel geometry) rows and columns are labelled by index.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..media.audio import MelAxes
from ..media.io import atomic_output

#: Candidate y ticks (Hz); those on the drawn bands and at least :data:`MIN_TICK_GAP` apart are drawn.
HZ_TICKS = (0, 100, 250, 500, 1000, 2000, 4000, 8000, 16000)
#: Closest two y ticks may sit, as a fraction of the bands (so labels do not overlap on a short figure).
MIN_TICK_GAP = 0.08
#: Figure size (inches) and resolution (dots per inch) of a saved spectrogram.
FIGSIZE = (8.0, 3.0)
DPI = 110
#: The colour map of the log-mel values.
CMAP = "magma"
#: The extra that installs matplotlib.
PLOT_EXTRA = "plot"


class PlotUnavailable(ImportError):
    """matplotlib is not installed (one line naming the extra that installs it)."""


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        message = f"spectrograms need matplotlib (pip install matplotlib, or the [{PLOT_EXTRA}] extra)"
        raise PlotUnavailable(message) from None
    return plt


def hz_label(hz: float) -> str:
    """``500`` -> ``"500"``, ``2000`` -> ``"2k"``, ``22050`` -> ``"22.05k"``."""
    return f"{hz / 1000:g}k" if hz >= 1000 else f"{hz:g}"


def hz_ticks(axes: MelAxes) -> list[tuple[float, str]]:
    """``(band position, label)`` of the y ticks: the round frequencies of :data:`HZ_TICKS` that fall on the drawn
    bands (positions ``-0.5`` to ``n_mels - 0.5``), at least :data:`MIN_TICK_GAP` of the bands apart."""
    ticks: list[tuple[float, str]] = []
    for hz in HZ_TICKS:
        pos = float(axes.band_of(float(hz)))
        if -0.5 <= pos <= axes.n_mels - 0.5 and (not ticks or pos - ticks[-1][0] >= MIN_TICK_GAP * axes.n_mels):
            ticks.append((pos, hz_label(hz)))
    return ticks


def spectrogram_figure(mel: torch.Tensor, axes: MelAxes | None, title: str = "", figsize=FIGSIZE) -> Any:
    """A matplotlib figure of a log-mel ``[n_mels, frames]``: seconds on x and Hz on y (with ``axes``)."""
    plt = _pyplot()
    data = mel.detach().float().cpu().numpy()
    n_mels, frames = data.shape
    fig, ax = plt.subplots(figsize=figsize)
    if axes is None:
        ax.imshow(data, origin="lower", aspect="auto", cmap=CMAP)
        ax.set_xlabel("frame")
        ax.set_ylabel("mel band")
    else:
        if axes.n_mels != n_mels:
            raise ValueError(f"mel has {n_mels} bands but its axes describe {axes.n_mels}")
        half = 0.5 / axes.frame_rate
        times = axes.frame_seconds(frames)
        start, end = float(times[0]) - half, float(times[-1]) + half
        ax.imshow(data, origin="lower", aspect="auto", cmap=CMAP, extent=(start, end, -0.5, n_mels - 0.5))
        ticks = hz_ticks(axes)
        ax.set_yticks([pos for pos, _ in ticks], [label for _, label in ticks])
        ax.set_xlabel("time (s)")
        ax.set_ylabel("frequency (Hz, mel scale)")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_spectrogram(
    mel: torch.Tensor,
    axes: MelAxes | None,
    path: str | os.PathLike,
    title: str = "",
    overwrite: bool = False,
    figsize=FIGSIZE,
) -> None:
    """Write :func:`spectrogram_figure` as a PNG, atomically (refuses to overwrite unless ``overwrite``)."""
    plt = _pyplot()
    fig = spectrogram_figure(mel, axes, title, figsize)
    try:
        with atomic_output(path, overwrite=overwrite) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        plt.close(fig)
