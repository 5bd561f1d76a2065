"""What every subcommand module of the ``worker`` command shares: its error and its tables."""

from __future__ import annotations

from collections.abc import Sequence


class UsageError(Exception):
    """A mistake on the command line: one line on stderr, exit status 2."""


def duration(seconds: float) -> str:
    """A human age: ``4.2s``, ``3.5m``, ``1.2h``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Rows as left-aligned columns, the first row being the heading."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
