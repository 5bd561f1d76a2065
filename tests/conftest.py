"""Fixtures shared by the core's tests: every such test runs on memory:// and sqlite://."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuekit import Connection, connect


@pytest.fixture(params=["memory", "sqlite"])
def conn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Connection]:
    """A connection to a fresh in-process broker, then to a fresh SQLite file."""
    if request.param == "memory":
        url = f"memory://{uuid.uuid4().hex}"
    else:
        url = f"sqlite:///{tmp_path}/queues.db"
    with connect(url) as connection:
        yield connection


@pytest.fixture
def name() -> str:
    """A queue name no other test uses."""
    return f"q-{uuid.uuid4().hex[:8]}"
