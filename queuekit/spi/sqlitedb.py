"""Opening SQLite files the way queuekit uses them: WAL, shared by threads under a lock."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import ConfigurationError

_OPEN_TRIES = 20  # opens of a new file racing other opens (see connect_database)

log = logging.getLogger("queuekit")


def _warn_relative(path: str) -> None:
    """A new file at a relative path: a producer and a worker started in different
    directories would each create their own and never meet (the first hour's trap)."""
    where = os.path.abspath(path)
    log.warning("creating the SQLite file %s (a relative path, so in %s): a process started "
                "in another directory opens a file of its own there; an absolute path, "
                "sqlite:///%s, names this one from anywhere", path, os.getcwd(), where)  # fmt: skip


def connect_database(
    path: str, *, synchronous: str = "normal", schema: str = ""
) -> sqlite3.Connection:
    """Open ``path`` in WAL mode, autocommit, usable from several threads (callers lock),
    and create ``schema`` in it.

    ``synchronous`` is ``normal`` (survives any application crash) or ``full`` (also
    survives power loss, at several times the cost per commit). Switching a new file to WAL
    fails at once, without the busy timeout, while another connection does the same (many
    workers starting on one new file): such opens are retried.
    """
    if synchronous.lower() not in {"normal", "full"}:
        raise ConfigurationError(f"synchronous must be normal or full, not {synchronous!r}")
    if path != ":memory:":
        if not os.path.isabs(path) and not os.path.exists(path):
            _warn_relative(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    for attempt in range(_OPEN_TRIES):
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            if schema:
                conn.executescript(schema)
        except sqlite3.OperationalError as exc:
            conn.close()
            if "locked" not in str(exc) or attempt == _OPEN_TRIES - 1:
                raise
            time.sleep(0.005 * (attempt + 1))
        else:
            return conn
    raise AssertionError("unreachable")


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
