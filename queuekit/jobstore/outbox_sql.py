"""The outbox through SQLAlchemy: PostgreSQL, MySQL/MariaDB, SQLite or any database it serves.

The writer takes the application's ``Session`` (its connection in the session's current
transaction) or ``Connection`` and only inserts: the row commits or rolls back with the
application's own changes. The tables are created once per engine before the first insert,
on a connection of their own (MySQL/MariaDB would commit the caller's transaction on DDL),
except on SQLite, where DDL is transactional and a second connection would wait on the
caller's write lock: there they are created in the caller's transaction when missing.

The relay's table opens its own engine from the URL (drivers as for the job store:
``postgresql://`` means psycopg, ``mysql://``/``mariadb://`` PyMySQL). A lease is one
conditional ``UPDATE`` of the queue's lease row: of racing relays one matches. The
contract: :mod:`queuekit.jobstore.outbox`.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from ..spi.errors import ConfigurationError
from ..spi.transport import Outgoing
from ..spi.urls import TransportURL
from .base import JobStoreError, headers_text
from .outbox import LEASES, TABLE, OutboxRow, OutboxTable, OutboxWriter, row_of
from .sql import DRIVERS

T = TypeVar("T")
_CHUNK = 500
_MYSQL: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4",
                          "mysql_collate": "utf8mb4_bin"}  # fmt: skip
_NAME = String(255)
_TEXT = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
_BLOB = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")

_ID = BigInteger().with_variant(Integer, "sqlite")  # only INTEGER is SQLite's numbered rowid
_meta = MetaData()
_outbox = Table(
    TABLE,
    _meta,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("queue", _NAME, nullable=False),
    Column("message_id", _NAME, nullable=False),
    Column("due", Double),
    Column("priority", Integer),
    Column("headers", _TEXT),
    Column("body", _BLOB, nullable=False),
    Column("created_at", Double, nullable=False),
    Index(f"{TABLE}_queue", "queue", "id"),
    **_MYSQL,
)
_leases = Table(
    LEASES,
    _meta,
    Column("queue", _NAME, primary_key=True),
    Column("holder", _NAME, nullable=False),
    Column("until", Double, nullable=False),
    **_MYSQL,
)
_COLUMNS = (_outbox.c.id, _outbox.c.queue, _outbox.c.message_id, _outbox.c.due,
            _outbox.c.priority, _outbox.c.headers, _outbox.c.body)  # fmt: skip

#: Engines whose tables exist (created once per engine and process).
_created: weakref.WeakSet[Engine] = weakref.WeakSet()
_created_lock = threading.Lock()


def _create_tables(engine: Engine) -> None:
    """Create the tables on a connection of their own; another process creating them at the
    same moment makes one try fail, and the next one finds them."""
    for attempt in range(3):
        try:
            _meta.create_all(engine)
            return
        except DBAPIError:
            if attempt == 2:
                raise


def _ensure_tables(conn: Connection) -> None:
    engine = conn.engine
    if engine in _created:
        return
    if engine.dialect.name == "sqlite":  # in the caller's transaction; checked each time
        _meta.create_all(conn)
        return
    with _created_lock:
        if engine not in _created:
            _create_tables(engine)
            _created.add(engine)


class SQLOutboxWriter(OutboxWriter):
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        _ensure_tables(conn)

    def add(self, queue: str, message_id: str, outgoing: Outgoing, due: float | None) -> None:
        self._conn.execute(insert(_outbox).values(
            queue=queue, message_id=message_id, due=due, priority=outgoing.options.priority,
            headers=headers_text(outgoing.headers), body=outgoing.body, created_at=time.time(),
        ))  # fmt: skip


class SQLOutboxTable(OutboxTable):
    """Any SQLAlchemy URL but ``sqlite:///`` (which the ``sqlite3`` backend serves)."""

    def __init__(self, url: TransportURL) -> None:
        self.url = url
        try:
            target = make_url(url.render(reveal=True))
        except ArgumentError as exc:
            raise ConfigurationError(f"outbox {url.redacted()}: {exc}") from None
        target = target.set(drivername=DRIVERS.get(target.drivername, target.drivername))
        if target.get_backend_name() in {"mysql", "mariadb"} and "charset" not in target.query:
            target = target.update_query_dict({"charset": "utf8mb4"})
        self._engine = create_engine(target, pool_pre_ping=True,
                                     isolation_level="READ COMMITTED")  # fmt: skip
        self._ready = False

    def _run(self, work: Callable[[Connection], T]) -> T:
        try:
            if not self._ready:
                _create_tables(self._engine)
                self._ready = True
            with self._engine.begin() as conn:
                return work(conn)
        except DBAPIError as exc:
            raise JobStoreError(
                f"outbox {self.url.redacted()}: {type(exc.orig).__name__}: {exc.orig}",
                recoverable=exc.connection_invalidated or isinstance(exc, OperationalError),
            ) from exc
        except SQLAlchemyError as exc:
            raise JobStoreError(f"outbox {self.url.redacted()}: {exc}") from exc

    def queues(self, only: str | None = None) -> list[str]:
        if only is not None:
            query = select(_outbox.c.id).where(_outbox.c.queue == only).limit(1)
            return [only] if self._run(lambda conn: conn.execute(query).first()) else []
        distinct = select(_outbox.c.queue).distinct()
        return self._run(lambda conn: [row[0] for row in conn.execute(distinct)])

    def lease(self, queue: str, holder: str, seconds: float) -> bool:
        now, t = time.time(), _leases
        row = {"queue": queue, "holder": "", "until": 0.0}
        name = self._engine.dialect.name
        absent: Any
        if name == "postgresql":
            absent = postgresql.insert(t).values(row).on_conflict_do_nothing()
        elif name == "sqlite":
            absent = sqlite.insert(t).values(row).on_conflict_do_nothing()
        else:
            absent = mysql.insert(t).values(row).on_duplicate_key_update(queue=queue)
        take = (
            update(t)
            .where(t.c.queue == queue, or_(t.c.holder == holder, t.c.until < now))
            .values(holder=holder, until=now + seconds)
        )
        self._run(lambda conn: conn.execute(absent))  # the row first, in its own transaction
        return self._run(lambda conn: conn.execute(take).rowcount == 1)

    def release(self, queue: str, holder: str) -> None:
        gone = delete(_leases).where(_leases.c.queue == queue, _leases.c.holder == holder)
        self._run(lambda conn: conn.execute(gone))

    def pending(self, queue: str, limit: int) -> list[OutboxRow]:
        query = select(*_COLUMNS).where(_outbox.c.queue == queue).order_by(_outbox.c.id)
        return self._run(lambda conn: [row_of(r) for r in conn.execute(query.limit(limit))])

    def remove(self, ids: Sequence[int]) -> None:
        def work(conn: Connection) -> None:
            for start in range(0, len(ids), _CHUNK):
                chunk = list(ids[start : start + _CHUNK])
                conn.execute(delete(_outbox).where(_outbox.c.id.in_(chunk)))

        self._run(work)

    def close(self) -> None:
        self._engine.dispose()


def writer(transaction: Session | Connection) -> OutboxWriter:
    if isinstance(transaction, Session):
        return SQLOutboxWriter(transaction.connection())
    if isinstance(transaction, Connection):
        return SQLOutboxWriter(transaction)
    raise TypeError(f"outbox() takes a Session or Connection, not {type(transaction).__name__}")


def table(url: TransportURL) -> OutboxTable:
    return SQLOutboxTable(url)
