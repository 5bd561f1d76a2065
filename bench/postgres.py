"""The machine's PostgreSQL for a bench: whether it answers, and a fresh database per run,
dropped afterwards (``QUEUEKIT_TEST_POSTGRES`` points elsewhere, as for the tests)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import sqlalchemy

URL = os.environ.get("QUEUEKIT_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def answers(url: str = URL) -> bool:
    """Whether the database at ``url`` (any SQLAlchemy URL; the machine's PostgreSQL by
    default) accepts a query within a few seconds."""
    engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        return True
    except sqlalchemy.exc.SQLAlchemyError:
        return False
    finally:
        engine.dispose()


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """The URL of a new, empty database (its tables need no prefix), dropped on exit even
    while a connection to it is still open."""
    name = f"qkbench_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        try:
            yield (
                sqlalchemy.engine.make_url(URL)
                .set(database=name)
                .render_as_string(hide_password=False)
            )
        finally:
            with admin.connect() as conn:
                conn.execute(sqlalchemy.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
