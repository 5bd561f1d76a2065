"""amqp:// against a real RabbitMQ (scripts/brokers up rabbitmq): the semantics the adapter
declares, plus what the conformance suite does not reach (batches, strict prefetch, failover,
URL options, thread safety, the delay cascade's routing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import kombu
import pytest
from amqp import channel as amqp_channel
from amqp import exceptions as amqp_errors
from amqp import spec

from queuekit.adapters.amqp import AMQPTransport, delays
from queuekit.adapters.amqp.messages import priority_level
from queuekit.spi.errors import (
    ConfigurationError,
    ConnectionLost,
    MessageTooLarge,
    TransportClosed,
    Unsupported,
)
from queuekit.spi.priorities import PriorityRange
from queuekit.spi.transport import Outgoing, SendOptions
from queuekit.spi.urls import TransportURL
from tests.proxy import Proxy
from tests.support import require_broker, wait_until

URL = os.environ.get("QUEUEKIT_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")

Open = Callable[..., AMQPTransport]


@pytest.fixture
def amqp() -> Iterator[Open]:
    """Opens transports on the test broker; deletes the test's queues and closes them all."""
    require_broker("rabbitmq", "127.0.0.1", 5672)
    opened: list[AMQPTransport] = []

    def open_(query: str = "", prefetch: int = 16, url: str = URL) -> AMQPTransport:
        transport = AMQPTransport(TransportURL.parse(url + query), prefetch=prefetch)
        opened.append(transport)
        return transport

    yield open_
    cleaner = AMQPTransport(TransportURL.parse(URL))
    for name in queues_made:
        cleaner.delete(name)
    queues_made.clear()
    cleaner.close()
    for transport in opened:
        transport.close()


queues_made: list[str] = []


def new_queue(label: str = "q") -> str:
    name = f"test-amqp-{label}-{uuid.uuid4().hex}"
    queues_made.append(name)
    return name


# -- publishing and settling -------------------------------------------------------------


def test_send_many_confirms_a_batch_that_arrives_whole_and_in_order(amqp: Open) -> None:
    # Given a batch of 2000 messages published with one confirm wait
    producer, consumer = amqp(), amqp(prefetch=64)
    queue = new_queue()
    producer.send_many(queue, [Outgoing(f"m{i}".encode(), {"i": str(i)}) for i in range(2000)])
    # Then the broker holds all of them as soon as send_many returns
    assert producer.depth(queue) == 2000
    # And they come out in order, headers intact
    for i in range(2000):
        delivery = consumer.receive(queue, 5)
        assert delivery is not None
        assert (delivery.body, delivery.headers) == (f"m{i}".encode(), {"i": str(i)})
        consumer.ack(delivery)
    assert consumer.receive(queue, 0.2) is None


def test_nack_requeue_marks_redelivered_and_nack_drop_removes(amqp: Open) -> None:
    transport = amqp()
    queue = new_queue()
    transport.send(queue, b"x", {})
    first = transport.receive(queue, 5)
    assert first is not None and not first.redelivered
    transport.nack(first, requeue=True)
    transport.nack(first, requeue=True)  # settling twice is a no-op
    again = transport.receive(queue, 5)
    assert again is not None and again.redelivered and again.body == b"x"
    transport.nack(again, requeue=False)
    assert transport.receive(queue, 0.3) is None
    assert amqp().depth(queue) == 0


def test_close_returns_unacked_deliveries(amqp: Open) -> None:
    queue = new_queue()
    first = amqp()
    first.send(queue, b"held", {})
    assert first.receive(queue, 5) is not None
    first.close()
    delivery = amqp().receive(queue, 5)
    assert delivery is not None and delivery.redelivered and delivery.body == b"held"


CHILD = """
import sys, time
from queuekit.adapters.amqp import AMQPTransport
from queuekit.spi.urls import TransportURL
t = AMQPTransport(TransportURL.parse(sys.argv[1]))
d = t.receive(sys.argv[2], 10)
print("got" if d else "none", flush=True)
time.sleep(60)
"""


def test_sigkilled_consumer_work_is_redelivered(amqp: Open) -> None:
    queue = new_queue()
    amqp().send(queue, b"work", {})
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, URL, queue], stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "got"
        finally:
            child.send_signal(signal.SIGKILL)
    delivery = amqp().receive(queue, 10)
    assert delivery is not None and delivery.redelivered and delivery.body == b"work"


def test_streaming_consumer_holds_at_most_prefetch(amqp: Open) -> None:
    # Given 20 waiting messages and a consumer with prefetch 4
    producer, consumer = amqp(), amqp(prefetch=4)
    queue = new_queue()
    producer.send_many(queue, [Outgoing(b"%d" % i) for i in range(20)])
    # When it receives one (and holds it)
    assert consumer.receive(queue, 5) is not None
    # Then the broker has sent it at most 4: 16 still wait in the queue
    wait_until(lambda: producer.depth(queue) == 16, what="16 waiting (basic_qos = prefetch)")


def test_strict_prefetch_one_holds_nothing_it_did_not_ask_for(amqp: Open) -> None:
    producer, consumer = amqp(), amqp(prefetch=1)
    queue = new_queue()
    producer.send_many(queue, [Outgoing(b"a"), Outgoing(b"b"), Outgoing(b"c")])
    held = consumer.receive(queue, 5)
    assert held is not None and held.body == b"a"
    consumer.ack(held)
    # after the ack nothing new was pushed to the consumer: both others still wait
    assert producer.depth(queue) == 2
    assert producer.purge(queue) == 2
    assert consumer.receive(queue, 0.3) is None


def test_priorities_map_onto_the_broker_scale_in_order() -> None:
    levels = [priority_level(p, 10) for p in range(256)]
    assert levels[0] == 0 and levels[255] == 10
    assert levels == sorted(levels)
    assert len({priority_level(p, 10) for p in (0, 10, 50, 100, 200, 255)}) == 6


def test_higher_priority_waiting_is_received_first(amqp: Open) -> None:
    producer = amqp()
    queue = new_queue()
    for value in (0, 30, 255, 120):
        producer.send(queue, str(value).encode(), {}, options=SendOptions(priority=value))
    consumer = amqp(prefetch=1)
    got = []
    for _ in range(4):
        delivery = consumer.receive(queue, 5)
        assert delivery is not None
        got.append(int(delivery.body))
        consumer.ack(delivery)
    assert got == [255, 120, 30, 0]


# -- delays ------------------------------------------------------------------------------


def test_delay_routing_key_spells_the_seconds_in_binary() -> None:
    exchange, key = delays.route(11)
    assert exchange == delays.level_name(3)
    assert key.split(".")[-4:] == ["1", "0", "1", "1"]
    assert len(key.split(".")) == delays.LEVELS
    assert delays.seconds_until(100.2, 100.0) == 1
    assert delays.seconds_until(99.0, 100.0) == 0


def test_short_delay_never_waits_behind_a_long_one(amqp: Open) -> None:
    transport = amqp()
    queue = new_queue()
    # Given a message due in an hour, then one due in a second
    transport.send(queue, b"hour", {}, options=SendOptions(not_before=time.time() + 3600))
    due = time.time() + 1
    transport.send(queue, b"second", {"h": "v"}, options=SendOptions(not_before=due))
    # Then the short one arrives first, not early, with only the user's headers
    delivery = transport.receive(queue, 10)
    assert delivery is not None and delivery.body == b"second"
    assert time.time() >= due
    assert delivery.headers == {"h": "v"}
    transport.ack(delivery)
    assert transport.receive(queue, 0.5) is None


def test_past_not_before_is_sent_at_once_and_huge_delays_are_refused(amqp: Open) -> None:
    transport = amqp()
    queue = new_queue()
    transport.send(queue, b"due", {}, options=SendOptions(not_before=time.time() - 5))
    assert transport.depth(queue) == 1
    with pytest.raises(Unsupported):
        transport.send(queue, b"x", {}, options=SendOptions(not_before=time.time() + 2**29))


def test_delay_and_priority_can_be_turned_off(amqp: Open) -> None:
    transport = amqp("?delay=0&max_priority=0")
    assert not transport.capabilities.delay and not transport.capabilities.priority
    queue = new_queue()
    with pytest.raises(Unsupported):
        transport.send(queue, b"x", {}, options=SendOptions(not_before=time.time() + 5))
    with pytest.raises(Unsupported):
        transport.send(queue, b"x", {}, options=SendOptions(priority=3))


# -- priority bands ------------------------------------------------------------------------

BANDED = (None, 49, 50, 120, 199, 200, 255)  # every default band: 0, 50, 100, 150, 200


def send_banded(transport: AMQPTransport, queue: str) -> None:
    for priority in BANDED:
        transport.send(queue, str(priority).encode(), {}, options=SendOptions(priority=priority))


def broker_has(queue: str) -> bool:
    """Whether RabbitMQ has ``queue`` (a passive declare, on a connection of its own)."""
    with kombu.Connection(URL) as connection:
        channel = connection.channel()
        try:
            channel.queue_declare(queue, passive=True)
        except amqp_errors.NotFound:
            return False
        return True


def test_the_publisher_declares_a_bands_queue_only_once_a_priority_needs_it(amqp: Open) -> None:
    producer, queue = amqp(), new_queue("bands")
    producer.send_many(queue, [Outgoing(b"plain"), Outgoing(b"low", {}, SendOptions(priority=9))])
    assert broker_has(queue) and not broker_has(f"{queue}#200")
    producer.send(queue, b"urgent", {}, options=SendOptions(priority=230))
    assert broker_has(f"{queue}#200") and not broker_has(f"{queue}#50")
    assert producer.depth(queue) == 3


def test_a_range_consumer_takes_its_bands_a_requeue_and_a_delay_keep_the_band(
    amqp: Open,
) -> None:
    # Given messages in every band, and one of 120 due in a second
    producer, queue = amqp(), new_queue("range")
    send_banded(producer, queue)
    due = time.time() + 1
    producer.send(queue, b"later", {}, options=SendOptions(priority=120, not_before=due))
    # When a strict 50-199 consumer takes what it can, putting the first back once
    urgent, only = amqp(prefetch=1), PriorityRange(50, 199)
    first = urgent.receive_priorities(queue, 5, only)
    assert first is not None and first.body == b"199"
    urgent.nack(first, requeue=True)
    taken = []
    while (delivery := urgent.receive_priorities(queue, 3, only)) is not None:
        taken.append(delivery.body)
        urgent.ack(delivery)
    # Then it took only its bands, highest band first, the delayed one into its band
    assert taken == [b"199", b"120", b"50", b"later"] and time.time() >= due
    rest = amqp(prefetch=1)
    got = [rest.receive(queue, 5) for _ in range(4)]
    assert [d.body for d in got if d] == [b"255", b"200", b"49", b"None"]


def test_a_range_across_bands_is_refused_naming_the_option(amqp: Open) -> None:
    transport, queue = amqp(), new_queue("cut")
    with pytest.raises(Unsupported, match=r"set \?priority_bands=10,41,50,100,150,200"):
        transport.receive_priorities(queue, 0, PriorityRange(10, 40))
    custom = amqp("?priority_bands=10,41")
    custom.send(queue, b"25", {}, options=SendOptions(priority=25))
    delivery = custom.receive_priorities(queue, 5, PriorityRange(10, 40))
    assert delivery is not None and delivery.body == b"25"


def test_a_streaming_consumer_holds_at_most_prefetch_per_band(amqp: Open) -> None:
    # Given 20 messages waiting in each of the five bands, and a consumer with prefetch 2
    producer, consumer = amqp(), amqp(prefetch=2)
    queue = new_queue("held")
    for priority in (0, 50, 100, 150, 200):
        producer.send_many(queue, [Outgoing(b"x", {}, SendOptions(priority=priority))] * 20)
    # When it receives one
    delivery = consumer.receive(queue, 5)
    assert delivery is not None
    # Then the broker sent it two per band, no more: 90 still wait
    wait_until(lambda: producer.depth(queue) == 90, what="90 waiting (2 per band sent)")
    assert consumer.depth(queue) == 90  # its own buffered ones are in flight: not ready


def test_depth_purge_delete_cover_every_band(amqp: Open) -> None:
    transport, queue = amqp(), new_queue("all")
    send_banded(transport, queue)
    assert transport.depth(queue) == len(BANDED)
    assert transport.purge(queue) == len(BANDED)
    assert transport.depth(queue) == 0
    transport.delete(queue)
    assert not any(broker_has(name) for name in (queue, f"{queue}#50", f"{queue}#200"))


# -- publish/subscribe -------------------------------------------------------------------


def test_subscribe_returns_a_queue_that_receive_reads(amqp: Open) -> None:
    subscriber, publisher = amqp(), amqp()
    root = f"test.{uuid.uuid4().hex}"
    everything = subscriber.subscribe(f"{root}.#")
    one_word = subscriber.subscribe(f"{root}.*")
    publisher.broadcast(f"{root}.a.b", b"deep", {"k": "v"})
    publisher.broadcast(f"{root}.a", b"shallow", {})
    got = [subscriber.receive(everything, 5), subscriber.receive(everything, 5)]
    assert sorted(d.body for d in got if d) == [b"deep", b"shallow"]
    only = subscriber.receive(one_word, 5)
    assert only is not None and only.body == b"shallow"
    assert subscriber.receive(one_word, 0.3) is None
    subscriber.unsubscribe(everything)
    subscriber.unsubscribe(everything)  # idempotent
    subscriber.unsubscribe(one_word)
    assert publisher.depth(everything) == 0


# -- inspection --------------------------------------------------------------------------


def test_depth_purge_delete(amqp: Open) -> None:
    transport = amqp()
    queue = new_queue()
    assert transport.depth(queue) == 0  # unknown queue: nothing waits
    transport.send_many(queue, [Outgoing(b"x")] * 7)
    assert transport.depth(queue) == 7
    assert transport.purge(queue) == 7
    assert transport.depth(queue) == 0
    transport.delete(queue)
    transport.delete(queue)  # idempotent
    # a later send re-creates what delete removed (the broker returns it unroutable first)
    transport.send(queue, b"after", {})
    assert transport.depth(queue) == 1


# -- connections, failover, errors ----------------------------------------------------------


def test_failover_skips_a_host_that_refuses(amqp: Open) -> None:
    transport = amqp(url="amqp://guest:guest@127.0.0.1:1,127.0.0.1:5672/")
    queue = new_queue()
    transport.send(queue, b"via-second", {})
    delivery = transport.receive(queue, 5)
    assert delivery is not None and delivery.body == b"via-second"


def test_no_broker_raises_connection_lost_after_reconnect_timeout(amqp: Open) -> None:
    transport = amqp("?reconnect_timeout=0.5", url="amqp://guest:guest@127.0.0.1:1/")
    with pytest.raises(ConnectionLost):
        transport.send(new_queue(), b"x", {})
    with pytest.raises(ConnectionLost):
        while True:
            transport.receive("q", 0.2)


def test_an_inspection_gives_up_after_inspect_timeout_not_reconnect_timeout(amqp: Open) -> None:
    # Given no broker, a long reconnect_timeout and a short inspect_timeout
    transport = amqp("?reconnect_timeout=600&inspect_timeout=0.5",
                     url="amqp://guest:guest@127.0.0.1:1/")  # fmt: skip
    # When its depth is asked, Then it says the broker is unreachable after the short one
    with pytest.raises(ConnectionLost, match=r"no broker reachable for 0\.5 s"):
        transport.depth("q")


def test_bad_options_and_credentials_are_configuration_errors(amqp: Open) -> None:
    with pytest.raises(ConfigurationError, match="confrim"):
        amqp("?confrim=1")
    wrong = amqp(url="amqp://guest:wrong@127.0.0.1:5672/")
    with pytest.raises(ConfigurationError):
        wrong.send(new_queue(), b"x", {})


def test_a_queue_declared_differently_is_a_configuration_error(amqp: Open) -> None:
    queue = new_queue()
    amqp("?max_priority=3").send(queue, b"x", {})
    with pytest.raises(ConfigurationError, match="x-max-priority"):
        amqp().send(queue, b"y", {})


def test_message_larger_than_the_limit_is_refused(amqp: Open) -> None:
    transport = amqp("?max_message_size=1000")
    assert transport.capabilities.max_message_size == 1000
    queue = new_queue()
    transport.send(queue, b"x" * 1000, {})
    with pytest.raises(MessageTooLarge):
        transport.send(queue, b"x" * 1001, {})
    with pytest.raises(MessageTooLarge):
        transport.send_many(queue, [Outgoing(b"ok"), Outgoing(b"x" * 1001)])
    assert transport.depth(queue) == 1  # a refused batch publishes nothing


def test_sends_from_many_threads_all_arrive(amqp: Open) -> None:
    transport = amqp()
    queue = new_queue()

    def publish(thread: int) -> None:
        for i in range(200):
            transport.send(queue, f"{thread}-{i}".encode(), {})

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert transport.depth(queue) == 1600


def test_a_publish_is_written_before_earlier_callers_have_their_confirms(amqp: Open) -> None:
    """Pipelined confirms: while the broker's confirms are held back, eight callers'
    messages all reach the queue; each caller returns once its own confirm is in."""
    proxy = Proxy(("127.0.0.1", 5672))
    transport = amqp(url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
    observer = amqp()
    queue = new_queue()
    transport.send(queue, b"declared", {})
    proxy.hold()
    threads = [
        threading.Thread(target=transport.send, args=(queue, f"{n}".encode(), {})) for n in range(8)
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: observer.depth(queue) == 9, what="all eight messages in the queue")
    assert all(thread.is_alive() for thread in threads)  # none has its confirm yet
    proxy.release()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    proxy.stop()


def test_close_from_another_thread_ends_a_blocked_receive(amqp: Open) -> None:
    transport = amqp()
    queue = new_queue()
    results: list[object] = []
    receiver = threading.Thread(target=lambda: results.append(transport.receive(queue, 60)))
    receiver.start()
    wait_until(lambda: queue in transport._consumer.consumers, what="the consumer to start")
    transport.close()
    receiver.join(5)
    assert not receiver.is_alive() and results == [None]
    with pytest.raises(TransportClosed):
        transport.receive(queue, 0)
    with pytest.raises(TransportClosed):
        transport.send(queue, b"x", {})
    transport.close()  # idempotent


def test_a_connection_lost_in_the_middle_of_a_batch_loses_none_of_it(
    amqp: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a publisher whose connection breaks while it writes the 100th of 500 messages
    transport = amqp()
    queue = new_queue()
    transport.send(queue, b"declared", {})
    send_method = amqp_channel.Channel.send_method
    publishes = 0

    def breaking(channel: Any, sig: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal publishes
        if sig == spec.Basic.Publish:
            publishes += 1
            if publishes == 100:
                raise ConnectionResetError("cut in the middle of a batch")
        return send_method(channel, sig, *args, **kwargs)

    monkeypatch.setattr(amqp_channel.Channel, "send_method", breaking)
    # When the batch is sent
    transport.send_many(queue, [Outgoing(f"{n}".encode()) for n in range(500)])
    # Then every message of it is in the queue (those written before the break maybe twice)
    bodies = []
    while (delivery := transport.receive(queue, 2)) is not None:
        bodies.append(delivery.body)
        transport.ack(delivery)
    assert {f"{n}".encode() for n in range(500)} <= set(bodies)
