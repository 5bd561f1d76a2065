"""Putting dead letters back in batches (``worker failed retry all``), on SQLite and RabbitMQ.

Given dead letters of one queue: they go back a batch per ``send_many``, every one of them
once; and when a batch cannot be sent, what was put back before it is exactly what the
count says, and the rest stay in the failed store.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuekit import connect
from queuekit.client.connection import Connection
from queuekit.spi.errors import MessageTooLarge
from tests.support import require_broker
from tests.workers.harness import sqlite_url


@pytest.fixture(params=["sqlite", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "rabbitmq":
        require_broker("rabbitmq", "127.0.0.1", 5672)
        return "amqp://guest:guest@127.0.0.1:5672/"
    return sqlite_url(tmp_path / "queues.db")


@pytest.fixture
def conn(broker_url: str, tmp_path: Path) -> Iterator[Connection]:
    with connect(broker_url, jobstore=sqlite_url(tmp_path / "jobs.db")) as opened:
        yield opened


@pytest.fixture
def queue(conn: Connection) -> Iterator[str]:
    name = f"retry-{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        conn.transport.delete(name)


def dead_letters(conn: Connection, queue: str, payloads: list[object]) -> list[int]:
    """Publish each payload, take it off the broker and file it as failed, as a worker would."""
    ids = []
    for payload in payloads:
        conn.queue(queue).publish(payload)
        delivery = conn.transport.receive(queue, 10.0)
        assert delivery is not None
        ids.append(conn.jobs.add_failed(queue, delivery.body, "test"))
        conn.transport.ack(delivery)
    return ids


def drain(conn: Connection, queue: str, expected: int) -> list[bytes]:
    bodies = []
    while len(bodies) < expected and (delivery := conn.transport.receive(queue, 5.0)):
        bodies.append(delivery.body)
        conn.transport.ack(delivery)
    return bodies


def test_dead_letters_go_back_a_batch_at_a_time_each_once(conn: Connection, queue: str) -> None:
    # Given five dead letters
    ids = dead_letters(conn, queue, [{"n": n} for n in range(5)])
    # When they are put back two per batch
    batches = list(conn.failed.retry_batches(ids, size=2))
    # Then three batches went, and each message is back once
    assert batches == [2, 2, 1]
    assert conn.failed.list() == []
    assert len(drain(conn, queue, 6)) == 5


def test_a_batch_that_cannot_go_leaves_exactly_itself_and_the_rest_failed(
    conn: Connection, queue: str, broker_url: str, tmp_path: Path
) -> None:
    # Given five dead letters, the fourth too large for a connection that allows 200 bytes
    payloads: list[object] = [{"n": 0}, {"n": 1}, {"n": 2}, {"big": "x" * 400}, {"n": 4}]
    ids = dead_letters(conn, queue, payloads)
    option = "&" if "?" in broker_url else "?"
    with connect(f"{broker_url}{option}max_message_size=200",
                 jobstore=sqlite_url(tmp_path / "jobs.db")) as small:  # fmt: skip
        # When they are put back two per batch
        retried = 0
        with pytest.raises(MessageTooLarge):
            for count in small.failed.retry_batches(ids, size=2):
                retried += count
    # Then the first batch is back, and the second batch and the rest are still failed
    assert retried == 2
    assert [e.id for e in conn.failed.list()] == ids[2:]
    assert len(drain(conn, queue, 3)) == 2
