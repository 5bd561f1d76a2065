"""What a job-store call costs on SQLite, PostgreSQL and MariaDB (one store, one thread).

Rows (operations per second, median of ``--reps`` runs, each on fresh tables):

- ``record (start + end)``: a recorded attempt as a worker writes it, ``start_job`` then
  ``write_jobs`` (two transactions), counted per attempt;
- ``hold + confirm key``: a publisher's dedup key (two statements), counted per key;
- ``forward 500 due``: ``forward_due`` of a batch of 500 delayed messages (claim, send to a
  no-op, delete), counted per message.

Run: ``.venv/bin/python bench/bench_jobstore.py`` (PostgreSQL and MariaDB from
``QUEUEKIT_TEST_POSTGRES`` / ``QUEUEKIT_TEST_MARIADB`` or the machine's defaults; a database
that does not answer is left out); ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable

import postgres
import report
import sqlalchemy

from queuekit.jobstore import JobStore, open_jobstore
from queuekit.jobstore.records import JobUpdate
from queuekit.spi import Outgoing

DATABASES = {
    "postgresql": postgres.URL,
    "mariadb": os.environ.get("QUEUEKIT_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test"),
}


def records(store: JobStore, count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        job_id = f"job-{i}"
        now = time.time()
        store.start_job(JobUpdate(job_id, "bench", "task", "running", 1, started_at=now))
        store.write_jobs([JobUpdate(job_id, "bench", "task", "done", 1, result="1",
                                    finished_at=time.time(), peak_memory=1)])  # fmt: skip
    return count / (time.perf_counter() - start)


def keys(store: JobStore, count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        assert store.hold_key("bench", f"key-{i}", f"m-{i}", ever=True)
        store.confirm_key("bench", f"key-{i}", f"m-{i}")
    return count / (time.perf_counter() - start)


def forward(store: JobStore, count: int) -> float:
    store.add_delayed("bench", time.time() - 1, [Outgoing(b"x" * 200)] * 500)
    start = time.perf_counter()
    forwarded = store.forward_due(lambda queue, batch: None, limit=500)
    assert forwarded == 500
    return forwarded / (time.perf_counter() - start)


ROWS: dict[str, Callable[[JobStore, int], float]] = {
    "record (start + end)": records,
    "hold + confirm key": keys,
    "forward 500 due": forward,
}


def fresh(backend: str, directory: str) -> tuple[str, Callable[[], None]]:
    if backend == "sqlite":
        path = f"{directory}/{uuid.uuid4().hex}.db"
        return f"sqlite:///{path}", lambda: os.remove(path)
    base, prefix = DATABASES[backend], f"qkb{uuid.uuid4().hex[:10]}_"

    def drop() -> None:
        engine = sqlalchemy.create_engine(base)
        meta = sqlalchemy.MetaData()
        meta.reflect(engine, only=lambda table, _: table.startswith(prefix))
        meta.drop_all(engine)
        engine.dispose()

    return f"{base}?table_prefix={prefix}", drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="operations per row")
    parser.add_argument("--reps", type=int, default=3)
    args = report.parse_args(parser, {"count": 50, "reps": 1})
    backends = ["sqlite"] + [b for b, url in DATABASES.items() if postgres.answers(url)]
    results: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory() as directory:
        for row, measure in ROWS.items():
            for backend in backends:
                rates = []
                for _ in range(args.reps):
                    url, drop = fresh(backend, directory)
                    store = open_jobstore(url)
                    try:
                        store.get_job("warm-up")  # opens the database, creates the tables
                        rates.append(measure(store, args.count))
                    finally:
                        store.close()
                        drop()
                results[row, backend] = statistics.median(rates)
    absent = [b for b in DATABASES if b not in backends]
    report.heading(
        "Job store benchmark",
        f"{args.count:,} operations per row, median of {args.reps} runs, one thread."
        + (f" Not answering, left out: {', '.join(absent)}." if absent else ""),
    )
    report.table(
        ["operation", *(f"{b}/s" for b in backends)],
        [[row, *(results[row, b] for b in backends)] for row in ROWS],
    )


if __name__ == "__main__":
    main()
