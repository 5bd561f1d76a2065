"""The job store on PostgreSQL or MySQL/MariaDB (SQLAlchemy Core): for workers on many hosts.

``postgresql+psycopg://user:pass@host/db`` (PostgreSQL 9.5 or later), ``mysql+pymysql://...``
or ``mariadb+pymysql://...`` (MySQL 8.0.1 or MariaDB 10.6 or later: they need ``SKIP LOCKED``);
without a driver (``postgresql://``, ``mysql://``, ``mariadb://``) the ones of
``queuekit[sql]`` are used. Option ``?table_prefix=NAME_`` (default ``queuekit_``) names the
tables, so several stores can share one database. The tables are created on first use.

How the contract holds across hosts (every transaction runs at READ COMMITTED):

- **Claims** (``forward_due``, ``claim_group_heads``) select their rows ``FOR UPDATE SKIP
  LOCKED`` and stamp a lease in the same transaction: a row another claimer has locked is
  skipped, one it has stamped no longer matches, so no row goes to two claimers at once.
- **Serial groups** also have one row per group in ``<prefix>groups``, locked by a publisher
  while it lines up messages and by a claimer while it picks the head: the head is chosen on
  data no one is changing, and ids in a group grow in the order publishers committed.
- **Keys**: PostgreSQL holds a key in one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE ...
  RETURNING``; MySQL/MariaDB (no ``RETURNING`` on upserts) inserts, and on a duplicate takes
  over an expired hold with one conditional ``UPDATE``: of racing publishers one wins.
- **Workers-limit slots**: a worker registering with a limit locks its queue's row in
  ``<prefix>worker_queues`` (``FOR UPDATE``), then deletes dead workers, counts the slots held
  and adds itself, and commits: claimers of one queue take turns, each counting what the one
  before it committed, so no more than the limit ever hold slots.
- A transaction the database aborts as a deadlock or lock timeout is retried (a few times).

Limits: queue names, group names and message ids up to 255 characters (they are in keys;
MariaDB bounds a key to 3072 bytes); dedup keys are stored with their SHA-256, any length.
Driver errors are raised as :class:`JobStoreError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    and_,
    case,
    create_engine,
    delete,
    exists,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)

from ..spi.errors import ConfigurationError
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
    MissingStoreDependency,
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

T = TypeVar("T")
DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}
_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}$")
_RETRIES = 5  # attempts at a transaction the database aborted as a deadlock
_DEADLOCKS = {"40001", "40P01", "55P03"}  # PostgreSQL: serialization, deadlock, lock timeout
_MYSQL_DEADLOCKS = {1205, 1213}  # lock wait timeout, deadlock
_MYSQL_DUPLICATE = 1062
_CHUNK = 500  # ids per IN (...) list
_JOB_FIELDS = (
    "id", "queue", "name", "state", "attempts", "result", "error", "traceback", "created_at",
    "started_at", "finished_at", "worker_pid", "peak_memory", "dedup_key", "payload",
)  # fmt: skip

# MySQL's TEXT and BLOB stop at 64 KiB: results, tracebacks and bodies get the LONG ones.
_TEXT = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
_BLOB = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
_NAME = String(255)
_MYSQL: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",  # names and ids compare exactly, as in SQLite
}


def _new_job_columns() -> list[Column[Any]]:
    """Columns of the jobs table added since it was first released: a store created by an
    older queuekit gets them when it is opened (see ``SQLJobStore._add_new_columns``)."""
    return [Column("dedup_key", _TEXT), Column("payload", _TEXT)]


def _schema(prefix: str) -> MetaData:
    meta = MetaData()
    Table(
        f"{prefix}failed",
        meta,
        Column("id", BigInteger, primary_key=True, autoincrement=True),
        Column("queue", _NAME, nullable=False),
        Column("message_id", _NAME),
        Column("name", _TEXT),
        Column("reason", _TEXT, nullable=False),
        Column("traceback", _TEXT),
        Column("attempts", Integer, nullable=False),
        Column("failed_at", Double, nullable=False),
        Column("headers", _TEXT),
        Column("body", _BLOB, nullable=False),
        Index(f"{prefix}failed_queue", "queue", "id"),
        **_MYSQL,
    )
    Table(
        f"{prefix}delayed",
        meta,
        Column("id", BigInteger, primary_key=True, autoincrement=True),
        Column("queue", _NAME, nullable=False),
        Column("due", Double, nullable=False),
        Column("claimed_until", Double, nullable=False, default=0.0),
        Column("priority", Integer),
        Column("dedup_key", _TEXT),
        Column("headers", _TEXT),
        Column("body", _BLOB, nullable=False),
        Index(f"{prefix}delayed_due", "due", "id"),
        **_MYSQL,
    )
    Table(
        f"{prefix}jobs",
        meta,
        Column("id", _NAME, primary_key=True),
        Column("queue", _NAME, nullable=False),
        Column("name", _TEXT),
        Column("state", String(16), nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("result", _TEXT),
        Column("error", _TEXT),
        Column("traceback", _TEXT),
        Column("created_at", Double),
        Column("started_at", Double),
        Column("finished_at", Double),
        Column("worker_pid", Integer),
        Column("peak_memory", BigInteger),
        *_new_job_columns(),
        Index(f"{prefix}jobs_finished", "state", "finished_at"),
        **_MYSQL,
    )
    Table(
        f"{prefix}keys",
        meta,
        Column("queue", _NAME, nullable=False),
        Column("digest", String(64), nullable=False),  # SHA-256 of the key: any length fits
        Column("key", _TEXT, nullable=False),
        Column("message_id", _NAME, nullable=False),
        Column("ever", Boolean, nullable=False),
        Column("confirmed", Boolean, nullable=False, default=False),
        Column("held_at", Double, nullable=False),
        PrimaryKeyConstraint("queue", "digest"),
        **_MYSQL,
    )
    Table(
        f"{prefix}groups",
        meta,
        Column("queue", _NAME, nullable=False),
        Column("grp", _NAME, nullable=False),
        PrimaryKeyConstraint("queue", "grp"),
        **_MYSQL,
    )
    Table(
        f"{prefix}grouped",
        meta,
        Column("id", BigInteger, primary_key=True, autoincrement=True),
        Column("queue", _NAME, nullable=False),
        Column("grp", _NAME, nullable=False),
        Column("message_id", _NAME, nullable=False),
        Column("state", String(8), nullable=False, default="waiting"),
        Column("lease_until", Double, nullable=False, default=0.0),
        Column("due", Double),
        Column("priority", Integer),
        Column("headers", _TEXT),
        Column("body", _BLOB, nullable=False),
        Index(f"{prefix}grouped_line", "queue", "grp", "id"),
        **_MYSQL,
    )
    Table(
        f"{prefix}schedules",
        meta,
        Column("name", _NAME, primary_key=True),
        Column("queue", _NAME, nullable=False),
        Column("every", Double, nullable=False),
        Column("next_run", Double, nullable=False),
        Column("template", _TEXT, nullable=False),
        Index(f"{prefix}schedules_due", "queue", "next_run"),
        **_MYSQL,
    )
    Table(
        f"{prefix}meta",
        meta,
        Column("name", String(64), primary_key=True),
        Column("value", _TEXT, nullable=False),
        **_MYSQL,
    )
    Table(
        f"{prefix}workers",
        meta,
        Column("id", _NAME, primary_key=True),
        Column("queue", _NAME, nullable=False),
        Column("host", _NAME, nullable=False),
        Column("pid", Integer, nullable=False),
        Column("concurrency", Integer, nullable=False),
        Column("started_at", Double, nullable=False),
        Column("last_seen", Double, nullable=False),
        Column("slot", Boolean, nullable=False),
        Column("processed", BigInteger, nullable=False),
        Column("failed", BigInteger),
        Column("current", _TEXT),
        Column("rss", BigInteger),
        Index(f"{prefix}workers_seen", "queue", "last_seen"),
        **_MYSQL,
    )
    Table(  # one row per queue whose workers claim slots: a claimer locks it while it counts
        f"{prefix}worker_queues",
        meta,
        Column("queue", _NAME, primary_key=True),
        **_MYSQL,
    )
    Table(
        f"{prefix}processes",
        meta,
        Column("manager", _NAME, nullable=False),
        Column("pkey", _NAME, nullable=False),
        Column("state", _TEXT, nullable=False),
        Column("version", BigInteger, nullable=False),
        Column("completed", Boolean, nullable=False),
        Column("started_at", Double, nullable=False),
        Column("updated_at", Double, nullable=False),
        Column("timeouts", _TEXT),
        PrimaryKeyConstraint("manager", "pkey"),
        **_MYSQL,
    )
    Table(
        f"{prefix}process_handled",
        meta,
        Column("manager", _NAME, nullable=False),
        Column("pkey", _NAME, nullable=False),
        Column("message_id", _NAME, nullable=False),
        Column("handled_at", Double, nullable=False),
        PrimaryKeyConstraint("manager", "pkey", "message_id"),
        **_MYSQL,
    )
    Table(
        f"{prefix}inbox",
        meta,
        Column("consumer", _NAME, nullable=False),
        Column("message_id", _NAME, nullable=False),
        Column("done", Boolean, nullable=False),
        Column("at", Double, nullable=False),
        PrimaryKeyConstraint("consumer", "message_id"),
        **_MYSQL,
    )
    Table(
        f"{prefix}paused",
        meta,
        Column("queue", _NAME, primary_key=True),
        Column("paused_at", Double, nullable=False),
        **_MYSQL,
    )
    Table(
        f"{prefix}throughput",
        meta,
        Column("minute", BigInteger, nullable=False),
        Column("queue", _NAME, nullable=False),
        Column("processed", BigInteger, nullable=False),
        Column("failed", BigInteger, nullable=False),
        PrimaryKeyConstraint("minute", "queue"),
        **_MYSQL,
    )
    Table(
        f"{prefix}starts",
        meta,
        Column("message_id", _NAME, primary_key=True),
        Column("starts", Integer, nullable=False),
        Column("started_at", Double, nullable=False),
        **_MYSQL,
    )
    return meta  # fmt: skip


class SQLJobStore(JobStore):
    """The job store contract on a PostgreSQL or MySQL/MariaDB database (module docstring).

    One pooled engine per store (connections are checked with a ping before use, so a
    database restart costs one failed call at most); every method checks a connection out
    for its own transaction, so threads never share one.
    """

    def __init__(self, url: str | TransportURL) -> None:
        self.url = url if isinstance(url, TransportURL) else TransportURL.parse(url)
        try:
            target = make_url(self.url.render(reveal=True))
        except ArgumentError as exc:
            raise ConfigurationError(f"job store {self.url.redacted()}: {exc}") from None
        prefix = target.query.get("table_prefix", "queuekit_")
        if not isinstance(prefix, str) or not _PREFIX.match(prefix):
            raise ConfigurationError(
                f"job store {self.url.redacted()}: table_prefix must be a letter or _ and up"
                " to 39 more letters, digits or _"
            )
        target = target.difference_update_query(["table_prefix"])
        target = target.set(drivername=DRIVERS.get(target.drivername, target.drivername))
        self.dialect = target.get_backend_name()
        if self.dialect not in {"postgresql", "mysql", "mariadb"}:
            raise ConfigurationError(
                f"job store {self.url.redacted()}: {self.dialect} is not supported"
                " (postgresql, mysql and mariadb are; sqlite:///path for SQLite)"
            )
        if self.dialect != "postgresql" and "charset" not in target.query:
            target = target.update_query_dict({"charset": "utf8mb4"})
        try:
            self._engine: Engine = create_engine(
                target, pool_pre_ping=True, pool_recycle=1800, isolation_level="READ COMMITTED"
            )
        except ImportError as exc:
            raise MissingStoreDependency(self.url.scheme, "sql", exc.name or str(exc)) from None
        meta = _schema(prefix)
        self._meta = meta
        self._failed, self._delayed, self._jobs = (meta.tables[prefix + n] for n in
                                                   ("failed", "delayed", "jobs"))  # fmt: skip
        self._keys, self._groups, self._grouped, self._starts, self._schedules = (
            meta.tables[prefix + n] for n in ("keys", "groups", "grouped", "starts", "schedules")
        )
        self._meta_table = meta.tables[prefix + "meta"]
        self._inbox = meta.tables[prefix + "inbox"]
        self._workers, self._worker_queues = (meta.tables[prefix + n] for n in
                                               ("workers", "worker_queues"))  # fmt: skip
        self._processes, self._handled = (meta.tables[prefix + n] for n in
                                          ("processes", "process_handled"))  # fmt: skip
        self._paused, self._throughput = (meta.tables[prefix + n] for n in
                                          ("paused", "throughput"))  # fmt: skip
        self._created = False
        self._create_lock = threading.Lock()
        _open_stores.add(self)

    # -- plumbing ------------------------------------------------------------------------

    def close(self) -> None:
        self._engine.dispose()

    def _ensure_tables(self) -> None:
        if self._created:
            return
        with self._create_lock:
            tries = len(self._meta.tables) + 1
            for attempt in range(tries):
                if self._created:
                    return
                try:
                    self._meta.create_all(self._engine)
                    self._add_new_columns()
                    self._created = True
                except DBAPIError:  # another process created one between check and create:
                    if attempt == tries - 1:  # the next try gets further
                        raise

    def _add_new_columns(self) -> None:
        """Bring a jobs table of an older schema up to date. Idempotent; when two processes
        open an old store at once, the one whose ALTER comes second finds the column there
        (PostgreSQL 42701, MySQL/MariaDB 1060: duplicate column) and goes on."""
        have = {c["name"] for c in inspect(self._engine).get_columns(self._jobs.name)}
        preparer = self._engine.dialect.identifier_preparer
        for column in _new_job_columns():
            if column.name in have:
                continue
            kind = column.type.compile(dialect=self._engine.dialect)
            alter = (f"ALTER TABLE {preparer.quote(self._jobs.name)} "
                     f"ADD COLUMN {preparer.quote(column.name)} {kind}")  # fmt: skip
            try:
                with self._engine.begin() as conn:
                    conn.execute(text(alter))
            except DBAPIError as exc:
                if not _is_duplicate_column(exc):
                    raise

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except DBAPIError as exc:
            cause = exc.orig if exc.orig is not None else exc
            raise JobStoreError(
                f"job store {self.url.redacted()}: {type(cause).__name__}: {cause}",
                recoverable=exc.connection_invalidated or _is_operational(exc),
            ) from exc
        except SQLAlchemyError as exc:
            raise JobStoreError(f"job store {self.url.redacted()}: {exc}") from exc

    def _run(self, work: Callable[[Connection], T]) -> T:
        """``work`` in one transaction, retried when the database aborts it as a deadlock."""
        with self._errors():
            self._ensure_tables()
            for attempt in range(_RETRIES):
                try:
                    with self._engine.begin() as conn:
                        return work(conn)
                except DBAPIError as exc:
                    if attempt == _RETRIES - 1 or not _is_deadlock(exc):
                        raise
                time.sleep(random.uniform(0.001, 0.01 * 2**attempt))
        raise AssertionError("unreachable")

    @property
    def _postgres(self) -> bool:
        return self.dialect == "postgresql"

    def _load_identity(self) -> str:
        t = self._meta_table
        statement = self._insert_new(t, {"name": IDENTITY, "value": os.urandom(16).hex()})
        read = select(t.c.value).where(t.c.name == IDENTITY)
        self._run(lambda conn: conn.execute(statement))  # its own transaction: then read
        return str(self._run(lambda conn: conn.execute(read).scalar_one()))

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
        row = {
            "queue": queue, "message_id": message_id, "name": name, "reason": reason,
            "traceback": traceback, "attempts": attempts, "failed_at": time.time(),
            "headers": headers_text(headers or {}), "body": body,
        }  # fmt: skip

        def work(conn: Connection) -> int:
            if job is not None:
                conn.execute(self._write_job(), [_job_row(job)])
            key = conn.execute(insert(self._failed).values(row)).inserted_primary_key
            assert key is not None
            return int(key[0])

        return self._run(work)

    def failed(self, queue: str | None = None, *, limit: int = 1000) -> list[FailedMessage]:
        t = self._failed
        query = select(t).order_by(t.c.id).limit(limit)
        if queue is not None:
            query = query.where(t.c.queue == queue)
        return self._run(lambda conn: [to_failed(row) for row in conn.execute(query)])

    def queue_counts(self) -> dict[str, StoreCounts]:
        def read(conn: Connection) -> tuple[dict[str, int], dict[str, int]]:
            held, dead = (
                {str(q): int(n) for q, n in conn.execute(
                    select(t.c.queue, func.count()).group_by(t.c.queue))}
                for t in (self._delayed, self._failed)
            )  # fmt: skip
            return held, dead

        held, dead = self._run(read)
        return {q: StoreCounts(held.get(q, 0), dead.get(q, 0)) for q in sorted({*held, *dead})}

    def get_failed(self, failed_id: int) -> FailedMessage | None:
        query = select(self._failed).where(self._failed.c.id == failed_id)
        row = self._run(lambda conn: conn.execute(query).first())
        return to_failed(row) if row else None

    def remove_failed(self, failed_id: int) -> bool:
        statement = delete(self._failed).where(self._failed.c.id == failed_id)
        return self._run(lambda conn: conn.execute(statement).rowcount > 0)

    def purge_failed(self, queue: str | None = None) -> int:
        statement = delete(self._failed)
        if queue is not None:
            statement = statement.where(self._failed.c.queue == queue)
        return self._run(lambda conn: conn.execute(statement).rowcount)

    # -- delayed store -------------------------------------------------------------------

    def add_delayed(self, queue: str, due: float, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        rows = [
            {"queue": queue, "due": due, "claimed_until": 0.0, "priority": m.options.priority,
             "dedup_key": m.options.dedup_key, "headers": headers_text(m.headers), "body": m.body}
            for m in messages
        ]  # fmt: skip
        self._run(lambda conn: conn.execute(insert(self._delayed), rows))

    def next_due(self) -> float | None:
        due = self._run(lambda conn: conn.execute(select(func.min(self._delayed.c.due))).scalar())
        return None if due is None else float(due)

    def forward_due(
        self, send: Callable[[str, Sequence[Outgoing]], None], *, limit: int = 500
    ) -> int:
        t, now = self._delayed, time.time()
        due = (
            select(t.c.id, t.c.queue, t.c.due, t.c.priority, t.c.dedup_key, t.c.headers, t.c.body)
            .where(t.c.due <= now, t.c.claimed_until < now)
            .order_by(t.c.due, t.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )

        def claim(conn: Connection) -> list[Any]:
            rows = list(conn.execute(due))
            for ids in _chunks([row[0] for row in rows]):
                stamp = update(t).where(t.c.id.in_(ids)).values(claimed_until=now + FORWARD_LEASE)
                conn.execute(stamp)
            return rows

        rows = self._run(claim)
        if not rows:
            return 0
        for queue, batch in delayed_batches(rows).items():
            send(queue, batch)

        def forget(conn: Connection) -> None:
            for ids in _chunks([row[0] for row in rows]):
                conn.execute(delete(t).where(t.c.id.in_(ids)))

        self._run(forget)
        return len(rows)

    # -- schedules (recurring jobs) ------------------------------------------------------

    def set_schedule(self, schedule: Schedule) -> None:
        t = self._schedules
        row = {
            "name": schedule.name,
            "queue": schedule.queue,
            "every": schedule.every,
            "next_run": schedule.next_run,
            "template": template_text(schedule),
        }

        def replace(conn: Connection) -> None:
            conn.execute(delete(t).where(t.c.name == schedule.name))
            conn.execute(insert(t).values(row))

        self._run(replace)

    def remove_schedule(self, name: str) -> bool:
        t = self._schedules
        gone = self._run(lambda conn: conn.execute(delete(t).where(t.c.name == name)).rowcount)
        return bool(gone)

    def schedules(self) -> list[Schedule]:
        t = self._schedules
        query = select(t.c.name, t.c.queue, t.c.every, t.c.next_run, t.c.template)
        rows = self._run(lambda conn: list(conn.execute(query.order_by(t.c.name))))
        return [to_schedule(row) for row in rows]

    def fire_schedules(self, queue: str, make: MakeRun, advance: NextRun) -> int:
        t, now = self._schedules, time.time()
        due = (
            select(t.c.name, t.c.queue, t.c.every, t.c.next_run, t.c.template)
            .where(t.c.queue == queue, t.c.next_run <= now)
            .with_for_update(skip_locked=True)
        )

        def fire(conn: Connection) -> int:
            fired = [to_schedule(row) for row in conn.execute(due)]
            for schedule in fired:
                run = make(schedule, schedule.next_run)
                conn.execute(insert(self._delayed).values(
                    queue=queue, due=schedule.next_run, claimed_until=0.0,
                    priority=run.options.priority, headers=headers_text(run.headers),
                    body=run.body,
                ))  # fmt: skip
                moved = update(t).where(t.c.name == schedule.name)
                conn.execute(moved.values(next_run=advance(schedule, now)))
            return len(fired)

        return self._run(fire)

    # -- dedup keys ----------------------------------------------------------------------

    def hold_key(self, queue: str, key: str, message_id: str, *, ever: bool) -> bool:
        t, now = self._keys, time.time()
        digest = hashlib.sha256(key.encode()).hexdigest()
        row = {"queue": queue, "digest": digest, "key": key, "message_id": message_id,
               "ever": ever, "confirmed": False, "held_at": now}  # fmt: skip
        expired = and_(t.c.confirmed.is_(False), t.c.held_at < now - KEY_GRACE)
        if self._postgres:
            upsert = (
                postgresql.insert(t)
                .values(row)
                .on_conflict_do_update(
                    index_elements=[t.c.queue, t.c.digest],
                    set_={"message_id": message_id, "ever": ever, "held_at": now},
                    where=expired,
                )
                .returning(t.c.message_id)
            )
            return self._run(lambda conn: conn.execute(upsert).first() is not None)

        def take(conn: Connection) -> bool:
            try:
                conn.execute(insert(t).values(row))
            except IntegrityError as exc:
                if _mysql_code(exc) != _MYSQL_DUPLICATE:
                    raise
                return False
            return True

        # Each statement in its own transaction: an insert's duplicate check keeps a shared
        # lock on the row until commit, and two such locks upgraded by updates deadlock.
        if self._run(take):
            return True
        takeover = (
            update(t)
            .where(t.c.queue == queue, t.c.digest == digest, expired)
            .values(message_id=message_id, ever=ever, held_at=now)
        )
        return self._run(lambda conn: conn.execute(takeover).rowcount == 1)

    def confirm_key(self, queue: str, key: str, message_id: str) -> None:
        t = self._keys
        statement = update(t).where(*self._key_is(queue, key, message_id)).values(confirmed=True)
        self._run(lambda conn: conn.execute(statement))

    def release_key(self, queue: str, key: str, message_id: str, *, ever: bool = False) -> None:
        statement = delete(self._keys).where(*self._key_is(queue, key, message_id))
        if not ever:
            statement = statement.where(self._keys.c.ever.is_(False))
        self._run(lambda conn: conn.execute(statement))

    def _key_is(self, queue: str, key: str, message_id: str) -> tuple[Any, ...]:
        t = self._keys
        digest = hashlib.sha256(key.encode()).hexdigest()
        return t.c.queue == queue, t.c.digest == digest, t.c.message_id == message_id

    # -- serial groups -------------------------------------------------------------------

    def add_grouped(
        self,
        queue: str,
        group: str,
        items: Sequence[tuple[str, Outgoing, float | None]],
    ) -> None:
        if not items:
            return
        rows = [
            {"queue": queue, "grp": group, "message_id": message_id, "state": "waiting",
             "lease_until": 0.0, "due": due, "priority": out.options.priority,
             "headers": headers_text(out.headers), "body": out.body}
            for message_id, out, due in items
        ]  # fmt: skip
        g = self._groups
        lock: Any
        if self._postgres:
            mark = postgresql.insert(g).values(queue=queue, grp=group)
            lock = mark.on_conflict_do_update(index_elements=[g.c.queue, g.c.grp],
                                              set_={"grp": mark.excluded.grp})  # fmt: skip
        else:
            lock = mysql.insert(g).values(queue=queue, grp=group).on_duplicate_key_update(grp=group)

        def work(conn: Connection) -> None:
            conn.execute(lock)  # the group's row, locked until commit: claimers wait
            conn.execute(insert(self._grouped), rows)

        self._run(work)

    def claim_group_heads(
        self, queue: str | None = None, group: str | None = None, *, limit: int = 500
    ) -> list[GroupHead]:
        t, g, now = self._grouped, self._groups, time.time()
        where = [c == v for c, v in ((t.c.queue, queue), (t.c.grp, group)) if v is not None]
        in_flight = or_(t.c.state == "sent", and_(t.c.state == "sending", t.c.lease_until >= now))
        idle = func.sum(case((in_flight, 1), else_=0)) == 0
        free = select(t.c.queue, t.c.grp).where(*where).group_by(t.c.queue, t.c.grp).having(idle)
        # A sweep mostly finds nothing to claim: find out without a write transaction.
        candidates = [tuple(r) for r in self._run(lambda conn: conn.execute(free.limit(limit)))]
        if not candidates:
            return []

        def claim(conn: Connection) -> list[Any]:
            # One named group (after a publish or a settle) waits for its lock; a sweep
            # skips groups someone else is busy with.
            mine = select(g.c.queue, g.c.grp).where(tuple_(g.c.queue, g.c.grp).in_(candidates))
            locked = list(conn.execute(mine.with_for_update(skip_locked=group is None)))
            if not locked:
                return []
            heads = (
                select(func.min(t.c.id))
                .where(tuple_(t.c.queue, t.c.grp).in_([tuple(r) for r in locked]))
                .group_by(t.c.queue, t.c.grp)
                .having(idle)
            )
            ids = [row[0] for row in conn.execute(heads)]
            if not ids:
                return []
            columns = (t.c.id, t.c.queue, t.c.grp, t.c.message_id, t.c.due, t.c.priority,
                       t.c.headers, t.c.body)  # fmt: skip
            rows = list(conn.execute(select(*columns).where(t.c.id.in_(ids))))
            lease = now + FORWARD_LEASE
            conn.execute(
                update(t).where(t.c.id.in_(ids)).values(state="sending", lease_until=lease)
            )
            return rows

        return group_heads(self._run(claim))

    def mark_sent(self, heads: Sequence[GroupHead]) -> None:
        t = self._grouped

        def work(conn: Connection) -> None:
            for ids in _chunks([head.row for head in heads]):
                conn.execute(update(t).where(t.c.id.in_(ids)).values(state="sent"))

        self._run(work)

    def finish_grouped(self, queue: str, group: str, message_id: str) -> None:
        t, g = self._grouped, self._groups
        done = delete(t).where(t.c.queue == queue, t.c.grp == group,
                               t.c.message_id == message_id, t.c.state != "waiting")  # fmt: skip
        rest = select(t.c.id).where(t.c.queue == queue, t.c.grp == group).limit(1)
        this_group = and_(g.c.queue == queue, g.c.grp == group)

        def work(conn: Connection) -> None:
            conn.execute(done)
            if conn.execute(rest).first() is not None:
                return
            # The group emptied: drop its row, unless a publisher holds it (adding to it).
            lock = select(g.c.grp).where(this_group).with_for_update(skip_locked=True)
            if conn.execute(lock).first() is not None:
                conn.execute(delete(g).where(this_group, ~exists(rest)))

        self._run(work)

    # -- process instances (process managers) ---------------------------------------------

    def _insert_new(self, table: Table, row: dict[str, Any]) -> Any:
        """Insert ``row`` unless its primary key is taken; its ``rowcount`` says which (an
        INSERT's count is kept only when asked for)."""
        if self._postgres:
            statement: Any = postgresql.insert(table).values(row).on_conflict_do_nothing()
        else:
            statement = insert(table).values(row).prefix_with("IGNORE")
        return statement.execution_options(preserve_rowcount=True)

    def load_process(
        self, manager: str, key: str, message_id: str
    ) -> tuple[ProcessInstance | None, bool]:
        t, h = self._processes, self._handled
        query = select(*(t.c[name] for name in PROCESS_FIELDS)).where(
            t.c.manager == manager, t.c.pkey == key
        )
        seen = select(h.c.message_id).where(
            h.c.manager == manager, h.c.pkey == key, h.c.message_id == message_id
        )

        def read(conn: Connection) -> tuple[ProcessInstance | None, bool]:
            row = conn.execute(query).first()
            return (to_process(row) if row else None), conn.execute(seen).first() is not None

        return self._run(read)

    def commit_process(self, step: ProcessStep) -> str:
        t, h, now = self._processes, self._handled, time.time()
        state, timeouts = process_json(step)
        mark = self._insert_new(h, {"manager": step.manager, "pkey": step.key,
                                    "message_id": step.message_id, "handled_at": now})  # fmt: skip
        if step.version == 0:
            change: Any = self._insert_new(t, {
                "manager": step.manager, "pkey": step.key, "state": state, "version": 1,
                "completed": step.completed, "started_at": now, "updated_at": now,
                "timeouts": timeouts,
            })  # fmt: skip
        else:
            change = (
                update(t)
                .where(t.c.manager == step.manager, t.c.pkey == step.key,
                       t.c.version == step.version, t.c.completed.is_(False))
                .values(state=state, version=t.c.version + 1, completed=step.completed,
                        updated_at=now, timeouts=timeouts)
            )  # fmt: skip
        sends = [
            {"queue": queue, "due": due, "claimed_until": 0.0, "priority": out.options.priority,
             "dedup_key": out.options.dedup_key, "headers": headers_text(out.headers),
             "body": out.body}
            for queue, due, out in step.sends
        ]  # fmt: skip

        def work(conn: Connection) -> str:
            # the instance's row first: concurrent steps of one instance queue on its lock
            if conn.execute(change).rowcount != 1:
                raise StepRejected(CONFLICT)
            if step.message_id is not None and conn.execute(mark).rowcount != 1:
                raise StepRejected(DUPLICATE)
            if step.completed:
                conn.execute(delete(h).where(h.c.manager == step.manager, h.c.pkey == step.key))
            if sends:
                conn.execute(insert(self._delayed), sends)
            return COMMITTED

        try:
            return self._run(work)
        except StepRejected as rejected:
            return rejected.outcome

    def processes(
        self, manager: str | None = None, *, completed: bool | None = None, limit: int = 1000
    ) -> list[ProcessInstance]:
        t = self._processes
        query = select(*(t.c[name] for name in PROCESS_FIELDS))
        if manager is not None:
            query = query.where(t.c.manager == manager)
        if completed is not None:
            query = query.where(t.c.completed.is_(completed))
        query = query.order_by(t.c.started_at, t.c.manager, t.c.pkey).limit(limit)
        return self._run(lambda conn: [to_process(row) for row in conn.execute(query)])

    def purge_processes(self, manager: str | None = None, *, older_than: float = 0.0) -> int:
        t, h, cutoff = self._processes, self._handled, time.time() - older_than
        statement = delete(t).where(t.c.completed.is_(True), t.c.updated_at <= cutoff)
        forget = delete(h).where(h.c.handled_at <= cutoff)
        if manager is not None:
            statement = statement.where(t.c.manager == manager)
            forget = forget.where(h.c.manager == manager)

        def work(conn: Connection) -> int:
            conn.execute(forget)
            return int(conn.execute(statement).rowcount)

        return self._run(work)

    # -- job records ---------------------------------------------------------------------

    def _upsert_job(self, keep: dict[str, Callable[[Any, Any], Any]]) -> Any:
        """An insert of a record that, for an existing id, sets each column of ``keep`` to
        ``keep[column](new, old)``."""
        t = self._jobs
        if self._postgres:
            pg = postgresql.insert(t)
            return pg.on_conflict_do_update(
                index_elements=[t.c.id],
                set_={c: f(pg.excluded[c], t.c[c]) for c, f in keep.items()},
            )
        my = mysql.insert(t)
        return my.on_duplicate_key_update({c: f(my.inserted[c], t.c[c]) for c, f in keep.items()})

    def _write_job(self) -> Any:
        def take(new: Any, old: Any) -> Any:
            return new

        def keep_old(new: Any, old: Any) -> Any:
            return func.coalesce(new, old)

        return self._upsert_job({
            "state": take, "attempts": take, "result": take, "error": take, "traceback": take,
            "started_at": keep_old, "finished_at": take, "worker_pid": keep_old,
            "peak_memory": keep_old, "dedup_key": keep_old, "payload": keep_old,
        })  # fmt: skip

    def write_jobs(self, updates: Sequence[JobUpdate]) -> None:
        if updates:
            statement, rows = self._write_job(), [_job_row(u) for u in updates]
            self._run(lambda conn: conn.execute(statement, rows))

    def start_job(self, update: JobUpdate) -> None:
        def take(new: Any, old: Any) -> Any:
            return new

        statement = self._upsert_job({
            "state": take, "attempts": take, "started_at": take,
            "finished_at": lambda new, old: None, "worker_pid": take,
        })  # fmt: skip
        self._run(lambda conn: conn.execute(statement, [_job_row(update)]))

    def delete_jobs(self, ids: Sequence[str]) -> None:
        t = self._jobs

        def work(conn: Connection) -> None:
            for chunk in _chunks(list(ids)):
                conn.execute(delete(t).where(t.c.id.in_(chunk)))

        self._run(work)

    def get_job(self, job_id: str) -> JobRecord | None:
        query = select(*self._job_columns()).where(self._jobs.c.id == job_id)
        row = self._run(lambda conn: conn.execute(query).first())
        return to_record(row) if row else None

    def jobs(
        self,
        queue: str | None = None,
        *,
        state: str | None = None,
        key: str | None = None,
        limit: int = 1000,
    ) -> list[JobRecord]:
        t = self._jobs
        newest = t.c.created_at.desc()
        if self._postgres:  # PostgreSQL sorts NULL first in descending order; SQLite, MySQL last
            newest = newest.nulls_last()
        query = select(*self._job_columns()).order_by(newest).limit(limit)
        for column, value in ((t.c.queue, queue), (t.c.state, state), (t.c.dedup_key, key)):
            if value is not None:
                query = query.where(column == value)
        return self._run(lambda conn: [to_record(row) for row in conn.execute(query)])

    def unfinished(self, ids: Iterable[str]) -> set[str]:
        t = self._jobs

        def work(conn: Connection) -> set[str]:
            found: set[str] = set()
            for chunk in _chunks(list(dict.fromkeys(ids))):
                query = select(t.c.id).where(t.c.id.in_(chunk), t.c.state.not_in(FINISHED))
                found.update(row[0] for row in conn.execute(query))
            return found

        return self._run(work)

    def clear_finished(self, older_than: float = 0.0, *, queue: str | None = None) -> int:
        t = self._jobs
        cutoff = time.time() - older_than
        statement = delete(t).where(t.c.state.in_(FINISHED), t.c.finished_at <= cutoff)
        if queue is not None:
            statement = statement.where(t.c.queue == queue)
        return self._run(lambda conn: conn.execute(statement).rowcount)

    def _job_columns(self) -> list[Any]:
        return [self._jobs.c[name] for name in _JOB_FIELDS]

    # -- start journal -------------------------------------------------------------------

    def begin_delivery(self, message_id: str) -> int:
        t = self._starts
        row = {"message_id": message_id, "starts": 1, "started_at": time.time()}
        if self._postgres:
            pg = postgresql.insert(t).values(row)
            upsert: Any = pg.on_conflict_do_update(
                index_elements=[t.c.message_id],
                set_={"starts": t.c.starts + 1, "started_at": pg.excluded.started_at},
            ).returning(t.c.starts)
            return int(self._run(lambda conn: conn.execute(upsert).scalar_one()))
        my = mysql.insert(t).values(row)
        upsert = my.on_duplicate_key_update(
            starts=t.c.starts + 1, started_at=my.inserted.started_at
        )
        count = select(t.c.starts).where(t.c.message_id == message_id)

        def work(conn: Connection) -> int:  # the upsert locks the row: the count is ours
            conn.execute(upsert)
            return int(conn.execute(count).scalar_one())

        return self._run(work)

    def end_delivery(self, message_id: str) -> None:
        statement = delete(self._starts).where(self._starts.c.message_id == message_id)
        self._run(lambda conn: conn.execute(statement))

    # -- inbox ---------------------------------------------------------------------------

    def inbox_claim(self, consumer: str, message_id: str, *, lease: float) -> str:
        t, now = self._inbox, time.time()
        mine = and_(t.c.consumer == consumer, t.c.message_id == message_id)
        row = {"consumer": consumer, "message_id": message_id, "done": False, "at": now}

        def fresh(conn: Connection) -> bool:
            if self._postgres:  # a failed insert would abort the whole transaction
                added = postgresql.insert(t).values(row).on_conflict_do_nothing()
                return conn.execute(added.returning(t.c.at)).first() is not None
            try:
                conn.execute(insert(t).values(row))
            except IntegrityError as exc:
                if _mysql_code(exc) != _MYSQL_DUPLICATE:
                    raise
                return False
            return True

        # Each statement in its own transaction (as hold_key does, for MySQL's locks).
        if self._run(fresh):
            return INBOX_NEW
        stale = and_(mine, t.c.done.is_(False), t.c.at < now - lease)
        if self._run(lambda conn: conn.execute(update(t).where(stale).values(at=now)).rowcount):
            return INBOX_NEW
        done = self._run(lambda conn: conn.execute(select(t.c.done).where(mine)).scalar())
        return INBOX_DONE if done else INBOX_BUSY

    def inbox_done(self, consumer: str, message_id: str) -> None:
        t = self._inbox
        statement = (
            update(t)
            .where(t.c.consumer == consumer, t.c.message_id == message_id)
            .values(done=True, at=time.time())
        )
        self._run(lambda conn: conn.execute(statement))

    def inbox_release(self, consumer: str, message_id: str) -> None:
        t = self._inbox
        statement = delete(t).where(
            t.c.consumer == consumer, t.c.message_id == message_id, t.c.done.is_(False)
        )
        self._run(lambda conn: conn.execute(statement))

    def inbox_prune(self, older_than: float) -> int:
        t = self._inbox
        statement = delete(t).where(t.c.done.is_(True), t.c.at <= time.time() - older_than)
        return self._run(lambda conn: conn.execute(statement).rowcount)

    # -- worker registry -----------------------------------------------------------------

    def register_worker(
        self, worker: WorkerInfo, *, timeout: float, limit: int | None = None
    ) -> bool:
        t, q, now = self._workers, self._worker_queues, time.time()
        values = worker_values(worker, now, slot=limit is not None)
        row = dict(zip(WORKER_FIELDS, values, strict=True))
        mine = t.c.queue == worker.queue
        gone = delete(t).where(mine, or_(t.c.last_seen < now - timeout, t.c.id == worker.id))
        held = select(func.count()).select_from(t).where(mine, t.c.slot.is_(True))
        turn = select(q.c.queue).where(q.c.queue == worker.queue).with_for_update()
        if limit is not None:  # the queue's lock row first, in a transaction of its own
            self._run(lambda conn: conn.execute(self._add_worker_queue(worker.queue)))

        def work(conn: Connection) -> bool:
            if limit is not None:  # claimers of this queue take turns from here to commit,
                conn.execute(turn)  # each counting what the one before it committed
            conn.execute(gone)
            if limit is not None and conn.execute(held).scalar_one() >= limit:
                return False
            conn.execute(insert(t).values(row))
            return True

        return self._run(work)

    def _add_worker_queue(self, queue: str) -> Any:
        """Insert the lock row of ``queue`` unless it is there (first inserts of a new row
        can deadlock each other; a lock taken on an existing row cannot)."""
        q = self._worker_queues
        if self._postgres:
            return postgresql.insert(q).values(queue=queue).on_conflict_do_nothing()
        return mysql.insert(q).values(queue=queue).on_duplicate_key_update(queue=queue)

    def heartbeat_worker(
        self,
        worker_id: str,
        *,
        processed: int,
        failed: int | None = None,
        current: Sequence[str] = (),
        rss: int | None = None,
    ) -> bool:
        t = self._workers
        statement = (
            update(t)
            .where(t.c.id == worker_id)
            .values(last_seen=time.time(), processed=processed, failed=failed,
                    current=json.dumps(list(current)), rss=rss)
        )  # fmt: skip
        return self._run(lambda conn: conn.execute(statement).rowcount > 0)

    def deregister_worker(self, worker_id: str) -> None:
        statement = delete(self._workers).where(self._workers.c.id == worker_id)
        self._run(lambda conn: conn.execute(statement))

    def workers(
        self, queue: str | None = None, *, timeout: float | None = None
    ) -> list[WorkerInfo]:
        t = self._workers
        query = select(*(t.c[name] for name in WORKER_FIELDS)).order_by(t.c.started_at, t.c.id)
        if queue is not None:
            query = query.where(t.c.queue == queue)
        if timeout is not None:
            query = query.where(t.c.last_seen >= time.time() - timeout)
        return self._run(lambda conn: [to_worker(row) for row in conn.execute(query)])

    # -- queue controls and throughput ---------------------------------------------------

    def pause_queue(self, queue: str) -> None:
        t = self._paused
        row = {"queue": queue, "paused_at": time.time()}
        if self._postgres:
            statement: Any = postgresql.insert(t).values(row).on_conflict_do_nothing()
        else:
            statement = mysql.insert(t).values(row).on_duplicate_key_update(queue=queue)
        self._run(lambda conn: conn.execute(statement))

    def resume_queue(self, queue: str) -> bool:
        statement = delete(self._paused).where(self._paused.c.queue == queue)
        return bool(self._run(lambda conn: conn.execute(statement).rowcount))

    def paused_queues(self) -> dict[str, float]:
        t = self._paused
        rows = self._run(lambda conn: list(conn.execute(select(t.c.queue, t.c.paused_at))))
        return {str(queue): float(at) for queue, at in rows}

    def add_throughput(self, buckets: Sequence[ThroughputBucket]) -> None:
        if not buckets:
            return
        t = self._throughput
        rows = [{"queue": b.queue, "minute": b.minute, "processed": b.processed,
                 "failed": b.failed} for b in buckets]  # fmt: skip
        if self._postgres:
            pg = postgresql.insert(t)
            statement: Any = pg.on_conflict_do_update(
                index_elements=[t.c.minute, t.c.queue],
                set_={"processed": t.c.processed + pg.excluded.processed,
                      "failed": t.c.failed + pg.excluded.failed},
            )  # fmt: skip
        else:
            my = mysql.insert(t)
            statement = my.on_duplicate_key_update(
                processed=t.c.processed + my.inserted.processed,
                failed=t.c.failed + my.inserted.failed,
            )
        self._run(lambda conn: conn.execute(statement, rows))

    def throughput(self, since: float, queue: str | None = None) -> list[ThroughputBucket]:
        t = self._throughput
        query = (
            select(t.c.queue, t.c.minute, t.c.processed, t.c.failed)
            .where(t.c.minute >= since)
            .order_by(t.c.queue, t.c.minute)
        )
        if queue is not None:
            query = query.where(t.c.queue == queue)
        rows = self._run(lambda conn: list(conn.execute(query)))
        return [ThroughputBucket(str(q), int(m), int(p), int(f)) for q, m, p, f in rows]

    def prune_throughput(self, before: float) -> int:
        statement = delete(self._throughput).where(self._throughput.c.minute < before)
        return int(self._run(lambda conn: conn.execute(statement).rowcount))


def _job_row(job: JobUpdate) -> dict[str, object]:
    return dict(zip(_JOB_FIELDS, job_values(job), strict=True))


def _chunks(ids: list[T]) -> Iterator[list[T]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def _mysql_code(exc: DBAPIError) -> int | None:
    args = getattr(exc.orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _is_deadlock(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) in _DEADLOCKS or _mysql_code(exc) in _MYSQL_DEADLOCKS


def _is_duplicate_column(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == "42701" or _mysql_code(exc) == 1060


def _is_operational(exc: DBAPIError) -> bool:
    return isinstance(exc, OperationalError | InterfaceError)


# A forked child must not use its parent's pooled connections (they share one socket).
_open_stores: weakref.WeakSet[SQLJobStore] = weakref.WeakSet()


def _after_fork() -> None:
    for store in list(_open_stores):
        store._engine.dispose(close=False)


os.register_at_fork(after_in_child=_after_fork)
