"""What the transactional outbox costs a producer, and how fast a relay empties it.

Rows (orders per second, median of ``--reps`` runs, each on fresh files; the application's
database and the broker are SQLite files, WAL, one disk):

- **direct**: one application transaction per order (an ``INSERT`` into ``orders``,
  committed), then ``Queue.publish`` of its message: the dual write the outbox replaces
  (a crash between the two loses the message);
- **outbox**: the same transaction with ``with outbox(db): queue.publish(...)`` inside it:
  the order and its message commit together; nothing reaches the broker yet;
- **relay**: ``relay()`` sending those committed rows to the broker in batches of 500
  (``worker relay`` and the workers run this), rows per second.

Run: ``.venv/bin/python bench/bench_outbox.py`` (about 10 s; ``--count`` orders per row;
``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import report

from queuekit import connect, outbox
from queuekit.features.outbox import holder_id, relay
from queuekit.jobstore.outbox import open_outbox


def _app(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT)")
    return db


def run(directory: Path, count: int) -> dict[str, float]:
    rates: dict[str, float] = {}
    with connect(f"sqlite:///{directory}/broker.db") as conn:
        queue = conn.queue("shipping")
        with contextlib.closing(_app(directory / "direct.db")) as db:
            start = time.perf_counter()
            for n in range(count):
                with db:
                    order = db.execute("INSERT INTO orders (item) VALUES (?)", (f"i{n}",))
                queue.publish({"order": order.lastrowid})
            rates["direct"] = count / (time.perf_counter() - start)
        with contextlib.closing(_app(directory / "app.db")) as db:
            start = time.perf_counter()
            for n in range(count):
                with db, outbox(db):
                    order = db.execute("INSERT INTO orders (item) VALUES (?)", (f"i{n}",))
                    queue.publish({"order": order.lastrowid})
            rates["outbox"] = count / (time.perf_counter() - start)
        table = open_outbox(f"sqlite:///{directory}/app.db")
        try:
            start = time.perf_counter()
            sent = relay(table, lambda q: conn.broker, holder_id())
            rates["relay"] = sent / (time.perf_counter() - start)
        finally:
            table.close()
        assert sent == count and queue.depth() == 2 * count
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=3)
    args = report.parse_args(parser, {"count": 200, "reps": 1})
    runs: list[dict[str, float]] = []
    for _ in range(args.reps):
        directory = Path(tempfile.mkdtemp(prefix="qk-outbox-"))
        try:
            runs.append(run(directory, args.count))
        finally:
            shutil.rmtree(directory)
    median: Callable[[str], float] = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    report.heading("Transactional outbox on SQLite",
                   f"{args.count} orders per row, median of {args.reps} run(s).")  # fmt: skip
    report.table(
        ["row", "orders/s", "vs direct"],
        [
            ["direct: commit, then publish", median("direct"), "1.00x"],
            ["outbox: publish inside the transaction", median("outbox"),
             report.ratio(median("outbox"), median("direct"))],
            ["relay: committed rows to the broker", median("relay"),
             report.ratio(median("relay"), median("direct"))],
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
