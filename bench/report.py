"""What every bench script prints around its numbers, and its ``--quick`` smoke mode.

A rate means nothing without the day, the command and the machine that produced it (the
README quotes these tables as ratios, because the absolute rate moves with the machine), so
every script prints them above one markdown table. ``scripts/bench-smoke`` runs every script
with ``--quick`` and fails when that table is missing: a bench that no longer runs is found
the day it breaks, not by the next reader of the README.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence

Cell = str | int | float


def answers(host: str, port: int) -> bool:
    """Whether a server accepts connections there (a row is skipped, and says so, when not)."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def parse_args(parser: argparse.ArgumentParser, quick: Mapping[str, object]) -> argparse.Namespace:
    """Add ``--quick`` (``quick``'s sizes and one run: a smoke run of a few seconds that
    proves the script works, never a measurement). Options given explicitly still win."""
    sizes = ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in quick.items())
    parser.add_argument(
        "--quick", action="store_true", help=f"a smoke run, not a measurement: {sizes}"
    )
    args = parser.parse_args()
    if args.quick:
        parser.set_defaults(**quick)
        args = parser.parse_args()
    return args


def heading(title: str, note: str = "") -> None:
    """Print the title, the day, the exact command and the machine, then ``note``."""
    command = shlex.join(["python", os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"## {title}, {datetime.date.today().isoformat()}\n")
    print(
        f"`{command}` on {os.cpu_count()} CPUs ({platform.machine()}, load average {load} "
        f"at the end), Python {platform.python_version()}."
    )
    if note:
        print(note)
    print()


def table(header: Sequence[str], rows: Iterable[Sequence[Cell]]) -> None:
    """Print a markdown table; numbers are right-aligned, floats shown as whole msg/s."""
    rows = [list(row) for row in rows]
    numeric = [any(isinstance(row[i], int | float) for row in rows) for i in range(len(header))]
    print("| " + " | ".join(header) + " |")
    print("|" + "".join("---:|" if right else "---|" for right in numeric))
    for row in rows:
        print("| " + " | ".join(cell(value) for value in row) + " |")
    print()


def cell(value: Cell) -> str:
    return f"{value:,.0f}" if isinstance(value, int | float) else value


def ratio(top: float, bottom: float) -> str:
    return f"{top / bottom:.2f}x"


def missing(*modules: str) -> list[str]:
    """Which of the peer libraries ``modules`` are not installed (their rows are skipped)."""
    import importlib.util

    return [name for name in modules if importlib.util.find_spec(name) is None]


def skipped(names: Sequence[str]) -> str:
    """The line a script prints for peer rows it left out."""
    if not names:
        return ""
    return (
        f"Peer rows skipped, not installed: {', '.join(names)} "
        "(`.venv/bin/pip install -r bench/requirements.txt`)."
    )
