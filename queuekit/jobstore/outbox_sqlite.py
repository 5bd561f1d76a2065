"""The outbox on SQLite through the standard library's ``sqlite3`` (DB-API).

The writer inserts with the application's own connection, inside whatever transaction it
has open (``sqlite3`` opens one before an INSERT), and never commits. The relay's table
opens the file by URL with a connection of its own and leaves the file's journal mode as
the application set it. Each relay call is one ``BEGIN IMMEDIATE`` transaction (a lease)
or one statement. The contract: :mod:`queuekit.jobstore.outbox`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ..spi.errors import ConfigurationError
from ..spi.sqlitedb import immediate
from ..spi.transport import Outgoing
from ..spi.urls import TransportURL
from .base import JobStoreError, headers_text
from .outbox import LEASES, TABLE, OutboxRow, OutboxTable, OutboxWriter, row_of

_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY, queue TEXT NOT NULL,"
    " message_id TEXT NOT NULL, due REAL, priority INTEGER, headers TEXT, body BLOB NOT NULL,"
    " created_at REAL NOT NULL)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_queue ON {TABLE} (queue, id)",
    f"CREATE TABLE IF NOT EXISTS {LEASES} (queue TEXT PRIMARY KEY, holder TEXT NOT NULL,"
    " until REAL NOT NULL)",
)  # statements one by one: executescript() would commit the caller's transaction
_INSERT = (
    f"INSERT INTO {TABLE} (queue, message_id, due, priority, headers, body, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_COLUMNS = "id, queue, message_id, due, priority, headers, body"


def _create(db: sqlite3.Connection) -> None:
    for statement in _SCHEMA:
        db.execute(statement)


class SQLiteOutboxWriter(OutboxWriter):
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        _create(db)

    def add(self, queue: str, message_id: str, outgoing: Outgoing, due: float | None) -> None:
        self._db.execute(_INSERT, (queue, message_id, due, outgoing.options.priority,
                                   headers_text(outgoing.headers), outgoing.body,
                                   time.time()))  # fmt: skip


class SQLiteOutboxTable(OutboxTable):
    """``sqlite:///path`` (the application's file)."""

    def __init__(self, url: TransportURL) -> None:
        if not url.path or url.path == ":memory:":
            raise ConfigurationError(f"outbox {url.redacted()}: name the application's file")
        self.url = url
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                if self._db is None:
                    db = sqlite3.connect(self.url.path, timeout=30.0, isolation_level=None,
                                         check_same_thread=False)  # fmt: skip
                    _create(db)
                    self._db = db
                yield self._db
            except sqlite3.Error as exc:
                raise JobStoreError(
                    f"outbox {self.url.redacted()}: {exc}",
                    recoverable=isinstance(exc, sqlite3.OperationalError),
                ) from exc

    def queues(self, only: str | None = None) -> list[str]:
        with self._connection() as db:
            if only is not None:
                found = db.execute(f"SELECT 1 FROM {TABLE} WHERE queue = ? LIMIT 1", (only,))
                return [only] if found.fetchone() else []
            return [row[0] for row in db.execute(f"SELECT DISTINCT queue FROM {TABLE}")]

    def lease(self, queue: str, holder: str, seconds: float) -> bool:
        now = time.time()
        with self._connection() as db, immediate(db):
            taken = db.execute(
                f"INSERT INTO {LEASES} (queue, holder, until) VALUES (?, ?, ?)"
                " ON CONFLICT (queue) DO UPDATE SET holder = excluded.holder,"
                " until = excluded.until WHERE holder = excluded.holder OR until < ?"
                " RETURNING holder",
                (queue, holder, now + seconds, now),
            ).fetchone()
        return taken is not None

    def release(self, queue: str, holder: str) -> None:
        with self._connection() as db:
            db.execute(f"DELETE FROM {LEASES} WHERE queue = ? AND holder = ?", (queue, holder))

    def pending(self, queue: str, limit: int) -> list[OutboxRow]:
        with self._connection() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM {TABLE} WHERE queue = ? ORDER BY id LIMIT ?",
                (queue, limit),
            ).fetchall()
        return [row_of(row) for row in rows]

    def remove(self, ids: Sequence[int]) -> None:
        with self._connection() as db, immediate(db):
            db.executemany(f"DELETE FROM {TABLE} WHERE id = ?", [(i,) for i in ids])

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def writer(transaction: sqlite3.Connection) -> OutboxWriter:
    return SQLiteOutboxWriter(transaction)


def table(url: TransportURL) -> OutboxTable:
    return SQLiteOutboxTable(url)
