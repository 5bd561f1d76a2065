"""What a process-manager step costs with its job store on SQLite and on PostgreSQL, and what
contention on one instance does.

Rows (events per second, median of ``--reps`` runs; one worker in this process, ``-c 1`` or
``-c 8``; the broker is a fresh SQLite file, NORMAL sync, in both columns; the job store,
where the instances are, is that file in the SQLite column and fresh tables in PostgreSQL,
``QUEUEKIT_TEST_POSTGRES``, default the machine's ``test`` database, in the other; a
database made for the run and dropped afterwards. The column is left out when PostgreSQL
does not answer):

- ``AbstractQueue`` no-op ``work`` (the baseline: receive, ack);
- a process manager whose events are spread over ``--instances`` instances (each step reads
  the instance and commits its state, its message id and, every tenth event, a scheduled
  command in one transaction);
- the same with every event on one instance (at ``-c 8`` the steps conflict and run again:
  the "reruns" column counts them).

Run: ``.venv/bin/python bench/bench_process_managers.py`` (about 2 min; ``--count`` events
per row; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import shutil
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any

import postgres
import report

from queuekit import AbstractQueue, Message, ProcessManager, connect
from queuekit.features.processes import event_message


@dataclass
class Opened:
    key: str


@dataclass
class Stepped:
    key: str
    n: int


class Tracker(ProcessManager):
    queue = "bench"
    started_by = {Opened: lambda e: e.key}
    handles = {Stepped: lambda e: e.key}

    def on_opened(self, event: Opened, state: dict[str, Any]) -> None:
        state["steps"] = 0

    def on_stepped(self, event: Stepped, state: dict[str, Any]) -> None:
        state["steps"] += 1
        if event.n % 10 == 0:
            self.schedule(Opened(event.key), queue="elsewhere")


class Noop(AbstractQueue):
    queue = "bench"

    def work(self, message: Message) -> None:
        return None


class Reruns(logging.Handler):
    """Counts the engine's "the step runs again" lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "runs again" in record.getMessage()


def run(
    path: str, jobstore: str | None, count: int, instances: int, concurrency: int
) -> tuple[float, int]:
    """Events per second, and reruns; ``instances`` 0 is the plain baseline; ``jobstore``
    ``None``: the broker's file."""
    reruns = Reruns()
    engine = logging.getLogger("queuekit")
    engine.addHandler(reruns)
    engine.setLevel(logging.DEBUG)
    try:
        with connect(f"sqlite:///{path}", jobstore=jobstore) as conn:
            queue = conn.queue("bench")
            handler: AbstractQueue = Noop(conn) if instances == 0 else Tracker(conn)
            if instances:
                name, _ = event_message(Opened(""))
                queue.publish_many([{"key": f"k{i}"} for i in range(instances)], name=name)
                handler.dispatch(max_messages=instances, handle_signals=False)
            name, _ = event_message(Stepped("", 0))
            keys = max(instances, 1)
            queue.publish_many([{"key": f"k{n % keys}", "n": n} for n in range(count)],
                               name=name)  # fmt: skip
            reruns.count = 0
            start = time.perf_counter()
            done = handler.dispatch(max_messages=count, handle_signals=False,
                                    concurrency=concurrency)  # fmt: skip
            elapsed = time.perf_counter() - start
    finally:
        engine.removeHandler(reruns)
        engine.setLevel(logging.NOTSET)
    assert done == count
    return count / elapsed, reruns.count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    args = report.parse_args(parser, {"count": 100, "reps": 1})
    rows = {
        (f"AbstractQueue no-op, -c {c}", 0, c) for c in (1, 8)
    } | {
        (f"ProcessManager, {args.instances} instances, -c {c}", args.instances, c) for c in (1, 8)
    } | {(f"ProcessManager, 1 instance, -c {c}", 1, c) for c in (1, 8)}  # fmt: skip
    ordered = sorted(rows, key=lambda r: (r[1] != 0, -r[1], r[2]))
    stores = ["sqlite", *(["postgresql"] if postgres.answers() else [])]
    results: dict[tuple[str, str], list[tuple[float, int]]] = {
        (name, store): [] for name, _, _ in ordered for store in stores
    }
    with contextlib.ExitStack() as cleanup:
        database = cleanup.enter_context(postgres.fresh_database()) if len(stores) > 1 else ""
        for _ in range(args.reps):  # round-robin: a noisy moment hits every row alike
            for (name, instances, concurrency), store in itertools.product(ordered, stores):
                directory = tempfile.mkdtemp(prefix="qk-bench-pm-")
                prefix = f"qkb{uuid.uuid4().hex[:10]}_"  # fresh tables in the run's database
                jobstore = f"{database}?table_prefix={prefix}" if store == "postgresql" else None
                try:
                    rate = run(f"{directory}/bench.db", jobstore, args.count, instances,
                               concurrency)  # fmt: skip
                    results[name, store].append(rate)
                finally:
                    shutil.rmtree(directory)
    report.heading(
        "Process manager benchmark",
        f"Job store on {' and '.join(stores)}, broker SQLite (synchronous=NORMAL), "
        f"{args.count:,} events per row, median of {args.reps}; reruns: steps run again "
        "after a conflict (median)."
        + ("" if len(stores) > 1 else " PostgreSQL does not answer: its column is left out."),
    )

    def cells(runs: list[tuple[float, int]]) -> list[report.Cell]:
        return [statistics.median(r for r, _ in runs), int(statistics.median(n for _, n in runs))]

    report.table(
        ["worker", *(h for store in stores for h in (f"{store} events/s", "reruns"))],
        [[name, *(c for store in stores for c in cells(results[name, store]))]
         for name, _, _ in ordered],
    )  # fmt: skip


if __name__ == "__main__":
    main()
