"""What job records and hooks cost the SQLite worker, and what ``bulk()`` saves a producer.

Rows (messages per second, median of ``--reps`` runs, each on a fresh file, NORMAL sync):

- ``Queue.dispatch`` no-op work: plain; with ``record=True`` on every message (two job-store
  writes per message); with a no-op ``before_process`` hook;
- ``Queue.publish`` one by one; inside ``with queue.bulk(500)``; ``publish(record=True)``.

Run: ``.venv/bin/python bench/bench_records.py`` (about 20 s; ``--count`` messages per row;
``--quick`` for a smoke run).
Set ``PYTHONPATH`` to another checkout to measure its plain rows for comparison (rows it
lacks are skipped).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

import report

from queuekit import Message, connect


def consume(path: str, count: int, **options: object) -> float:
    with connect(f"sqlite:///{path}") as conn:
        queue = conn.queue("bench")
        queue.publish_many(range(count))
        start = time.perf_counter()
        done = queue.dispatch(lambda m: None, max_messages=count, handle_signals=False,
                              **options)  # type: ignore[arg-type]  # fmt: skip
        elapsed = time.perf_counter() - start
    assert done == count
    return count / elapsed


def produce(path: str, count: int, mode: str) -> float:
    with connect(f"sqlite:///{path}") as conn:
        queue = conn.queue("bench")
        start = time.perf_counter()
        if mode == "bulk":
            with queue.bulk(500):
                for n in range(count):
                    queue.publish(n)
        else:
            for n in range(count):
                queue.publish(n, **({"record": True} if mode == "record" else {}))
        return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=5)
    args = report.parse_args(parser, {"count": 200, "reps": 1})

    def noop(message: Message) -> None:
        return None

    rows: dict[str, Callable[[str], float]] = {
        "dispatch, plain": lambda p: consume(p, args.count),
        "dispatch, record=True": lambda p: consume(p, args.count, record=True),
        "dispatch, before_process hook": lambda p: consume(p, args.count, before_process=noop),
        "publish, one by one": lambda p: produce(p, args.count, "plain"),
        "publish, bulk(500)": lambda p: produce(p, args.count, "bulk"),
        "publish, record=True": lambda p: produce(p, args.count, "record"),
    }
    results: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.reps):  # round-robin: a noisy moment hits every row alike
        for name, run in rows.items():
            directory = tempfile.mkdtemp(prefix="qk-bench-records-")
            try:
                results[name].append(run(f"{directory}/bench.db"))
            except (TypeError, AttributeError):  # an older checkout without it
                pass
            finally:
                shutil.rmtree(directory)
    report.heading(
        "Job records benchmark",
        f"SQLite, synchronous=NORMAL, {args.count:,} messages per row, median of {args.reps}.",
    )
    report.table(
        ["operation", "msg/s"],
        [[name, statistics.median(rates)] for name, rates in results.items() if rates],
    )


if __name__ == "__main__":
    main()
