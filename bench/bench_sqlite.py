"""SQLite queues, measured on one disk in one run: queuekit against raw sqlite3 and its peers.

What is measured (messages per second, the median of ``--reps`` runs, each on a fresh file):

- raw ``sqlite3`` statements: one autocommit INSERT per message; claim + ack as one
  ``UPDATE ... RETURNING`` and one ``DELETE`` (the statements queuekit's adapter runs);
- queuekit ``sqlite://``: ``Queue.publish``, ``Queue.publish_many`` and ``Transport.send_many``
  (batches of 1000), and consume-with-ack through ``Queue.dispatch`` (no-op work) and through
  ``Transport.receive`` + ``ack``;
- peers: huey's ``SqliteHuey`` (enqueue; dequeue + execute of a no-op task, which is what
  huey's worker loop does), persist-queue's ``SQLiteAckQueue`` (put; get + ack) and litequeue
  (put; pop + done);
- every row at ``synchronous=NORMAL`` and ``FULL`` (WAL everywhere). A peer whose API has no
  such setting gets the PRAGMA on its own connection; the notes column says so;
- queue-depth sensitivity: queuekit's worker rate with 1k and 100k (``--quick``: 10k)
  messages waiting;
- two consumer processes on one file (queuekit workers, persist-queue consumers): throughput,
  and every message id checked to be processed exactly once.

Consume rates are taken over the first ``consume`` messages of a queue pre-filled with
``waiting`` messages (filled at ``synchronous=OFF`` and checkpointed, then set to the
measured level). Measurements run round-robin, one round per repetition, so a noisy moment
on a shared machine hits every subject alike.

Run: ``.venv/bin/pip install -r bench/requirements.txt`` once, then
``.venv/bin/python bench/bench_sqlite.py`` (4-5 minutes; ``--quick`` for a smoke run of one
round at small sizes, not a measurement;
``--profile`` to print where queuekit's worker spends its time). Files go to a fresh
directory under ``--dir`` (default ``$QUEUEKIT_VAR`` or ``/tmp``), removed afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import report

LEVELS = ("normal", "full")
# The peers' distribution names (as in bench/requirements.txt) and the modules they install;
# their rows are left out, and the heading says so, when one is not installed.
PEERS = {"huey": "huey", "persist-queue": "persistqueue", "litequeue": "litequeue"}
BATCH = 1000
# After a pre-fill: move the WAL into the database file, so the consume run measured next
# does not pay for checkpointing the fill.
CHECKPOINT = "PRAGMA wal_checkpoint(TRUNCATE)"


@dataclass
class Sizes:
    """How many messages each measurement moves, per synchronous level."""

    insert: dict[str, int] = field(default_factory=lambda: {"normal": 10_000, "full": 2_000})
    bulk: int = 30_000
    waiting: int = 10_000
    consume: dict[str, int] = field(default_factory=lambda: {"normal": 3_000, "full": 1_000})
    depth_consume: int = 1_000
    deep: int = 100_000  # the deep queue of the depth rows (the shallow one holds 1,000)
    pair: int = 3_000


QUICK = Sizes(
    insert={"normal": 2_000, "full": 300},
    bulk=5_000,
    waiting=2_000,
    consume={"normal": 500, "full": 150},
    depth_consume=300,
    deep=10_000,
    pair=500,
)


def payload(i: int) -> dict[str, Any]:
    return {"to": f"user{i}@example.com", "subject": "Welcome", "i": i}


def body(i: int) -> bytes:
    return json.dumps(payload(i), separators=(",", ":")).encode()


# -- bookkeeping ---------------------------------------------------------------------------


@dataclass
class Row:
    subject: str
    operation: str
    runs: dict[str, list[float]] = field(default_factory=dict)
    table: str = "main"
    note: str = ""
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def median(self, level: str) -> float | None:
        runs = self.runs.get(level)
        return statistics.median(runs) if runs else None

    def cpu_median(self, level: str) -> float | None:
        runs = self.cpu.get(level)
        return statistics.median(runs) if runs else None


class Bench:
    def __init__(self, root: str, reps: int, sizes: Sizes) -> None:
        self.root, self.reps, self.sizes = root, reps, sizes
        self.rows: list[Row] = []
        self._plan: list[tuple[Row, Callable[[str, str], float]]] = []
        self._count = 0

    @contextlib.contextmanager
    def scratch(self) -> Iterator[str]:
        """A fresh directory for one measurement, deleted afterwards."""
        self._count += 1
        path = os.path.join(self.root, f"m{self._count}")
        os.makedirs(path)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def measure(
        self,
        subject: str,
        operation: str,
        run: Callable[[str, str], float],
        *,
        table: str = "main",
        note: str = "",
    ) -> Row:
        """Plan ``run(directory, level)`` (returns msg/s) at each level, for ``execute``."""
        row = Row(subject, operation, table=table, note=note)
        self.rows.append(row)
        self._plan.append((row, run))
        return row

    def execute(self) -> None:
        """Run the plan round-robin, ``reps`` rounds: a noisy moment on a shared machine
        then hits every subject alike instead of all runs of one."""
        for rep in range(self.reps):
            print(f"round {rep + 1}/{self.reps}", file=sys.stderr, flush=True)
            for row, run in self._plan:
                for level in LEVELS:
                    with self.scratch() as directory:
                        rate = run(directory, level)
                    row.runs.setdefault(level, []).append(rate)
                    if _cpu_rate:
                        row.cpu.setdefault(level, []).append(_cpu_rate.pop())
                    print(
                        f"  {row.subject:14} {row.operation:44} {level:6} {rate:9,.0f}",
                        file=sys.stderr,
                        flush=True,
                    )
        self._plan.clear()


# msg per CPU-second of this process in the last measurement: on a shared machine the CPU
# rate moves less than the wall-clock rate (it does not count waiting for the CPU or disk).
_cpu_rate: list[float] = []


def timed(n: int, fn: Callable[[], object]) -> float:
    """Run ``fn`` (which moves ``n`` messages); return msg/s of wall-clock time."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    _cpu_rate[:] = [n / max(time.process_time() - cpu, 1e-9)]
    return n / (time.perf_counter() - start)


# -- raw sqlite3 ---------------------------------------------------------------------------
# The adapter's own table and statements, without queuekit's Python around them, and the
# design it replaced (one index per column set, one claim and one delete per message) as a
# baseline: docs/sqlite.md explains the change.

_FULL_INDEX_SCHEMA = """
CREATE TABLE queuekit_messages (
    id INTEGER PRIMARY KEY, queue TEXT NOT NULL, state INTEGER NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0, not_before REAL NOT NULL DEFAULT 0, lease_until REAL,
    deliveries INTEGER NOT NULL DEFAULT 0, dedup_key TEXT, headers TEXT, body BLOB NOT NULL
);
CREATE INDEX queuekit_claim ON queuekit_messages (queue, state, priority DESC, not_before, id);
CREATE INDEX queuekit_due ON queuekit_messages (state, not_before);
CREATE INDEX queuekit_lease ON queuekit_messages (state, lease_until);
CREATE UNIQUE INDEX queuekit_dedup ON queuekit_messages (queue, dedup_key)
    WHERE dedup_key IS NOT NULL;
"""


def claim_many() -> str:
    """The adapter's claim statement without a priority range: up to ``?`` rows (lease,
    queue, limit). Prepared here once, so a change to the adapter's statement fails loudly
    before any measurement instead of in the middle of a run."""
    from queuekit.adapters.sqlite import _CLAIM_ANY

    assert _CLAIM_ANY.count("?") == 3, "the adapter's claim statement changed shape"
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        db.executescript(_FULL_INDEX_SCHEMA)
        db.execute(_CLAIM_ANY, (0.0, "bench", 1)).fetchall()
    return _CLAIM_ANY


_DELETE = "DELETE FROM queuekit_messages WHERE id = ?"


def envelope(i: int) -> bytes:
    from queuekit import Message
    from queuekit.features.envelope import encode

    return encode(Message(payload(i)))


def raw_db(directory: str, level: str, schema: str | None = None) -> sqlite3.Connection:
    from queuekit.adapters.sqlite import _SCHEMA

    db = sqlite3.connect(os.path.join(directory, "raw.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={level}")
    db.executescript(schema or _SCHEMA)
    return db


def raw_fill(db: sqlite3.Connection, n: int) -> None:
    from queuekit.adapters.sqlite import _INSERT

    db.execute("BEGIN")
    now = time.time()  # not_before of a ready message is its publish time
    rows = (("bench", 1, 0, now + i * 1e-6, None, None, envelope(i)) for i in range(n))
    db.executemany(_INSERT, rows)
    db.execute("COMMIT")
    db.execute(CHECKPOINT)


def raw_insert(sizes: Sizes) -> Callable[[str, str], float]:
    from queuekit.adapters.sqlite import _INSERT

    def run(directory: str, level: str) -> float:
        db, n = raw_db(directory, level), sizes.insert[level]
        now = time.time()
        rows = [("bench", 1, 0, now + i * 1e-6, None, None, envelope(i)) for i in range(n)]

        def go() -> None:
            for row in rows:
                db.execute(_INSERT, row)

        rate = timed(n, go)
        db.close()
        return rate

    return run


def claim_then_ack(db: sqlite3.Connection, n: int) -> None:
    """Two autocommit statements per message (the adapter's first design)."""
    claim = claim_many()
    for _ in range(n):
        ident = db.execute(claim, (time.time() + 30, "bench", 1)).fetchone()[0]
        db.execute(_DELETE, (ident,))


def ack_with_next_claim(db: sqlite3.Connection, n: int) -> None:
    """One transaction per message: delete the previous one, claim the next."""
    claim = claim_many()
    previous = None
    for _ in range(n):
        db.execute("BEGIN IMMEDIATE")
        if previous is not None:
            db.execute(_DELETE, (previous,))
        previous = db.execute(claim, (time.time() + 30, "bench", 1)).fetchone()[0]
        db.execute("COMMIT")
    db.execute(_DELETE, (previous,))


def batch_of(k: int) -> Callable[[sqlite3.Connection, int], None]:
    def claim_batches(db: sqlite3.Connection, n: int) -> None:
        """One transaction per ``k`` messages: delete the last batch, claim the next."""
        done: list[int] = []
        got, statement = 0, claim_many()
        while got < n:
            db.execute("BEGIN IMMEDIATE")
            if done:
                marks = ",".join("?" * len(done))
                db.execute(f"DELETE FROM queuekit_messages WHERE id IN ({marks})", done)
            rows = db.execute(statement, (time.time() + 30, "bench", min(k, n - got)))
            done = [row[0] for row in rows.fetchall()]
            db.execute("COMMIT")
            got += len(done)
        marks = ",".join("?" * len(done))
        db.execute(f"DELETE FROM queuekit_messages WHERE id IN ({marks})", done)

    return claim_batches


RAW_CONSUMERS: list[tuple[str, str | None, Callable[[sqlite3.Connection, int], None]]] = [
    ("claim+ack one by one, full indexes (first design)", _FULL_INDEX_SCHEMA, claim_then_ack),
    ("claim+ack one by one, partial indexes", None, claim_then_ack),
    ("partial indexes, ack + next claim in 1 transaction", None, ack_with_next_claim),
    ("partial indexes, 16 claims + 16 acks per transaction (adapter)", None, batch_of(16)),
]


def raw_consume(
    sizes: Sizes, schema: str | None, consume: Callable[[sqlite3.Connection, int], None]
) -> Callable[[str, str], float]:
    def run(directory: str, level: str) -> float:
        db, n = raw_db(directory, level, schema), sizes.consume[level]
        raw_fill(db, sizes.waiting)
        rate = timed(n, lambda: consume(db, n))
        db.close()
        return rate

    return run


def wal_pages(sizes: Sizes, root: str) -> list[str]:
    """WAL pages written per consumed message (deterministic; checkpoints switched off)."""
    lines = [
        "WAL pages (4 KiB) written per consumed message, raw statements, checkpoints off "
        f"(counted over {sizes.depth_consume:,} messages):",
        "",
        f"| consume statements | 1,000 waiting | {sizes.deep:,} waiting |",
        "|---|---:|---:|",
    ]
    for label, schema, consume in RAW_CONSUMERS:
        cells = []
        for waiting in (1_000, sizes.deep):
            with tempfile.TemporaryDirectory(dir=root) as directory:
                db = raw_db(directory, "normal", schema)
                raw_fill(db, waiting)
                db.execute("PRAGMA wal_autocheckpoint=0")
                n = min(sizes.depth_consume, waiting)
                consume(db, n)
                size = os.path.getsize(os.path.join(directory, "raw.db-wal"))
                page = db.execute("PRAGMA page_size").fetchone()[0]
                db.close()
                cells.append(f"{size / page / n:.1f}")
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return [*lines, ""]


# -- queuekit ------------------------------------------------------------------------------


def qk_url(directory: str, level: str) -> str:
    return f"sqlite:///{os.path.join(directory, 'queuekit.db')}?synchronous={level}"


def qk_fill(url: str, queue: str, n: int) -> None:
    """Pre-fill ``queue`` with ``n`` real envelopes, fast (synchronous=OFF for the fill)."""
    from queuekit import connect

    with contextlib.closing(connect(url.split("?", maxsplit=1)[0])) as conn:
        conn.transport._db.execute("PRAGMA synchronous=OFF")  # type: ignore[attr-defined]
        q = conn.queue(queue)
        for start in range(0, n, BATCH):
            q.publish_many(payload(i) for i in range(start, min(n, start + BATCH)))
        conn.transport._db.execute(CHECKPOINT)  # type: ignore[attr-defined]


def qk_publish(directory: str, level: str, sizes: Sizes) -> float:
    from queuekit import connect

    n = sizes.insert[level]
    with contextlib.closing(connect(qk_url(directory, level))) as conn:
        q = conn.queue("bench")
        return timed(n, lambda: [q.publish(payload(i)) for i in range(n)])


def qk_publish_many(directory: str, level: str, sizes: Sizes) -> float:
    from queuekit import connect

    n = sizes.bulk
    with contextlib.closing(connect(qk_url(directory, level))) as conn:
        q = conn.queue("bench")
        payloads = [payload(i) for i in range(n)]

        def go() -> None:
            for start in range(0, n, BATCH):
                q.publish_many(payloads[start : start + BATCH])

        return timed(n, go)


def qk_send_many(directory: str, level: str, sizes: Sizes) -> float:
    from queuekit import connect
    from queuekit.spi import Outgoing

    n = sizes.bulk
    with contextlib.closing(connect(qk_url(directory, level))) as conn:
        transport = conn.transport
        batches = [
            [Outgoing(body(i)) for i in range(start, min(n, start + BATCH))]
            for start in range(0, n, BATCH)
        ]

        def go() -> None:
            for batch in batches:
                transport.send_many("bench", batch)

        return timed(n, go)


def qk_dispatch(directory: str, level: str, waiting: int, n: int) -> float:
    from queuekit import connect

    url = qk_url(directory, level)
    qk_fill(url, "bench", waiting)
    with contextlib.closing(connect(url)) as conn:
        q = conn.queue("bench")
        done = 0

        def go() -> None:
            nonlocal done
            done = q.dispatch(lambda message: None, max_messages=n, handle_signals=False)

        rate = timed(n, go)
    assert done == n, (done, n)
    return rate


def qk_receive_ack(directory: str, level: str, sizes: Sizes) -> float:
    from queuekit import connect

    url, n = qk_url(directory, level), sizes.consume[level]
    qk_fill(url, "bench", sizes.waiting)
    with contextlib.closing(connect(url)) as conn:
        transport = conn.transport

        def go() -> None:
            for _ in range(n):
                delivery = transport.receive("bench", 1.0)
                assert delivery is not None
                transport.ack(delivery)

        return timed(n, go)


# -- peers ---------------------------------------------------------------------------------


def make_huey(directory: str, level: str) -> tuple[Any, Any]:
    from huey import SqliteHuey

    huey = SqliteHuey("bench", filename=os.path.join(directory, "huey.db"))
    # SqliteHuey's own knob is fsync=True (FULL) / False (OFF); NORMAL only via the PRAGMA.
    huey.storage.conn.execute(f"PRAGMA synchronous={level}")

    @huey.task()
    def noop(i: int) -> None:
        return None

    return huey, noop


def huey_enqueue(directory: str, level: str, sizes: Sizes) -> float:
    huey, noop = make_huey(directory, level)
    n = sizes.insert[level]
    rate = timed(n, lambda: [noop(i) for i in range(n)])
    huey.storage.close()
    return rate


def huey_consume(directory: str, level: str, sizes: Sizes) -> float:
    huey, noop = make_huey(directory, level)
    huey.storage.conn.execute("PRAGMA synchronous=OFF")
    for i in range(sizes.waiting):
        noop(i)
    huey.storage.conn.execute(CHECKPOINT)
    huey.storage.conn.execute(f"PRAGMA synchronous={level}")
    n = sizes.consume[level]

    def go() -> None:  # the heart of huey.consumer.Worker.loop: dequeue, then execute
        for _ in range(n):
            task = huey.dequeue()
            assert task is not None
            huey.execute(task)

    rate = timed(n, go)
    huey.storage.close()
    return rate


def make_persist(directory: str, level: str, **kwargs: Any) -> Any:
    from persistqueue import SQLiteAckQueue

    q = SQLiteAckQueue(os.path.join(directory, "pq"), **kwargs)
    q._putter.execute(f"PRAGMA synchronous={level}")  # no API for it
    q._getter.execute(f"PRAGMA synchronous={level}")
    return q


def persist_put(directory: str, level: str, sizes: Sizes) -> float:
    q, n = make_persist(directory, level), sizes.insert[level]
    rate = timed(n, lambda: [q.put(payload(i)) for i in range(n)])
    q.close()
    return rate


def persist_fill(directory: str, n: int) -> None:
    q = make_persist(directory, "off")
    for i in range(n):
        q.put(payload(i))
    q._putter.execute(CHECKPOINT)
    q.close()


def persist_get_ack(directory: str, level: str, sizes: Sizes) -> float:
    persist_fill(directory, sizes.waiting)
    q, n = make_persist(directory, level), sizes.consume[level]

    def go() -> None:
        for _ in range(n):
            item = q.get(block=False, raw=True)
            q.ack(id=item["pqid"])

    rate = timed(n, go)
    q.close()
    return rate


def make_litequeue(directory: str, level: str) -> Any:
    from litequeue import LiteQueue

    q = LiteQueue(os.path.join(directory, "lq.db"))
    q.conn.execute(f"PRAGMA synchronous={level}")  # LiteQueue hard-codes NORMAL
    return q


def lite_put(directory: str, level: str, sizes: Sizes) -> float:
    q, n = make_litequeue(directory, level), sizes.insert[level]
    bodies = [body(i).decode() for i in range(n)]
    rate = timed(n, lambda: [q.put(b) for b in bodies])
    q.conn.close()
    return rate


def lite_pop_done(directory: str, level: str, sizes: Sizes) -> float:
    q = make_litequeue(directory, "off")
    with q.transaction():
        for i in range(sizes.waiting):
            q.put(body(i).decode())
    q.conn.execute(CHECKPOINT)
    q.conn.execute(f"PRAGMA synchronous={level}")
    n = sizes.consume[level]

    def go() -> None:
        for _ in range(n):
            message = q.pop()
            q.done(message.message_id)

    rate = timed(n, go)
    q.conn.close()
    return rate


# -- two consumer processes ----------------------------------------------------------------


@dataclass
class PairResult:
    rate: float
    processed: int
    duplicates: int
    missing: int
    errors: int


def run_pair(kind: str, directory: str, level: str, n: int) -> PairResult:
    """Two child processes consume ``n`` messages from one file; check each id once."""
    if kind == "queuekit":
        url = qk_url(directory, level)
        qk_fill(url, "pair", n)
        target = url
    else:
        persist_fill(directory, n)
        target = directory
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", kind, target, level],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for child in children:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    go = time.time()
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    if kind == "queuekit":  # workers run until told to stop: wait for the queue to empty
        path = url.split("?")[0].removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
            while db.execute("SELECT COUNT(*) FROM queuekit_messages").fetchone()[0]:
                time.sleep(0.01)
        for child in children:
            child.send_signal(signal.SIGTERM)
    reports = []
    for child in children:
        out, _ = child.communicate(timeout=120)
        reports.append(json.loads(out.strip().splitlines()[-1]))
    seen = Counter(i for report in reports for i in report["ids"])
    last = max(report["last"] for report in reports)
    return PairResult(
        rate=sum(seen.values()) / (last - go),
        processed=sum(seen.values()),
        duplicates=sum(c - 1 for c in seen.values() if c > 1),
        missing=sum(1 for i in range(n) if i not in seen),
        errors=sum(report["errors"] for report in reports),
    )


def child(kind: str, target: str, level: str) -> None:
    ids: list[int] = []
    last, errors = 0.0, 0
    if kind == "queuekit":
        from queuekit import connect

        conn = connect(target)
        q = conn.queue("pair")

        def work(message: Any) -> None:
            nonlocal last
            ids.append(message.payload["i"])
            last = time.time()

        print("ready", flush=True)
        sys.stdin.readline()
        q.dispatch(work)  # until SIGTERM: finishes the message in hand, acks, returns
        conn.close()
    else:
        from persistqueue.exceptions import Empty

        q = make_persist(target, level, multithreading=True, auto_resume=False)
        print("ready", flush=True)
        sys.stdin.readline()
        idle = 0
        while idle < 20:
            try:
                item = q.get(block=False, raw=True)
            except Empty:
                idle += 1
                time.sleep(0.005)
                continue
            except sqlite3.OperationalError:
                errors += 1
                continue
            idle = 0
            ids.append(item["data"]["i"])
            last = time.time()
            try:
                q.ack(id=item["pqid"])
            except sqlite3.OperationalError:
                errors += 1
        q.close()
    print(json.dumps({"ids": ids, "last": last, "errors": errors}), flush=True)


# -- the run -------------------------------------------------------------------------------


def rate_cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def plan(bench: Bench, only: set[str] | None) -> None:
    sizes = bench.sizes

    def wanted(section: str) -> bool:
        return only is None or section in only

    if wanted("raw"):
        bench.measure("raw sqlite3", "single INSERT (autocommit)", raw_insert(sizes))
        for label, schema, consume in RAW_CONSUMERS:
            bench.measure("raw sqlite3", label, raw_consume(sizes, schema, consume))
    if wanted("queuekit"):
        bench.measure("queuekit", "Queue.publish", lambda d, lv: qk_publish(d, lv, sizes))
        bench.measure(
            "queuekit",
            f"Queue.publish_many ({BATCH}/batch)",
            lambda d, lv: qk_publish_many(d, lv, sizes),
        )
        bench.measure(
            "queuekit",
            f"Transport.send_many ({BATCH}/batch)",
            lambda d, lv: qk_send_many(d, lv, sizes),
        )
        bench.measure(
            "queuekit",
            "Queue.dispatch no-op work (consume+ack)",
            lambda d, lv: qk_dispatch(d, lv, sizes.waiting, sizes.consume[lv]),
        )
        bench.measure(
            "queuekit", "Transport.receive + ack", lambda d, lv: qk_receive_ack(d, lv, sizes)
        )
    if wanted("peers") and not report.missing(*PEERS.values()):
        bench.measure(
            "huey",
            "SqliteHuey enqueue",
            lambda d, lv: huey_enqueue(d, lv, sizes),
            note="NORMAL set by PRAGMA (its API: fsync=True/False = FULL/OFF)",
        )
        bench.measure(
            "huey",
            "dequeue + execute no-op (deletes on fetch)",
            lambda d, lv: huey_consume(d, lv, sizes),
        )
        bench.measure(
            "persist-queue",
            "SQLiteAckQueue put",
            lambda d, lv: persist_put(d, lv, sizes),
            note="no synchronous option: PRAGMA on its connections",
        )
        bench.measure(
            "persist-queue", "SQLiteAckQueue get + ack", lambda d, lv: persist_get_ack(d, lv, sizes)
        )
        bench.measure(
            "litequeue",
            "put",
            lambda d, lv: lite_put(d, lv, sizes),
            note="hard-codes NORMAL: FULL set by PRAGMA",
        )
        bench.measure("litequeue", "pop + done", lambda d, lv: lite_pop_done(d, lv, sizes))
    if wanted("depth"):
        n = sizes.depth_consume
        for waiting in (1_000, sizes.deep):
            bench.measure(
                "queuekit",
                f"{waiting:,} waiting",
                lambda d, lv, w=waiting: qk_dispatch(d, lv, w, min(n, w)),
                table="depth",
            )


def render(bench: Bench) -> list[str]:
    sizes, lines = bench.sizes, []
    main_rows = [r for r in bench.rows if r.table == "main"]
    if main_rows:
        lines += [
            f"Consume rows: the first {sizes.consume['normal']:,} (NORMAL) / "
            f"{sizes.consume['full']:,} (FULL) messages of {sizes.waiting:,} waiting. "
            "Single-message rows: "
            f"{sizes.insert['normal']:,} / {sizes.insert['full']:,} messages; "
            f"bulk rows: {sizes.bulk:,}.",
            "",
            "| library | operation | msg/s, synchronous=NORMAL | msg/s, synchronous=FULL | note |",
            "|---|---|---:|---:|---|",
        ]
        lines += [
            f"| {row.subject} | {row.operation} | {rate_cell(row.median('normal'))} | "
            f"{rate_cell(row.median('full'))} | {row.note} |"
            for row in main_rows
        ]
        lines.append("")
    depth_rows = [r for r in bench.rows if r.table == "depth"]
    if depth_rows:
        n = sizes.depth_consume
        lines += [
            f"Queue depth: queuekit worker (Queue.dispatch, no-op work), rate over the first "
            f"{n:,} messages:",
            "",
            "| messages waiting | msg/s, NORMAL | msg/s, FULL "
            "| msg/CPU-s, NORMAL | msg/CPU-s, FULL |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {row.operation.split()[0]} | {rate_cell(row.median('normal'))} | "
            f"{rate_cell(row.median('full'))} | {rate_cell(row.cpu_median('normal'))} | "
            f"{rate_cell(row.cpu_median('full'))} |"
            for row in depth_rows
        ]
        lines.append("")
    return lines


def pairs(bench: Bench) -> list[str]:
    """Two consumer processes per library on one file, round-robin over the reps."""
    n = bench.sizes.pair
    kinds = ["queuekit"] + ([] if report.missing("persistqueue") else ["persist-queue"])
    results: dict[str, list[PairResult]] = {kind: [] for kind in kinds}
    for _ in range(bench.reps):
        for kind, runs in results.items():
            with bench.scratch() as directory:
                runs.append(run_pair(kind, directory, "normal", n))
            print(f"  {kind:14} two processes: {runs[-1]}", file=sys.stderr, flush=True)
    lines = [
        f"Two consumer processes on one file, {n:,} messages, synchronous=NORMAL; rate is the "
        f"median of {bench.reps} runs, counts are summed over the runs:",
        "",
        "| library | msg/s (both together) | processed | duplicates | missing | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, runs in results.items():
        lines.append(
            f"| {kind} | {statistics.median(r.rate for r in runs):,.0f} | "
            f"{sum(r.processed for r in runs):,} | {sum(r.duplicates for r in runs):,} | "
            f"{sum(r.missing for r in runs):,} | {sum(r.errors for r in runs)} |"
        )
    lines.append("")
    return lines


def targets(bench: Bench) -> list[str]:
    """The issue's targets, checked against this run."""
    by = {(r.subject, r.operation.split(" (")[0].split(",")[0]): r for r in bench.rows}
    worker, huey = (
        by.get(("queuekit", "Queue.dispatch no-op work")),
        by.get(("huey", "dequeue + execute no-op")),
    )
    bulk = by.get(("queuekit", "Queue.publish_many"))
    lines = []
    if worker and huey:
        for level in LEVELS:
            w, h = worker.median(level), huey.median(level)
            wc, hc = worker.cpu_median(level), huey.cpu_median(level)
            if wc and hc:
                lines.append(
                    f"- worker vs huey, CPU per message at {level.upper()}: "
                    f"huey {1e6 / hc:.0f} us, queuekit {1e6 / wc:.0f} us"
                )
            if w and h:
                verdict = "met" if w >= 1.5 * h else "MISSED"
                lines.append(
                    f"- worker vs huey consume at {level.upper()}: "
                    f"{w / h:.2f}x (target 1.5x): {verdict}"
                )
    if bulk:
        for level in LEVELS:
            b = bulk.median(level)
            if b:
                verdict = "met" if b >= 100_000 else "MISSED"
                lines.append(
                    f"- Queue.publish_many at {level.upper()}: {b:,.0f}/s "
                    f"(target 100,000/s): {verdict}"
                )
    depth = [r for r in bench.rows if r.table == "depth"]
    deep = f"{bench.sizes.deep // 1000}k"
    if len(depth) == 2:
        for level in LEVELS:
            sc, lc = depth[0].cpu_median(level), depth[1].cpu_median(level)
            if sc and lc:
                lines.append(
                    f"- {deep} vs 1k waiting at {level.upper()}, msg per CPU-second: {lc / sc:.2f}x"
                )
            s, large = depth[0].median(level), depth[1].median(level)
            if s and large:
                verdict = "met" if large >= 0.9 * s else "MISSED"
                lines.append(
                    f"- {deep} vs 1k waiting at {level.upper()}: {large / s:.2f}x "
                    f"(target: not falling, >= 0.9x allowing noise): {verdict}"
                )
    return lines


def profile(root: str, sizes: Sizes) -> None:
    """Print where queuekit's worker loop spends its time, per synchronous level."""
    from queuekit import connect

    for level in LEVELS:
        with tempfile.TemporaryDirectory(dir=root) as directory:
            url = qk_url(directory, level)
            qk_fill(url, "bench", sizes.waiting)
            with contextlib.closing(connect(url)) as conn:
                q = conn.queue("bench")
                profiler = cProfile.Profile()
                profiler.enable()
                q.dispatch(lambda m: None, max_messages=sizes.consume[level], handle_signals=False)
                profiler.disable()
        print(
            f"\n### queuekit Queue.dispatch, synchronous={level.upper()}, "
            f"{sizes.consume[level]:,} messages"
        )
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(18)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="runs per measurement (median)")
    parser.add_argument(
        "--dir",
        default=os.environ.get("QUEUEKIT_VAR") or "/tmp",
        help="where the scratch files go (default $QUEUEKIT_VAR or /tmp)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=["raw", "queuekit", "peers", "depth", "pair"],
        help="run only these sections (repeatable)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the queuekit worker")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = report.parse_args(parser, {"reps": 1})
    if args.child:
        child(*args.child)
        return
    sizes = QUICK if args.quick else Sizes()
    os.makedirs(args.dir, exist_ok=True)
    root = tempfile.mkdtemp(prefix="queuekit-bench-", dir=args.dir)
    try:
        if args.profile:
            profile(root, sizes)
            return
        bench = Bench(root, args.reps, sizes)
        started = time.monotonic()
        only = set(args.only) if args.only else None
        plan(bench, only)
        bench.execute()
        lines = render(bench)
        if only is None or "pair" in only:
            lines += pairs(bench)
        if only is None or "raw" in only:
            lines += wal_pages(sizes, root)
        elapsed = time.monotonic() - started
    finally:
        shutil.rmtree(root, ignore_errors=True)
    absent = [dist for dist, module in PEERS.items() if report.missing(module)]
    versions = [f"{dist} {version(dist)}" for dist in PEERS if dist not in absent]
    report.heading(
        "SQLite benchmark",
        f"WAL, files under {args.dir}, median of {args.reps} runs, {elapsed:.0f} s in all. "
        f"SQLite {sqlite3.sqlite_version}, {', '.join(versions) or 'no peers'}. "
        f"{report.skipped(absent)}".rstrip(),
    )
    print("\n".join(lines))
    checks = targets(bench)
    if checks:
        print("Targets (issue 2):\n")
        print("\n".join(checks))


if __name__ == "__main__":
    main()
