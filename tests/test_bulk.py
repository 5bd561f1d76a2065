"""``with queue.bulk(size):`` buffers publishes and sends them in batches of ``size``."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from queuekit import AbstractQueue, Connection, Message, connect
from queuekit.spi import Outgoing
from tests.workers.transports import NODELAY

SAFETY = 20.0


def count_batches(conn: Connection) -> list[int]:
    """Record the size of every send_many/send the transport is asked for."""
    sizes: list[int] = []
    inside: list[bool] = []  # an adapter's send may call its own send_many: count it once
    transport = conn.transport
    send_many, send = transport.send_many, transport.send

    def counted_many(queue: str, messages: Sequence[Outgoing]) -> None:
        if not inside:
            sizes.append(len(messages))
        send_many(queue, messages)

    def counted_send(*args: object, **kwargs: object) -> None:
        sizes.append(1)
        inside.append(True)
        try:
            send(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            inside.pop()

    transport.send_many = counted_many  # type: ignore[method-assign]
    transport.send = counted_send  # type: ignore[method-assign]
    return sizes


def drain(conn: Connection, name: str, count: int) -> list[Message]:
    got: list[Message] = []
    conn.queue(name).dispatch(got.append, max_messages=count, max_seconds=SAFETY)
    return got


def test_publishes_go_out_in_batches_of_size(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    sizes = count_batches(conn)
    with queue.bulk(size=3) as batch:
        ids = [queue.publish(n) for n in range(2)]
        assert queue.depth() == 0 and sizes == []  # buffered, ids known already
        ids += [queue.publish(n) for n in range(2, 7)]
        assert queue.depth() == 6 and sizes == [3, 3]
    assert sizes == [3, 3, 1] and batch.sent == 7
    assert [m.id for m in drain(conn, name, 7)] == ids


def test_an_exception_in_the_block_still_sends_what_was_published(
    conn: Connection, name: str
) -> None:
    queue = conn.queue(name)
    with pytest.raises(KeyError), queue.bulk(size=100):
        queue.publish("before")
        raise KeyError("boom")
    assert [m.payload for m in drain(conn, name, 1)] == ["before"]
    queue.publish("after")  # the block is over: sent at once
    assert queue.depth() == 1


def test_per_message_options_are_kept(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    with queue.bulk(size=10):
        queue.publish("low", priority=1)
        queue.publish("high", priority=200)
        queue.publish("later", delay=3600)
        queue.publish("keyed", key="k")
        queue.publish("keyed again", key="k")  # dropped: the same key is pending
    got = drain(conn, name, 3)
    assert [m.payload for m in got] == ["high", "low", "keyed"]
    assert queue.depth() == 0  # "later" is delayed, not ready
    assert queue.purge() == 1  # but it is there


def test_delays_on_a_broker_without_them_wait_per_due_time(tmp_path: Path, name: str) -> None:
    jobs = f"sqlite:///{tmp_path}/jobs.db"
    with connect(f"{NODELAY}://{uuid.uuid4().hex}", jobstore=jobs) as conn:
        queue = conn.queue(name)
        before = time.time()
        with queue.bulk(size=10):
            queue.publish("now")
            queue.publish("soon", delay=0.2)
            queue.publish("later", delay=3600)
        assert conn.transport.depth(name) == 1
        due = conn.jobs.next_due()
        assert due is not None and before + 0.2 <= due < before + 3600
        got = drain(conn, name, 2)
        assert [m.payload for m in got] == ["now", "soon"]


def test_the_buffer_belongs_to_the_thread(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    with queue.bulk(size=100):
        queue.publish("buffered")
        other = threading.Thread(target=lambda: conn.queue(name).publish("direct"))
        other.start()
        other.join()
        assert queue.depth() == 1  # only the other thread's
    assert queue.depth() == 2


def test_blocks_nest_and_other_queue_objects_share_the_buffer(conn: Connection, name: str) -> None:
    sizes = count_batches(conn)
    with conn.queue(name).bulk(size=50):
        conn.queue(name).publish(1)
        with conn.queue(name).bulk(size=50):
            conn.queue(name).publish(2)
        assert sizes == []  # the inner block joined the outer one
        conn.queue(name).publish(3)
    assert sizes == [3]


def test_publish_many_inside_a_block_keeps_the_order(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    with queue.bulk(size=100):
        queue.publish(1)
        queue.publish_many([2, 3])
        queue.publish(4)
    assert [m.payload for m in drain(conn, name, 4)] == [1, 2, 3, 4]


def test_records_of_a_bulk_are_written_when_it_is_sent(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    with queue.bulk(size=100):
        ids = [queue.publish(n, record=True) for n in range(3)]
        assert conn.jobs.unfinished(ids) == set()
    assert conn.jobs.unfinished(ids) == set(ids)


class Mail(AbstractQueue):
    def work(self, message: Message) -> None:
        return None


def test_an_abstract_queue_has_bulk_too(conn: Connection) -> None:
    mail = Mail(conn)
    conn.queue("mail").purge()
    with mail.bulk(size=2):
        for n in range(3):
            mail.publish(n)
    assert conn.queue("mail").depth() == 3


def test_size_must_be_positive(conn: Connection, name: str) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        conn.queue(name).bulk(size=0)
