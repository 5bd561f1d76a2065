"""How far a long command has got: ``worker failed retry all``, ``worker publish --file``,
``worker conformance``.

On a terminal, with rich installed (``pip install 'queuekit[progress]'``), a live bar on
stderr; otherwise (a pipe, a log file, ``TERM=dumb``, no rich) plain lines on stderr, at
most one every :data:`PLAIN_EVERY` seconds and one at the end, so a log keeps a readable
record and a script's stdout is never touched. The last line or the final bar says how far
the work got even when it stopped on an error.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

#: Seconds between two plain progress lines.
PLAIN_EVERY = 2.0

#: Called with how many more units are done.
Advance = Callable[[int], None]


@contextmanager
def progress(what: str, total: int, stream: TextIO | None = None) -> Iterator[Advance]:
    """Show the progress of ``total`` units of ``what`` on ``stream`` (stderr) while the
    block runs; the block calls the yielded function as units finish."""
    stream = stream if stream is not None else sys.stderr
    if _terminal(stream):
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
        except ImportError:
            pass
        else:
            bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(),
                console=Console(file=stream),
                # rows printed to stdout meanwhile go above the bar when both share the terminal
                redirect_stdout=_terminal(sys.stdout), redirect_stderr=False,
            )  # fmt: skip
            task = bar.add_task(what, total=total)
            with bar:
                yield lambda count: bar.advance(task, count)
            return
    with _plain(what, total, stream) as advance:
        yield advance


@contextmanager
def _plain(what: str, total: int, stream: TextIO) -> Iterator[Advance]:
    done = 0
    last = time.monotonic()

    def line() -> None:
        share = f" ({100 * done // total}%)" if total else ""
        stream.write(f"{what}: {done}/{total}{share}\n")
        stream.flush()

    def advance(count: int) -> None:
        nonlocal done, last
        done += count
        if time.monotonic() - last >= PLAIN_EVERY and done < total:
            last = time.monotonic()
            line()

    try:
        yield advance
    finally:
        line()


def _terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except ValueError:  # closed
        return False
