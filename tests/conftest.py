"""Fixtures shared by the tests: ``conn`` runs a test on memory:// and sqlite://, ``store_url``
(and ``store``) on a job store in SQLite, PostgreSQL and MariaDB; every test has its own
state directory."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuekit import Connection, connect
from queuekit.jobstore import open_jobstore
from queuekit.jobstore.base import JobStore
from tests.databases import fresh_store_url


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own per-user state directory (default queue file and job stores), so
    no test writes into the real ``~/.local/state`` or sees another test's files. Child
    processes the test starts inherit it."""
    home = tmp_path / "state-home"
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    return home


@pytest.fixture(params=["memory", "sqlite"])
def conn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Connection]:
    """A connection to a fresh in-process broker, then to a fresh SQLite file."""
    if request.param == "memory":
        url = f"memory://{uuid.uuid4().hex}"
    else:
        url = f"sqlite:///{tmp_path}/queues.db"
    with connect(url) as connection:
        yield connection


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A job store URL on fresh tables of each backend in turn (see tests/databases.py)."""
    yield from fresh_store_url(request.param, tmp_path)


@pytest.fixture
def store(store_url: str) -> Iterator[JobStore]:
    """A job store opened on each backend in turn (``store_url``), closed after the test."""
    opened = open_jobstore(store_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def name() -> str:
    """A queue name no other test uses."""
    return f"q-{uuid.uuid4().hex[:8]}"
