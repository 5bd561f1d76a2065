"""The publishing side: connect, Queue.publish/publish_many, Topic, Connection, AbstractQueue."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from queuekit import (
    AbstractQueue,
    Connection,
    Message,
    MessageTooLarge,
    Repeat,
    TransportClosed,
    connect,
)
from queuekit.client.connection import default_jobstore
from queuekit.features.envelope import decode
from queuekit.spi.urls import TransportURL
from tests.workers.transports import SMALL


@pytest.fixture
def conn() -> Iterator[Connection]:
    with connect(f"memory://{uuid.uuid4().hex}") as connection:
        yield connection


def received(conn: Connection, queue: str, timeout: float = 1.0) -> Message:
    delivery = conn.transport.receive(queue, timeout)
    assert delivery is not None, f"nothing on {queue!r}"
    conn.transport.ack(delivery)
    return decode(delivery.body)


def test_publish_wraps_the_payload_with_its_metadata(conn: Connection) -> None:
    message_id = conn.queue("q").publish(
        {"to": "a@example.com"},
        name="welcome",
        key="user-1",
        headers={"traceparent": "00-1"},
        retry=Repeat(times=3, every=5),
        correlation_id="corr",
        reply_to="answers",
    )
    message = received(conn, "q")
    assert message.id == message_id
    assert message.payload == {"to": "a@example.com"}
    meta = message.metadata
    assert (meta.name, meta.key, meta.correlation_id, meta.reply_to) == (
        "welcome",
        "user-1",
        "corr",
        "answers",
    )
    assert meta.headers == {"traceparent": "00-1"}
    assert meta.retry == {"kind": "repeat", "times": 3, "every": 5}
    assert meta.attempts == 0


def test_publish_many_keeps_order_and_options(conn: Connection) -> None:
    ids = conn.queue("q").publish_many(iter(["a", "b", "c"]), name="batch", priority=3)
    messages = [received(conn, "q") for _ in range(3)]
    assert [m.id for m in messages] == ids
    assert [m.payload for m in messages] == ["a", "b", "c"]
    assert {(m.metadata.name, m.metadata.priority) for m in messages} == {("batch", 3)}
    assert conn.queue("q").publish_many([]) == []


def test_a_native_delay_waits_on_the_broker(conn: Connection) -> None:
    queue = conn.queue("q")
    queue.publish("later", delay=timedelta(hours=1))
    queue.publish_many(["also later"], delay="1 hour")
    assert queue.depth() == 0  # delayed, not ready
    assert conn.transport.stats("q").delayed == 2
    assert conn.jobs.next_due() is None  # the broker holds it, not the delayed store
    assert conn.transport.receive("q", 0.1) is None


def test_a_delay_in_the_past_is_no_delay(conn: Connection) -> None:
    conn.queue("q").publish("now", delay=datetime(2000, 1, 1, tzinfo=UTC))
    message = received(conn, "q")
    assert message.metadata.not_before is None


def test_a_payload_json_cannot_carry_is_refused_before_sending(conn: Connection) -> None:
    with pytest.raises(TypeError, match="cannot be sent as JSON"):
        conn.queue("q").publish({"tags": {"a", "b"}})  # a set (a datetime is carried)
    assert conn.queue("q").depth() == 0


def test_a_message_over_the_adapter_limit_is_refused_not_truncated() -> None:
    with connect(f"{SMALL}://{uuid.uuid4().hex}") as conn:
        conn.queue("q").publish("x" * 10)
        with pytest.raises(MessageTooLarge) as caught:
            conn.queue("q").publish("x" * 1000)
        assert caught.value.limit == 256
        assert caught.value.size > 1000
        with pytest.raises(MessageTooLarge):
            conn.queue("q").publish_many(["small", "x" * 1000])
        assert conn.queue("q").depth() == 1  # all or nothing


def test_resend_keeps_the_identity(conn: Connection) -> None:
    queue = conn.queue("q")
    queue.publish("x", name="n")
    message = received(conn, "q")
    message.metadata.attempts = 4
    conn.broker.resend("q", message)
    again = received(conn, "q")
    assert (again.id, again.metadata.name, again.metadata.attempts) == (message.id, "n", 4)


def test_a_topic_reaches_every_matching_subscriber(conn: Connection) -> None:
    users = conn.transport.subscribe("user.*")
    audit = conn.transport.subscribe("#")
    message_id = conn.topic("user.saved").publish({"id": 1}, name="user.saved")
    conn.topic("order.paid").publish({"id": 2})
    assert received(conn, users).id == message_id
    assert conn.transport.receive(users, 0) is None
    assert [received(conn, audit).payload for _ in range(2)] == [{"id": 1}, {"id": 2}]


def test_connection_repr_and_errors_hide_the_password() -> None:
    with connect("memory://guest:s3cret-Zq9@shared") as conn:
        assert "s3cret" not in repr(conn)
        assert "s3cret" not in repr(conn.queue("q"))
        assert "***" in repr(conn)


def test_closing_the_connection_closes_the_transport() -> None:
    with connect(f"memory://{uuid.uuid4().hex}") as conn:
        pass
    with pytest.raises(TransportClosed):
        conn.queue("q").publish("x")


def test_memory_connections_to_one_broker_share_one_job_store() -> None:
    name = uuid.uuid4().hex
    with connect(f"memory://{name}") as one, connect(f"memory://{name}") as two:
        one.jobs.add_failed("q", b"raw", "bad")
        assert [f.reason for f in two.failed.list()] == ["bad"]
        with connect(f"memory://{name}-other") as other:
            assert other.failed.list() == []
    with connect(f"memory://{name}") as again:  # the last close dropped it
        assert again.failed.list() == []


def test_the_job_store_defaults_beside_the_transport(
    tmp_path: Path, state_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QUEUEKIT_JOBSTORE", raising=False)
    db = tmp_path / "q.db"
    assert default_jobstore(TransportURL.parse(f"sqlite:///{db}?lease=3")) == f"sqlite:///{db}"
    shared = "sqlite:///:memory:?share=memory-x"
    assert default_jobstore(TransportURL.parse("memory://x")) == shared
    assert default_jobstore(TransportURL.parse("amqp://h/")).startswith(
        f"sqlite:///{state_home}/queuekit/jobs-amqp-h-"
    )

    with connect(f"sqlite:///{db}") as conn:
        conn.jobs.add_failed("q", b"body", "test")
    with sqlite3.connect(db) as raw:
        assert raw.execute("SELECT reason FROM queuekit_failed").fetchall() == [("test",)]

    with connect("memory://x") as conn:
        conn.jobs.add_failed("q", b"body", "test")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("q.db")) == []


def test_queuekit_jobstore_moves_the_job_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = tmp_path / "elsewhere.db"
    monkeypatch.setenv("QUEUEKIT_JOBSTORE", f"sqlite:///{jobs}")
    with connect(f"memory://{uuid.uuid4().hex}") as conn:
        conn.jobs.add_failed("q", b"body", "test")
        assert [f.reason for f in conn.failed.list()] == ["test"]
    assert jobs.exists()


class WelcomeEmailQueue(AbstractQueue):
    done: list[object] = []

    def work(self, message: Message) -> None:
        type(self).done.append(message.payload)


def test_abstract_queue_names_itself_and_owns_its_connection() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    assert WelcomeEmailQueue.queue_name() == "welcome_email_queue"
    with connect(url) as observer:  # keeps the in-process broker alive between connections
        producer = WelcomeEmailQueue(url=url)
        producer.publish({"to": "a@example.com"})
        producer.close()
        assert received(observer, "welcome_email_queue").metadata.name == "WelcomeEmailQueue"
        producer2 = WelcomeEmailQueue(url=url)
        producer2.publish("second")
        consumer = WelcomeEmailQueue(url=url)
        WelcomeEmailQueue.done = []
        assert consumer.dispatch(max_messages=1, max_seconds=10) == 1
        assert WelcomeEmailQueue.done == ["second"]
        with pytest.raises(TransportClosed):  # dispatch closed the connection it opened
            consumer.messages.publish("x")
        producer2.close()


def test_abstract_queue_follows_the_config_routes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QUEUEKIT_URL", raising=False)
    monkeypatch.delenv("QUEUEKIT_CONFIG", raising=False)
    (tmp_path / "queuekit.toml").write_text(
        '[queues]\nwelcome_email_queue = "memory://routed"\n', encoding="utf-8"
    )
    routed = WelcomeEmailQueue()
    try:
        assert routed.connection.url.render() == "memory://routed"
    finally:
        routed.close()


def test_a_payload_with_dates_uuids_and_decimals_reaches_work_typed(tmp_path: Path) -> None:
    # Given a payload as a Django or SQLAlchemy model hands it out
    payload = {"user": uuid.uuid4(), "at": datetime(2026, 12, 5, 9, 30, tzinfo=UTC),
               "amount": Decimal("19.99")}  # fmt: skip
    with connect(f"sqlite:///{tmp_path}/q.db") as conn:
        conn.queue("typed").publish(payload)
        seen: list[object] = []
        # When a worker takes it
        conn.queue("typed").dispatch(seen.append, max_messages=1, max_seconds=5)
    # Then work() gets the same values, of the same types
    [message] = seen
    assert isinstance(message, Message) and message.payload == payload
    assert isinstance(message.payload["user"], uuid.UUID)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_depth_counts_ready_messages_not_delayed_nor_in_flight(kind: str, tmp_path: Path) -> None:
    url = f"memory://{uuid.uuid4().hex}" if kind == "memory" else f"sqlite:///{tmp_path}/d.db"
    with connect(url) as conn, connect(url, prefetch=1) as consumer:
        queue = conn.queue("depth")
        # Given two ready messages, one delayed, and one taken by a consumer
        for n in range(3):
            queue.publish({"n": n})
        queue.publish({"n": 9}, delay=3600)
        taken = consumer.transport.receive("depth", 1.0)
        assert taken is not None
        # Then depth() counts the ready ones only
        assert queue.depth() == 2
        consumer.transport.ack(taken)
