"""What the transactional outbox costs a producer, and how fast a relay empties it.

First table (orders per second, median of ``--reps`` runs, each on fresh files; the
application's database and the broker are SQLite files, WAL, one disk):

- **direct**: one application transaction per order (an ``INSERT`` into ``orders``,
  committed), then ``Queue.publish`` of its message: the dual write the outbox replaces
  (a crash between the two loses the message);
- **outbox**: the same transaction with ``with outbox(db): queue.publish(...)`` inside it:
  the order and its message commit together; nothing reaches the broker yet;
- **relay**: ``relay()`` sending those committed rows to the broker in batches of 500
  (``worker relay`` and the workers run this), rows per second.

Second table, PostgreSQL -> RabbitMQ (the application's database is a fresh PostgreSQL
database, SQLAlchemy ``Session``; the broker RabbitMQ with publisher confirms; messages per
second, median of ``--reps``):

- **publish_many**: the same messages sent straight to RabbitMQ with ``Queue.publish_many``
  in batches of 500, no database: what the relay's sending costs on its own;
- **relay**: ``relay()`` sending the committed outbox rows from PostgreSQL to RabbitMQ in
  batches of 500 (read, send, delete), rows per second;
- **direct** and **outbox** as above, on PostgreSQL and RabbitMQ.

Left out, with a note, when PostgreSQL (``QUEUEKIT_TEST_POSTGRES``, default the machine's
``test`` database) or RabbitMQ (``scripts/brokers up rabbitmq``) does not answer. The
PostgreSQL database and the RabbitMQ queue are made for each run and removed afterwards.

Run: ``.venv/bin/python bench/bench_outbox.py`` (about a minute; ``--count`` orders per
row; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import postgres
import report

from queuekit import connect, outbox
from queuekit.features.outbox import holder_id, relay
from queuekit.jobstore.outbox import open_outbox

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/"
BATCH = 500  # the relay's batch


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


def run_postgres(count: int) -> dict[str, float]:
    """The PostgreSQL -> RabbitMQ rows, on a fresh database and a fresh queue."""
    import sqlalchemy
    from sqlalchemy.orm import Session

    rates: dict[str, float] = {}
    name = f"bench-outbox-{uuid.uuid4().hex[:8]}"
    with postgres.fresh_database() as url, connect(RABBITMQ) as conn:
        engine = sqlalchemy.create_engine(url)
        key = sqlalchemy.Column("id", sqlalchemy.Integer, primary_key=True)
        orders = sqlalchemy.Table("orders", sqlalchemy.MetaData(), key,
                                  sqlalchemy.Column("item", sqlalchemy.Text))  # fmt: skip
        orders.metadata.create_all(engine)
        insert = orders.insert().returning(orders.c.id)
        queue = conn.queue(name)
        try:
            messages: list[Any] = [{"order": n} for n in range(count)]
            start = time.perf_counter()
            for first in range(0, count, BATCH):
                queue.publish_many(messages[first : first + BATCH])
            rates["publish_many"] = count / (time.perf_counter() - start)
            start = time.perf_counter()
            for n in range(count):
                with Session(engine) as session, session.begin():
                    order = session.execute(insert.values(item=f"i{n}")).scalar_one()
                queue.publish({"order": order})
            rates["direct"] = count / (time.perf_counter() - start)
            start = time.perf_counter()
            for n in range(count):
                with Session(engine) as session, session.begin(), outbox(session):
                    order = session.execute(insert.values(item=f"i{n}")).scalar_one()
                    queue.publish({"order": order})
            rates["outbox"] = count / (time.perf_counter() - start)
            table = open_outbox(url)
            try:
                start = time.perf_counter()
                sent = relay(table, lambda q: conn.broker, holder_id(), batch=BATCH)
                rates["relay"] = sent / (time.perf_counter() - start)
            finally:
                table.close()
            assert sent == count
        finally:
            engine.dispose()
            conn.transport.delete(name)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=3)
    args = report.parse_args(parser, {"count": 200, "reps": 1})
    servers = report.answers("127.0.0.1", 5672) and postgres.answers()
    runs: list[dict[str, float]] = []
    for _ in range(args.reps):  # both tables' rows in turn: a noisy moment hits both
        directory = Path(tempfile.mkdtemp(prefix="qk-outbox-"))
        try:
            rates = run(directory, args.count)
        finally:
            shutil.rmtree(directory)
        if servers:
            rates.update({f"pg {k}": v for k, v in run_postgres(args.count).items()})
        runs.append(rates)
    median: Callable[[str], float] = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    report.heading("Transactional outbox on SQLite, and PostgreSQL -> RabbitMQ",
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

    if not servers:
        print("PostgreSQL -> RabbitMQ rows left out: PostgreSQL or RabbitMQ does not answer.")
        return
    report.table(
        ["PostgreSQL -> RabbitMQ", "messages/s", "vs publish_many"],
        [
            ["publish_many straight to RabbitMQ (no database)", median("pg publish_many"),
             "1.00x"],
            ["relay: outbox rows from PostgreSQL to RabbitMQ", median("pg relay"),
             report.ratio(median("pg relay"), median("pg publish_many"))],
            ["direct: commit on PostgreSQL, then publish", median("pg direct"),
             report.ratio(median("pg direct"), median("pg publish_many"))],
            ["outbox: publish inside the PostgreSQL transaction", median("pg outbox"),
             report.ratio(median("pg outbox"), median("pg publish_many"))],
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
