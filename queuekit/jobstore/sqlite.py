"""The SQLite job store: one file (or a process-shared in-memory database) per store.

Writers take the file's write lock up front (``BEGIN IMMEDIATE``), so concurrent writers
from any number of threads and processes on one host queue instead of failing, and a claim
(``UPDATE ... RETURNING``) runs alone: no row is handed to two claimers. One connection
per store, shared by its threads under a lock. The contract:
:class:`queuekit.jobstore.base.JobStore`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

from ..spi.errors import ConfigurationError
from ..spi.sqlitedb import connect_database, immediate
from ..spi.transport import Outgoing
from ..spi.urls import TransportURL
from .base import (
    COMMITTED,
    CONFLICT,
    DUPLICATE,
    FORWARD_LEASE,
    IDENTITY,
    INBOX_BUSY,
    INBOX_DONE,
    INBOX_NEW,
    KEY_GRACE,
    PROCESS_FIELDS,
    WORKER_FIELDS,
    FailedMessage,
    GroupHead,
    JobStore,
    JobStoreError,
    MakeRun,
    NextRun,
    ProcessInstance,
    ProcessStep,
    Schedule,
    StepRejected,
    StoreCounts,
    ThroughputBucket,
    WorkerInfo,
    delayed_batches,
    group_heads,
    headers_text,
    job_values,
    process_json,
    template_text,
    to_failed,
    to_process,
    to_record,
    to_schedule,
    to_worker,
    worker_values,
)
from .records import FINISHED, JobRecord, JobUpdate

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queuekit_failed (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    message_id TEXT,
    name TEXT,
    reason TEXT NOT NULL,
    traceback TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    failed_at REAL NOT NULL,
    headers TEXT,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS queuekit_failed_queue ON queuekit_failed (queue, id);
CREATE TABLE IF NOT EXISTS queuekit_delayed (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    due REAL NOT NULL,
    claimed_until REAL NOT NULL DEFAULT 0,
    priority INTEGER,
    dedup_key TEXT,
    headers TEXT,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS queuekit_delayed_due ON queuekit_delayed (due, id);
CREATE TABLE IF NOT EXISTS queuekit_jobs (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    name TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    traceback TEXT,
    created_at REAL,
    started_at REAL,
    finished_at REAL,
    worker_pid INTEGER,
    peak_memory INTEGER,
    dedup_key TEXT,
    payload TEXT
);
CREATE INDEX IF NOT EXISTS queuekit_jobs_finished
    ON queuekit_jobs (finished_at) WHERE state IN ('done', 'failed');
CREATE TABLE IF NOT EXISTS queuekit_keys (
    queue TEXT NOT NULL,
    key TEXT NOT NULL,
    message_id TEXT NOT NULL,
    ever INTEGER NOT NULL,
    confirmed INTEGER NOT NULL DEFAULT 0,
    held_at REAL NOT NULL,
    PRIMARY KEY (queue, key)
);
CREATE TABLE IF NOT EXISTS queuekit_grouped (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    grp TEXT NOT NULL,
    message_id TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'waiting',
    lease_until REAL NOT NULL DEFAULT 0,
    due REAL,
    priority INTEGER,
    headers TEXT,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS queuekit_grouped_line ON queuekit_grouped (queue, grp, id);
CREATE TABLE IF NOT EXISTS queuekit_schedules (
    name TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    every REAL NOT NULL,
    next_run REAL NOT NULL,
    template TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS queuekit_schedules_due ON queuekit_schedules (queue, next_run);
CREATE TABLE IF NOT EXISTS queuekit_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS queuekit_workers (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    concurrency INTEGER NOT NULL,
    started_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    slot INTEGER NOT NULL,
    processed INTEGER NOT NULL,
    failed INTEGER,
    current TEXT,
    rss INTEGER
);
CREATE INDEX IF NOT EXISTS queuekit_workers_seen ON queuekit_workers (queue, last_seen);
CREATE TABLE IF NOT EXISTS queuekit_processes (
    manager TEXT NOT NULL,
    pkey TEXT NOT NULL,
    state TEXT NOT NULL,
    version INTEGER NOT NULL,
    completed INTEGER NOT NULL,
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    timeouts TEXT,
    PRIMARY KEY (manager, pkey)
);
CREATE TABLE IF NOT EXISTS queuekit_process_handled (
    manager TEXT NOT NULL,
    pkey TEXT NOT NULL,
    message_id TEXT NOT NULL,
    handled_at REAL NOT NULL,
    PRIMARY KEY (manager, pkey, message_id)
);
CREATE TABLE IF NOT EXISTS queuekit_inbox (
    consumer TEXT NOT NULL,
    message_id TEXT NOT NULL,
    done INTEGER NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
CREATE TABLE IF NOT EXISTS queuekit_paused (
    queue TEXT PRIMARY KEY,
    paused_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS queuekit_throughput (
    queue TEXT NOT NULL,
    minute INTEGER NOT NULL,
    processed INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    PRIMARY KEY (minute, queue)
);
CREATE TABLE IF NOT EXISTS queuekit_starts (
    message_id TEXT PRIMARY KEY,
    starts INTEGER NOT NULL,
    started_at REAL NOT NULL
);
"""
_SCHEDULE_COLUMNS = "name, queue, every, next_run, template"
_JOB_COLUMNS = (
    "id, queue, name, state, attempts, result, error, traceback, created_at, started_at,"
    " finished_at, worker_pid, peak_memory, dedup_key, payload"
)
_JOB_VALUES = ", ".join("?" * 15)
# A publish or an attempt's end: the whole row as the writer knows it.
_WRITE_JOB = (
    f"INSERT INTO queuekit_jobs ({_JOB_COLUMNS}) VALUES ({_JOB_VALUES})"
    " ON CONFLICT (id) DO UPDATE SET state = excluded.state, attempts = excluded.attempts,"
    " result = excluded.result, error = excluded.error, traceback = excluded.traceback,"
    " started_at = COALESCE(excluded.started_at, started_at),"
    " finished_at = excluded.finished_at,"
    " worker_pid = COALESCE(excluded.worker_pid, worker_pid),"
    " peak_memory = COALESCE(excluded.peak_memory, peak_memory),"
    " dedup_key = COALESCE(excluded.dedup_key, dedup_key),"
    " payload = COALESCE(excluded.payload, payload)"
)
# An attempt's start: the last attempt's error stays visible while the next one runs.
_START_JOB = (
    f"INSERT INTO queuekit_jobs ({_JOB_COLUMNS}) VALUES ({_JOB_VALUES})"
    " ON CONFLICT (id) DO UPDATE SET state = excluded.state, attempts = excluded.attempts,"
    " started_at = excluded.started_at, finished_at = NULL, worker_pid = excluded.worker_pid"
)
_WORKER_COLUMNS = ", ".join(WORKER_FIELDS)
_PROCESS_COLUMNS = ", ".join(PROCESS_FIELDS)
_UNFINISHED_CHUNK = 500  # ids per query, well under SQLite's bound-parameter limit


class SQLiteJobStore(JobStore):
    """See the module docstring. ``url`` is ``sqlite:///path``, ``sqlite:///:memory:``, or
    ``sqlite:///:memory:?share=NAME``: one in-memory database for every store of this
    process that names it (what ``memory://NAME`` connections use, so they share one failed
    store, one set of keys and groups, as they share one broker). ``?synchronous=full``
    also survives power loss (see :func:`queuekit.spi.sqlitedb.connect_database`)."""

    def __init__(self, url: str | TransportURL) -> None:
        parsed = url if isinstance(url, TransportURL) else TransportURL.parse(url)
        if parsed.scheme != "sqlite":
            raise ConfigurationError(
                f"job store {parsed.redacted()}: only sqlite:///path is supported"
            )
        if not parsed.path:  # no silent default file in the working directory
            raise ConfigurationError(
                f"job store {parsed.redacted()} names no file: use sqlite:///relative.db or"
                " sqlite:////absolute.db"
            )
        self.url = parsed
        self._share = parsed.option("share") if parsed.path == ":memory:" else None
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        if self._share is not None and self._db is None:
            with self._lock:  # this store's own lock, until it holds the shared one
                if self._db is None:
                    self._db, self._lock = _join_share(self._share)
        with self._lock:
            try:
                if self._db is None:
                    path = self.url.path
                    synchronous = self.url.option("synchronous") or "normal"
                    db = connect_database(path, synchronous=synchronous, schema=_SCHEMA)
                    _add_new_columns(db)
                    self._db = db
                yield self._db
            except sqlite3.Error as exc:  # the contract's one error type, mapped here
                raise JobStoreError(
                    f"job store {self.url.redacted()}: {exc}",
                    recoverable=isinstance(exc, sqlite3.OperationalError),
                ) from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as db, immediate(db):
            yield db

    def close(self) -> None:
        with self._lock:
            if self._db is not None and self._share is not None:
                _leave_share(self._share)
            elif self._db is not None:
                self._db.close()
            self._db = None

    def _load_identity(self) -> str:
        with self._connection() as db:
            row = db.execute(
                "INSERT INTO queuekit_meta (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = value RETURNING value",
                (IDENTITY, os.urandom(16).hex()),
            ).fetchone()
        return str(row[0])

    # -- failed store --------------------------------------------------------------------

    def add_failed(
        self,
        queue: str,
        body: bytes,
        reason: str,
        *,
        message_id: str | None = None,
        name: str | None = None,
        traceback: str | None = None,
        attempts: int = 0,
        headers: dict[str, str] | None = None,
        job: JobUpdate | None = None,
    ) -> int:
        with self._transaction() as db:
            if job is not None:
                db.execute(_WRITE_JOB, job_values(job))
            cursor = db.execute(
                "INSERT INTO queuekit_failed (queue, message_id, name, reason, traceback,"
                " attempts, failed_at, headers, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    queue,
                    message_id,
                    name,
                    reason,
                    traceback,
                    attempts,
                    time.time(),
                    headers_text(headers or {}),
                    body,
                ),
            )
        return int(cursor.lastrowid or 0)

    def failed(self, queue: str | None = None, *, limit: int = 1000) -> list[FailedMessage]:
        query = "SELECT * FROM queuekit_failed"
        args: tuple[object, ...] = ()
        if queue is not None:
            query, args = query + " WHERE queue = ?", (queue,)
        with self._connection() as db:
            rows = db.execute(query + " ORDER BY id LIMIT ?", (*args, limit)).fetchall()
        return [to_failed(row) for row in rows]

    def get_failed(self, failed_id: int) -> FailedMessage | None:
        with self._connection() as db:
            row = db.execute("SELECT * FROM queuekit_failed WHERE id = ?", (failed_id,)).fetchone()
        return to_failed(row) if row else None

    def remove_failed(self, failed_id: int) -> bool:
        with self._connection() as db:
            return db.execute("DELETE FROM queuekit_failed WHERE id = ?", (failed_id,)).rowcount > 0

    def purge_failed(self, queue: str | None = None) -> int:
        with self._connection() as db:
            if queue is None:
                return db.execute("DELETE FROM queuekit_failed").rowcount
            return db.execute("DELETE FROM queuekit_failed WHERE queue = ?", (queue,)).rowcount

    def queue_counts(self) -> dict[str, StoreCounts]:
        with self._connection() as db:
            delayed = db.execute("SELECT queue, COUNT(*) FROM queuekit_delayed GROUP BY queue")
            held = dict(delayed.fetchall())
            failed = db.execute("SELECT queue, COUNT(*) FROM queuekit_failed GROUP BY queue")
            dead = dict(failed.fetchall())
        return {q: StoreCounts(held.get(q, 0), dead.get(q, 0)) for q in sorted({*held, *dead})}

    # -- delayed store -------------------------------------------------------------------

    def add_delayed(self, queue: str, due: float, messages: Sequence[Outgoing]) -> None:
        rows = [
            (
                queue,
                due,
                m.options.priority,
                m.options.dedup_key,
                headers_text(m.headers),
                m.body,
            )
            for m in messages
        ]
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO queuekit_delayed (queue, due, priority, dedup_key, headers, body)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )

    def next_due(self) -> float | None:
        with self._connection() as db:
            row = db.execute("SELECT MIN(due) FROM queuekit_delayed").fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def forward_due(
        self, send: Callable[[str, Sequence[Outgoing]], None], *, limit: int = 500
    ) -> int:
        now = time.time()
        with self._connection() as db:  # mostly nothing is due: no write lock for that
            found = db.execute(
                "SELECT 1 FROM queuekit_delayed WHERE due <= ? AND claimed_until < ? LIMIT 1",
                (now, now),
            )
            if found.fetchone() is None:
                return 0
        with self._transaction() as db:
            rows = db.execute(
                "UPDATE queuekit_delayed SET claimed_until = ? WHERE id IN ("
                " SELECT id FROM queuekit_delayed WHERE due <= ? AND claimed_until < ?"
                " ORDER BY due, id LIMIT ?)"
                " RETURNING id, queue, due, priority, dedup_key, headers, body",
                (now + FORWARD_LEASE, now, now, limit),
            ).fetchall()
        if not rows:
            return 0
        for queue, batch in delayed_batches(rows).items():
            send(queue, batch)
        with self._transaction() as db:
            db.executemany("DELETE FROM queuekit_delayed WHERE id = ?", [(r[0],) for r in rows])
        return len(rows)

    # -- schedules (recurring jobs) ------------------------------------------------------

    def set_schedule(self, schedule: Schedule) -> None:
        with self._connection() as db:
            db.execute(
                "INSERT OR REPLACE INTO queuekit_schedules (name, queue, every, next_run,"
                " template) VALUES (?, ?, ?, ?, ?)",
                (schedule.name, schedule.queue, schedule.every, schedule.next_run,
                 template_text(schedule)),
            )  # fmt: skip

    def remove_schedule(self, name: str) -> bool:
        with self._connection() as db:
            return db.execute("DELETE FROM queuekit_schedules WHERE name = ?", (name,)).rowcount > 0

    def schedules(self) -> list[Schedule]:
        with self._connection() as db:
            rows = db.execute(f"SELECT {_SCHEDULE_COLUMNS} FROM queuekit_schedules ORDER BY name")
            return [to_schedule(row) for row in rows]

    def fire_schedules(self, queue: str, make: MakeRun, advance: NextRun) -> int:
        now = time.time()
        due_query = (
            f"SELECT {_SCHEDULE_COLUMNS} FROM queuekit_schedules WHERE queue = ? AND next_run <= ?"
        )
        with self._connection() as db:  # mostly nothing is due: no write lock for that
            if db.execute(due_query + " LIMIT 1", (queue, now)).fetchone() is None:
                return 0
        with self._transaction() as db:
            due = [to_schedule(row) for row in db.execute(due_query, (queue, now)).fetchall()]
            for schedule in due:
                run = make(schedule, schedule.next_run)
                db.execute(
                    "INSERT INTO queuekit_delayed (queue, due, priority, headers, body)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (queue, schedule.next_run, run.options.priority,
                     headers_text(run.headers), run.body),
                )  # fmt: skip
                db.execute(
                    "UPDATE queuekit_schedules SET next_run = ? WHERE name = ?",
                    (advance(schedule, now), schedule.name),
                )
        return len(due)

    # -- dedup keys (brokers without native dedup, and "ever" keys everywhere) -----------

    def hold_key(self, queue: str, key: str, message_id: str, *, ever: bool) -> bool:
        now = time.time()
        with self._connection() as db:
            row = db.execute(
                "INSERT INTO queuekit_keys (queue, key, message_id, ever, held_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (queue, key) DO UPDATE SET"
                " message_id = excluded.message_id, ever = excluded.ever,"
                " held_at = excluded.held_at WHERE confirmed = 0 AND held_at < ?"
                " RETURNING message_id",
                (queue, key, message_id, int(ever), now, now - KEY_GRACE),
            ).fetchone()
        return row is not None

    def confirm_key(self, queue: str, key: str, message_id: str) -> None:
        with self._connection() as db:
            db.execute(
                "UPDATE queuekit_keys SET confirmed = 1"
                " WHERE queue = ? AND key = ? AND message_id = ?",
                (queue, key, message_id),
            )

    def release_key(self, queue: str, key: str, message_id: str, *, ever: bool = False) -> None:
        query = "DELETE FROM queuekit_keys WHERE queue = ? AND key = ? AND message_id = ?"
        with self._connection() as db:
            db.execute(query if ever else query + " AND ever = 0", (queue, key, message_id))

    # -- serial groups -------------------------------------------------------------------

    def add_grouped(
        self,
        queue: str,
        group: str,
        items: Sequence[tuple[str, Outgoing, float | None]],
    ) -> None:
        rows = [
            (
                queue,
                group,
                message_id,
                due,
                out.options.priority,
                headers_text(out.headers),
                out.body,
            )
            for message_id, out, due in items
        ]
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO queuekit_grouped (queue, grp, message_id, due, priority, headers,"
                " body) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def claim_group_heads(
        self, queue: str | None = None, group: str | None = None, *, limit: int = 500
    ) -> list[GroupHead]:
        now = time.time()
        where = ""
        args: tuple[str, ...] = ()
        for column, value in (("queue", queue), ("grp", group)):
            if value is not None:
                where, args = f"{where} AND {column} = ?", (*args, value)
        with self._connection() as db:  # a sweep finds nothing mostly: no write lock for that
            if not db.execute(
                f"SELECT 1 FROM queuekit_grouped WHERE 1 = 1{where}", args
            ).fetchone():
                return []
        with self._transaction() as db:
            rows = db.execute(
                "UPDATE queuekit_grouped SET state = 'sending', lease_until = ? WHERE id IN ("
                " SELECT g.id FROM (SELECT MIN(id) AS head FROM queuekit_grouped"
                f" WHERE 1 = 1{where} GROUP BY queue, grp) JOIN queuekit_grouped g ON g.id = head"
                " WHERE g.state = 'waiting' OR (g.state = 'sending' AND g.lease_until < ?)"
                " LIMIT ?) RETURNING id, queue, grp, message_id, due, priority, headers, body",
                (now + FORWARD_LEASE, *args, now, limit),
            ).fetchall()
        return group_heads(rows)

    def mark_sent(self, heads: Sequence[GroupHead]) -> None:
        with self._transaction() as db:
            db.executemany(
                "UPDATE queuekit_grouped SET state = 'sent' WHERE id = ?",
                [(head.row,) for head in heads],
            )

    def finish_grouped(self, queue: str, group: str, message_id: str) -> None:
        with self._connection() as db:
            db.execute(
                "DELETE FROM queuekit_grouped WHERE queue = ? AND grp = ? AND message_id = ?"
                " AND state != 'waiting'",
                (queue, group, message_id),
            )

    # -- process instances (process managers) ---------------------------------------------

    def load_process(
        self, manager: str, key: str, message_id: str
    ) -> tuple[ProcessInstance | None, bool]:
        with self._connection() as db:
            row = db.execute(
                f"SELECT {_PROCESS_COLUMNS} FROM queuekit_processes WHERE manager = ? AND pkey = ?",
                (manager, key),
            ).fetchone()
            handled = db.execute(
                "SELECT 1 FROM queuekit_process_handled"
                " WHERE manager = ? AND pkey = ? AND message_id = ?",
                (manager, key, message_id),
            ).fetchone()
        return (to_process(row) if row else None), handled is not None

    def commit_process(self, step: ProcessStep) -> str:
        now, where = time.time(), (step.manager, step.key)
        state, timeouts = process_json(step)
        try:
            with self._transaction() as db:
                if (
                    step.message_id is not None
                    and not db.execute(
                        "INSERT INTO queuekit_process_handled (manager, pkey, message_id,"
                        " handled_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        (*where, step.message_id, now),
                    ).rowcount
                ):
                    raise StepRejected(DUPLICATE)
                if step.version == 0:
                    changed = db.execute(
                        f"INSERT INTO queuekit_processes ({_PROCESS_COLUMNS})"
                        " VALUES (?, ?, ?, 1, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        (*where, state, int(step.completed), now, now, timeouts),
                    ).rowcount
                else:
                    changed = db.execute(
                        "UPDATE queuekit_processes SET state = ?, version = version + 1,"
                        " completed = ?, updated_at = ?, timeouts = ?"
                        " WHERE manager = ? AND pkey = ? AND version = ? AND completed = 0",
                        (state, int(step.completed), now, timeouts, *where, step.version),
                    ).rowcount
                if not changed:
                    raise StepRejected(CONFLICT)
                if step.completed:
                    db.execute(
                        "DELETE FROM queuekit_process_handled WHERE manager = ? AND pkey = ?",
                        where,
                    )
                db.executemany(
                    "INSERT INTO queuekit_delayed (queue, due, priority, dedup_key, headers,"
                    " body) VALUES (?, ?, ?, ?, ?, ?)",
                    [(queue, due, out.options.priority, out.options.dedup_key,
                      headers_text(out.headers), out.body) for queue, due, out in step.sends],
                )  # fmt: skip
        except StepRejected as undo:
            return undo.outcome
        return COMMITTED

    def processes(
        self, manager: str | None = None, *, completed: bool | None = None, limit: int = 1000
    ) -> list[ProcessInstance]:
        clauses, args = [], []
        for column, value in (("manager", manager), ("completed", completed)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(int(value) if isinstance(value, bool) else value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._connection() as db:
            rows = db.execute(
                f"SELECT {_PROCESS_COLUMNS} FROM queuekit_processes{where}"
                " ORDER BY started_at, manager, pkey LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [to_process(row) for row in rows]

    def purge_processes(self, manager: str | None = None, *, older_than: float = 0.0) -> int:
        query = "DELETE FROM queuekit_processes WHERE completed = 1 AND updated_at <= ?"
        forget = "DELETE FROM queuekit_process_handled WHERE handled_at <= ?"
        args: tuple[object, ...] = (time.time() - older_than,)
        if manager is not None:
            query, forget = query + " AND manager = ?", forget + " AND manager = ?"
            args = (*args, manager)
        with self._transaction() as db:
            db.execute(forget, args)
            return db.execute(query, args).rowcount

    # -- job records ---------------------------------------------------------------------

    def write_jobs(self, updates: Sequence[JobUpdate]) -> None:
        if not updates:
            return
        with self._connection() as db:
            if len(updates) == 1:  # autocommit: one statement is one transaction
                db.execute(_WRITE_JOB, job_values(updates[0]))
                return
        with self._transaction() as db:
            db.executemany(_WRITE_JOB, [job_values(u) for u in updates])

    # -- start journal (brokers that redeliver without saying so) --------------------------

    def begin_delivery(self, message_id: str) -> int:
        with self._connection() as db:
            row = db.execute(
                "INSERT INTO queuekit_starts (message_id, starts, started_at) VALUES (?, 1, ?)"
                " ON CONFLICT (message_id) DO UPDATE SET starts = starts + 1,"
                " started_at = excluded.started_at RETURNING starts",
                (message_id, time.time()),
            ).fetchone()
        return int(row[0])

    def end_delivery(self, message_id: str) -> None:
        with self._connection() as db:
            db.execute("DELETE FROM queuekit_starts WHERE message_id = ?", (message_id,))

    # -- inbox ---------------------------------------------------------------------------

    def inbox_claim(self, consumer: str, message_id: str, *, lease: float) -> str:
        now = time.time()
        with self._transaction() as db:
            claimed = db.execute(
                "INSERT INTO queuekit_inbox (consumer, message_id, done, at) VALUES (?, ?, 0, ?)"
                " ON CONFLICT (consumer, message_id) DO UPDATE SET at = excluded.at"
                " WHERE done = 0 AND at < ? RETURNING done",
                (consumer, message_id, now, now - lease),
            ).fetchone()
            if claimed is not None:
                return INBOX_NEW
            (done,) = db.execute(
                "SELECT done FROM queuekit_inbox WHERE consumer = ? AND message_id = ?",
                (consumer, message_id),
            ).fetchone()
        return INBOX_DONE if done else INBOX_BUSY

    def inbox_done(self, consumer: str, message_id: str) -> None:
        with self._connection() as db:
            db.execute(
                "UPDATE queuekit_inbox SET done = 1, at = ? WHERE consumer = ? AND message_id = ?",
                (time.time(), consumer, message_id),
            )

    def inbox_release(self, consumer: str, message_id: str) -> None:
        with self._connection() as db:
            db.execute(
                "DELETE FROM queuekit_inbox WHERE consumer = ? AND message_id = ? AND done = 0",
                (consumer, message_id),
            )

    def inbox_prune(self, older_than: float) -> int:
        with self._connection() as db:
            return db.execute(
                "DELETE FROM queuekit_inbox WHERE done = 1 AND at <= ?",
                (time.time() - older_than,),
            ).rowcount

    # -- worker registry -----------------------------------------------------------------

    def register_worker(
        self, worker: WorkerInfo, *, timeout: float, limit: int | None = None
    ) -> bool:
        now = time.time()
        with self._transaction() as db:  # the write lock: claimers count and add one by one
            db.execute(
                "DELETE FROM queuekit_workers WHERE queue = ? AND (last_seen < ? OR id = ?)",
                (worker.queue, now - timeout, worker.id),
            )
            if limit is not None:
                (held,) = db.execute(
                    "SELECT COUNT(*) FROM queuekit_workers WHERE queue = ? AND slot = 1",
                    (worker.queue,),
                ).fetchone()
                if held >= limit:
                    return False
            marks = ", ".join("?" * len(WORKER_FIELDS))
            db.execute(
                f"INSERT INTO queuekit_workers ({_WORKER_COLUMNS}) VALUES ({marks})",
                worker_values(worker, now, slot=limit is not None),
            )
        return True

    def heartbeat_worker(
        self,
        worker_id: str,
        *,
        processed: int,
        failed: int | None = None,
        current: Sequence[str] = (),
        rss: int | None = None,
    ) -> bool:
        with self._connection() as db:  # one statement: one transaction
            return (
                db.execute(
                    "UPDATE queuekit_workers SET last_seen = ?, processed = ?, failed = ?,"
                    " current = ?, rss = ? WHERE id = ?",
                    (time.time(), processed, failed, json.dumps(list(current)), rss, worker_id),
                ).rowcount
                > 0
            )

    def deregister_worker(self, worker_id: str) -> None:
        with self._connection() as db:
            db.execute("DELETE FROM queuekit_workers WHERE id = ?", (worker_id,))

    def workers(
        self, queue: str | None = None, *, timeout: float | None = None
    ) -> list[WorkerInfo]:
        clauses: list[str] = []
        args: list[object] = []
        if queue is not None:
            clauses.append("queue = ?")
            args.append(queue)
        if timeout is not None:
            clauses.append("last_seen >= ?")
            args.append(time.time() - timeout)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._connection() as db:
            rows = db.execute(
                f"SELECT {_WORKER_COLUMNS} FROM queuekit_workers{where} ORDER BY started_at, id",
                args,
            ).fetchall()
        return [to_worker(row) for row in rows]

    # -- queue controls and throughput ---------------------------------------------------

    def pause_queue(self, queue: str) -> None:
        with self._connection() as db:
            db.execute(
                "INSERT INTO queuekit_paused (queue, paused_at) VALUES (?, ?)"
                " ON CONFLICT (queue) DO NOTHING",
                (queue, time.time()),
            )

    def resume_queue(self, queue: str) -> bool:
        with self._connection() as db:
            gone = db.execute("DELETE FROM queuekit_paused WHERE queue = ?", (queue,)).rowcount
        return gone > 0

    def paused_queues(self) -> dict[str, float]:
        with self._connection() as db:
            rows = db.execute("SELECT queue, paused_at FROM queuekit_paused").fetchall()
        return {str(queue): float(at) for queue, at in rows}

    def add_throughput(self, buckets: Sequence[ThroughputBucket]) -> None:
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO queuekit_throughput (queue, minute, processed, failed)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (minute, queue) DO UPDATE SET"
                " processed = processed + excluded.processed,"
                " failed = failed + excluded.failed",
                [(b.queue, b.minute, b.processed, b.failed) for b in buckets],
            )

    def throughput(self, since: float, queue: str | None = None) -> list[ThroughputBucket]:
        where, args = "minute >= ?", list[object]([since])
        if queue is not None:
            where, args = f"{where} AND queue = ?", [since, queue]
        with self._connection() as db:
            rows = db.execute(
                "SELECT queue, minute, processed, failed FROM queuekit_throughput"
                f" WHERE {where} ORDER BY queue, minute",
                args,
            ).fetchall()
        return [ThroughputBucket(*row) for row in rows]

    def prune_throughput(self, before: float) -> int:
        with self._connection() as db:
            cursor = db.execute("DELETE FROM queuekit_throughput WHERE minute < ?", (before,))
        return int(cursor.rowcount)

    def start_job(self, update: JobUpdate) -> None:
        with self._connection() as db:  # one statement: one transaction
            db.execute(_START_JOB, job_values(update))

    def delete_jobs(self, ids: Sequence[str]) -> None:
        with self._transaction() as db:
            db.executemany("DELETE FROM queuekit_jobs WHERE id = ?", [(i,) for i in ids])

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._connection() as db:
            row = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM queuekit_jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return to_record(row) if row else None

    def jobs(
        self,
        queue: str | None = None,
        *,
        state: str | None = None,
        key: str | None = None,
        limit: int = 1000,
    ) -> list[JobRecord]:
        clauses, args = [], []
        for column, value in (("queue", queue), ("state", state), ("dedup_key", key)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._connection() as db:
            rows = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM queuekit_jobs{where} ORDER BY created_at DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [to_record(row) for row in rows]

    def unfinished(self, ids: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(ids))
        found: set[str] = set()
        with self._connection() as db:
            for start in range(0, len(wanted), _UNFINISHED_CHUNK):
                chunk = wanted[start : start + _UNFINISHED_CHUNK]
                marks = ",".join("?" * len(chunk))
                found.update(
                    row[0]
                    for row in db.execute(
                        f"SELECT id FROM queuekit_jobs WHERE id IN ({marks})"
                        " AND state NOT IN (?, ?)",
                        (*chunk, *FINISHED),
                    )
                )
        return found

    def clear_finished(self, older_than: float = 0.0, *, queue: str | None = None) -> int:
        cutoff = time.time() - older_than
        query = "DELETE FROM queuekit_jobs WHERE state IN (?, ?) AND finished_at <= ?"
        args: tuple[object, ...] = (*FINISHED, cutoff)
        if queue is not None:
            query, args = query + " AND queue = ?", (*args, queue)
        with self._transaction() as db:
            return db.execute(query, args).rowcount


#: Columns added to ``queuekit_jobs`` since it was first released: a store created by an
#: older queuekit gets them when it is opened (its rows keep NULL there).
_NEW_JOB_COLUMNS = {"dedup_key": "TEXT", "payload": "TEXT"}


def _add_new_columns(db: sqlite3.Connection) -> None:
    """Bring a ``queuekit_jobs`` table of an older schema up to date. Idempotent; when two
    processes open an old store at once, the one whose ALTER comes second finds the column
    there and goes on."""
    have = {row[1] for row in db.execute("PRAGMA table_info(queuekit_jobs)")}
    for name, kind in _NEW_JOB_COLUMNS.items():
        if name in have:
            continue
        try:
            db.execute(f"ALTER TABLE queuekit_jobs ADD COLUMN {name} {kind}")
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):
                raise
    db.execute("CREATE INDEX IF NOT EXISTS queuekit_jobs_key ON queuekit_jobs (dedup_key)"
               " WHERE dedup_key IS NOT NULL")  # fmt: skip


_shares: dict[str, tuple[sqlite3.Connection, threading.RLock, int]] = {}
_shares_lock = threading.Lock()


def _join_share(name: str) -> tuple[sqlite3.Connection, threading.RLock]:
    with _shares_lock:
        db, lock, users = _shares.get(name) or (connect_database(":memory:"), threading.RLock(), 0)
        if not users:
            db.executescript(_SCHEMA)
            _add_new_columns(db)
        _shares[name] = (db, lock, users + 1)
        return db, lock


def _leave_share(name: str) -> None:
    with _shares_lock:
        db, lock, users = _shares[name]
        if users > 1:
            _shares[name] = (db, lock, users - 1)
        else:
            del _shares[name]
            db.close()
