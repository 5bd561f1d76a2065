"""Opening SQLite files the way queuekit uses them: WAL, shared by threads under a lock."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import ConfigurationError


def connect_database(path: str, *, synchronous: str = "normal") -> sqlite3.Connection:
    """Open ``path`` in WAL mode, autocommit, usable from several threads (callers lock).

    ``synchronous`` is ``normal`` (survives any application crash) or ``full`` (also
    survives power loss, at several times the cost per commit).
    """
    if synchronous.lower() not in {"normal", "full"}:
        raise ConfigurationError(f"synchronous must be normal or full, not {synchronous!r}")
    if path != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    return conn


@contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, taken up front so concurrent writers queue instead of failing."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
