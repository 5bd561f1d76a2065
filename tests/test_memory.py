"""memory://name: the in-process broker keeps the whole transport contract except durability."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from queuekit import TransportClosed
from queuekit.adapters.memory import MemoryTransport
from queuekit.spi.registry import open_transport
from queuekit.spi.transport import Delivery, Outgoing, SendOptions, Transport
from tests.support import wait_until


@pytest.fixture
def broker() -> str:
    return f"memory://{uuid.uuid4().hex}"


@pytest.fixture
def transport(broker: str) -> Iterator[Transport]:
    opened = open_transport(broker)
    yield opened
    opened.close()


def take(transport: Transport, queue: str, timeout: float = 1.0) -> Delivery:
    delivery = transport.receive(queue, timeout)
    assert delivery is not None, f"nothing on {queue!r}"
    return delivery


def test_transports_on_the_same_name_share_one_broker(broker: str) -> None:
    a, b, other = (
        open_transport(broker),
        open_transport(broker),
        open_transport("memory://x" + broker[9:]),
    )
    try:
        a.send("q", b"hello", {"h": "1"})
        assert other.receive("q", 0) is None
        delivery = take(b, "q")
        assert (delivery.body, delivery.headers) == (b"hello", {"h": "1"})
        assert not delivery.redelivered
        assert delivery.delivery_count == 1
        b.ack(delivery)
        assert a.depth("q") == 0
    finally:
        for t in (a, b, other):
            t.close()


def test_capabilities_are_declared_honestly() -> None:
    caps = MemoryTransport.capabilities
    assert not caps.durable
    assert "durable" in caps.reasons
    assert {"redelivery", "delay", "priority", "dedup", "fanout", "topics"} <= set(caps.declared())


def test_priority_then_fifo(transport: Transport) -> None:
    priorities = {b"a": None, b"b": 5, b"c": None, b"d": 5, b"e": 9}
    transport.send_many(
        "q", [Outgoing(body, options=SendOptions(priority=p)) for body, p in priorities.items()]
    )
    assert [take(transport, "q").body for _ in range(5)] == [b"e", b"b", b"d", b"a", b"c"]


def test_not_before_is_honoured(transport: Transport) -> None:
    due = time.time() + 0.3
    transport.send("q", b"later", {}, options=SendOptions(not_before=due))
    transport.send("q", b"now", {})
    assert take(transport, "q").body == b"now"
    assert transport.depth("q") == 0  # the other is delayed, not ready
    assert take(transport, "q", 5).body == b"later"
    assert time.time() >= due


def test_overdue_messages_come_in_due_order(transport: Transport) -> None:
    now = time.time()
    transport.send("q", b"second", {}, options=SendOptions(not_before=now + 0.2))
    transport.send("q", b"first", {}, options=SendOptions(not_before=now + 0.1))
    wait_until(lambda: time.time() > now + 0.2, what="both messages to fall due")
    assert [take(transport, "q").body for _ in range(2)] == [b"first", b"second"]


def test_dedup_while_pending_and_in_flight(transport: Transport) -> None:
    keyed = SendOptions(dedup_key="k")
    transport.send("q", b"1", {}, options=keyed)
    transport.send("q", b"2", {}, options=keyed)
    assert transport.depth("q") == 1
    delivery = take(transport, "q")
    transport.send("q", b"3", {}, options=keyed)  # in flight: still a duplicate
    assert transport.depth("q") == 0
    transport.nack(delivery, requeue=False)
    transport.send("q", b"4", {}, options=keyed)  # settled: accepted
    assert take(transport, "q").body == b"4"


def test_nack_requeue_redelivers(transport: Transport) -> None:
    transport.send("q", b"x", {})
    first = take(transport, "q")
    transport.nack(first, requeue=True)
    again = take(transport, "q")
    assert again.body == b"x"
    assert again.redelivered
    assert again.delivery_count == 2
    transport.ack(again)
    transport.ack(again)  # settling twice is a no-op
    assert transport.receive("q", 0) is None


def test_closing_gives_unacked_work_back_and_then_refuses_calls(broker: str) -> None:
    consumer, other = open_transport(broker), open_transport(broker)
    try:
        other.send("q", b"work", {})
        take(consumer, "q")
        consumer.close()
        consumer.close()  # idempotent
        assert take(other, "q").redelivered
        for call in (
            lambda: consumer.send("q", b"", {}),
            lambda: consumer.receive("q", 0),
            lambda: consumer.depth("q"),
            lambda: consumer.purge("q"),
        ):
            with pytest.raises(TransportClosed):
                call()
    finally:
        other.close()


def test_a_blocked_receive_wakes_for_a_send_and_for_close(broker: str) -> None:
    consumer, producer = open_transport(broker), open_transport(broker)
    results: list[Delivery | None] = []
    started = threading.Event()

    def consume() -> None:
        started.set()
        results.append(consumer.receive("q", 30))
        results.append(consumer.receive("q", 30))

    thread = threading.Thread(target=consume)
    thread.start()
    started.wait(5)
    producer.send("q", b"wake", {})
    wait_until(lambda: results, what="the blocked receive to return the message")
    consumer.close()
    thread.join(10)
    producer.close()
    assert not thread.is_alive()
    assert results[0] is not None
    assert results[0].body == b"wake"
    assert results[1] is None


def test_depth_purge_delete(transport: Transport) -> None:
    transport.send_many(
        "q", [Outgoing(b"1"), Outgoing(b"2", options=SendOptions(not_before=time.time() + 60))]
    )
    assert transport.depth("q") == 1  # ready; the delayed one is not counted
    assert transport.purge("q") == 2  # purge drops both
    assert transport.depth("q") == 0
    transport.send("q", b"3", {})
    transport.delete("q")
    assert transport.depth("q") == 0


def test_topics_reach_every_matching_subscription(transport: Transport) -> None:
    users = transport.subscribe("user.*")
    everything = transport.subscribe("#")
    transport.broadcast("user.saved", b"u", {"k": "v"})
    transport.broadcast("order.paid", b"o", {})
    assert take(transport, users).body == b"u"
    assert transport.receive(users, 0) is None
    assert [take(transport, everything).body for _ in range(2)] == [b"u", b"o"]
    transport.unsubscribe(users)
    transport.broadcast("user.saved", b"again", {})
    assert transport.receive(users, 0) is None
    assert take(transport, everything).body == b"again"
