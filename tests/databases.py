"""The machine's PostgreSQL and MariaDB for job-store tests, on fresh tables per test.

``QUEUEKIT_TEST_POSTGRES`` / ``QUEUEKIT_TEST_MARIADB`` point elsewhere; without a database a
test skips by hand and fails when ``CI`` is set. The ``store_url`` fixture of
``tests/conftest.py`` gives a job store URL on SQLite, PostgreSQL and MariaDB in turn.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

DATABASES = {
    "postgresql": os.environ.get(
        "QUEUEKIT_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get("QUEUEKIT_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test"),
}
_reachable: dict[str, str | None] = {}  # backend -> why it cannot be used (None: it can)


def require_database(backend: str) -> str:
    """The URL of ``backend`` once it answers a query; skip (fail under ``CI``) otherwise."""
    if backend not in _reachable:
        _reachable[backend] = _why_unreachable(DATABASES[backend])
    reason = _reachable[backend]
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return DATABASES[backend]


def _why_unreachable(url: str) -> str | None:
    try:
        import sqlalchemy
    except ImportError:
        return "SQLAlchemy is not installed (pip install queuekit[sql])"
    parsed = sqlalchemy.engine.make_url(url)
    host, port = parsed.host or "127.0.0.1", parsed.port or 0
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except OSError:
        return f"no database is answering on {host}:{port} ({parsed.get_backend_name()})"
    engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except Exception as exc:
        return f"{parsed.render_as_string(hide_password=True)} does not answer: {exc}"
    finally:
        engine.dispose()
    return None


def drop_tables(url: str, prefix: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        meta = sqlalchemy.MetaData()
        meta.reflect(engine, only=lambda table, _: table.startswith(prefix))
        meta.drop_all(engine)
    finally:
        engine.dispose()


def fresh_store_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A job store URL on fresh tables of ``backend`` (sqlite, postgresql, mariadb),
    dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/jobs.db"
        return
    base = require_database(backend)
    prefix = f"qkt{uuid.uuid4().hex[:10]}_"
    try:
        yield f"{base}?table_prefix={prefix}"
    finally:
        drop_tables(base, prefix)
