"""What the front ends share: exit codes, output naming, progress lines and warning capture."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Exit code for bad arguments or inputs.
EXIT_USAGE = 2
#: Exit code for a run that failed (loading a model, sampling, writing).
EXIT_RUNTIME = 1
#: ``video.mp4`` -> ``video_v2a.mp4``: the name of a muxed output (the CLI and manifest runs).
MUX_SUFFIX = "_v2a"
#: Seconds between progress lines when stderr is not a terminal (logs, CI, pipes): a long run shows it is alive
#: without flooding the log; runs shorter than this print none.
PROGRESS_LINE_S = 5.0


def exit_code(e: BaseException) -> int:
    """The exit code of a failure: :data:`EXIT_USAGE` for bad arguments or inputs (``ValueError``s), else
    :data:`EXIT_RUNTIME`."""
    return EXIT_USAGE if isinstance(e, ValueError) else EXIT_RUNTIME


class ProgressLines:
    """Progress as an occasional plain line (``label: 12/50 stages, 10s``) for a stderr that is not a terminal.

    :meth:`update` writes at most one line every ``every`` seconds, the first after ``every`` seconds.
    """

    def __init__(self, write: Callable[[str], None], every: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.write, self.clock = write, clock
        self.every = PROGRESS_LINE_S if every is None else every
        self.start = self.last = clock()

    def update(self, label: str, done: int, total: int, unit: str) -> None:
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self.write(f"{label}: {done}/{total} {unit}, {now - self.start:.0f}s")


@contextmanager
def captured_warnings() -> Iterator[list[tuple[type[Warning], str]]]:
    """Collect the warnings raised inside the block as ``(category, one-line message)`` (each message once, in
    order) instead of Python's two-line ``file:line: Category: message`` print; the caller reports them
    (``warning: ...``). The list is filled when the block exits, also when it raises."""
    found: list[tuple[type[Warning], str]] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield found
        finally:
            for w in caught:
                text = (str(w.message).strip().splitlines() or [w.category.__name__])[0].strip()
                if text not in (t for _, t in found):
                    found.append((w.category, text))
