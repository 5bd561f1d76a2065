"""stomp:// against two real STOMP servers: RabbitMQ's STOMP plugin and ActiveMQ 5.

Every case runs on both (``scripts/brokers up rabbitmq-stomp activemq``); where the servers
differ, the case says which behaviour each one must show.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from queuekit.spi.errors import (
    ConnectionLost,
    MessageTooLarge,
    TransportClosed,
    TransportError,
    Unsupported,
)
from queuekit.spi.priorities import PriorityRange
from queuekit.spi.registry import open_transport
from queuekit.spi.transport import Delivery, Outgoing, SendOptions, Transport
from tests.support import require_broker, wait_until

SERVERS = {
    "rabbitmq": ("rabbitmq-stomp", 61613),
    "activemq": ("activemq", 61623),
}


def url_for(server: str, **options: str) -> str:
    _, port = SERVERS[server]
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"stomp://guest:guest@127.0.0.1:{port}" + (f"?{query}" if query else "")


@pytest.fixture(params=sorted(SERVERS))
def server(request: pytest.FixtureRequest) -> str:
    name, port = SERVERS[request.param]
    require_broker(name, "127.0.0.1", port)
    return str(request.param)


@pytest.fixture
def opened(server: str) -> Iterator[list[Transport]]:
    transports: list[Transport] = []
    yield transports
    for transport in transports:
        transport.close()


@pytest.fixture
def connect(server: str, opened: list[Transport]):  # type: ignore[no-untyped-def]
    def open_one(prefetch: int = 16, **options: str) -> Transport:
        transport = open_transport(url_for(server, **options), prefetch=prefetch)
        opened.append(transport)
        return transport

    return open_one


def fresh(label: str) -> str:
    return f"qk-stomp-{label}-{uuid.uuid4().hex[:10]}"


def take(transport: Transport, queue: str, timeout: float = 10.0) -> Delivery:
    delivery = transport.receive(queue, timeout)
    assert delivery is not None, f"nothing arrived on {queue} within {timeout}s"
    return delivery


def drain(transport: Transport, queue: str, count: int) -> list[bytes]:
    bodies = []
    for _ in range(count):
        delivery = take(transport, queue)
        bodies.append(delivery.body)
        transport.ack(delivery)
    return bodies


# -- the server decides the capabilities ----------------------------------------------


def test_capabilities_follow_the_server_header(server: str, connect) -> None:  # type: ignore[no-untyped-def]
    transport = connect()
    caps = transport.capabilities
    for flag in ("durable", "redelivery", "nack_requeue", "competing_consumers", "fanout"):
        assert getattr(caps, flag), flag
    assert caps.topics and caps.priority and caps.fifo
    assert not caps.dedup and not caps.inspect
    if server == "rabbitmq":
        assert transport.server.startswith("RabbitMQ/")  # type: ignore[attr-defined]
        assert not caps.delay and "delay" in caps.reasons
    else:
        assert transport.server.startswith("ActiveMQ/")  # type: ignore[attr-defined]
        assert caps.delay


def test_heart_beats_are_negotiated(server: str, connect) -> None:  # type: ignore[no-untyped-def]
    transport = connect(heartbeat="2000")
    session = transport._session  # type: ignore[attr-defined]
    assert session.server_headers.get("version") == "1.2"
    send_ms, receive_ms = (int(x) for x in session.server_headers["heart-beat"].split(","))
    assert send_ms > 0 and receive_ms > 0


def test_url_options_can_turn_server_features_off(server: str, connect) -> None:  # type: ignore[no-untyped-def]
    transport = connect(priority="0", scheduler="0")
    assert not transport.capabilities.priority
    assert not transport.capabilities.delay
    with pytest.raises(Unsupported):
        transport.send(fresh("opt"), b"x", {}, options=SendOptions(priority=5))


# -- bodies and headers -----------------------------------------------------------------


def test_binary_bodies_and_escaped_headers_round_trip(server: str, connect) -> None:  # type: ignore[no-untyped-def]
    # Given a body with every byte value (NULs included) and headers STOMP must escape
    transport = connect()
    queue = fresh("bytes")
    body = bytes(range(256)) * 4
    headers = {
        "colon:name": "a:b",
        "newline": "x\ny\r\nz",
        "backslash": "c:\\d",
        "ü": "ünï",
        "astral": "\U0001f600 \U00031360",  # ActiveMQ alone would turn these into U+FFFD
        "\U0001f600": "astral name",
        "nul": "a\x00b",  # would end a STOMP frame
        "": "",
    }
    transport.send(queue, body, headers)
    transport.send(queue, b"", {})
    # When it is received
    first, empty = take(transport, queue), take(transport, queue)
    # Then body and headers are exactly what was sent, and nothing of the server's leaks
    assert first.body == body
    assert first.headers == headers
    assert empty.body == b"" and empty.headers == {}
    assert first.redelivered is False  # ActiveMQ omits the header, RabbitMQ says false
    transport.ack(first)
    transport.ack(empty)


def test_too_large_is_refused_before_sending(server: str, connect) -> None:  # type: ignore[no-untyped-def]
    transport = connect()
    limit = transport.capabilities.max_message_size
    assert limit is not None
    with pytest.raises(MessageTooLarge):
        transport.send(fresh("big"), b"x" * (limit + 1), {})


# -- queues ----------------------------------------------------------------------------


def test_send_many_keeps_order_and_is_confirmed(server: str, connect) -> None:  # type: ignore[no-untyped-def]
    producer, consumer = connect(), connect()
    queue = fresh("many")
    producer.send_many(queue, [Outgoing(f"m{i}".encode()) for i in range(2500)])
    assert drain(consumer, queue, 2500) == [f"m{i}".encode() for i in range(2500)]
    assert consumer.receive(queue, 0.3) is None


def test_competing_consumers_share_without_duplicates(server: str, connect) -> None:  # type: ignore[no-untyped-def]
    queue = fresh("compete")
    producer = connect()
    consumers = [connect(prefetch=4), connect(prefetch=4)]
    for consumer in consumers:  # both subscribed before anything is published
        assert consumer.receive(queue, 0.05) is None
    producer.send_many(queue, [Outgoing(str(i).encode()) for i in range(200)])
    seen: list[list[bytes]] = [[], []]

    def run(index: int) -> None:
        while True:
            delivery = consumers[index].receive(queue, 1.0)
            if delivery is None:
                return
            seen[index].append(delivery.body)
            consumers[index].ack(delivery)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    everything = seen[0] + seen[1]
    assert sorted(everything) == sorted(str(i).encode() for i in range(200))
    assert seen[0] and seen[1], "one consumer got nothing"


def test_nack_requeue_redelivers_and_nack_drop_forgets(server: str, connect) -> None:  # type: ignore[no-untyped-def]
    transport = connect()
    queue = fresh("nack")
    headers = {"k": "v", "colon:name": "a:b\nc", "\U0001f600": "astral"}
    transport.send(queue, b"again", headers, options=SendOptions(priority=200))
    first = take(transport, queue)
    transport.nack(first, requeue=True)
    second = take(transport, queue)
    assert (second.body, second.headers, second.redelivered) == (b"again", headers, True)
    transport.nack(second, requeue=False)
    transport.nack(second, requeue=False)  # settling twice is a no-op
    assert transport.receive(queue, 0.5) is None


def test_priority_serves_higher_first(server: str, connect) -> None:  # type: ignore[no-untyped-def]
    producer = connect()
    queue = fresh("prio")
    for body, priority in ((b"low", 0), (b"mid", 128), (b"high", 255)):
        producer.send(queue, body, {}, options=SendOptions(priority=priority))
    consumer = connect(prefetch=1)
    assert drain(consumer, queue, 3) == [b"high", b"mid", b"low"]


def test_a_range_consumer_takes_only_its_bands_and_a_requeue_keeps_the_band(
    server: str, connect
) -> None:  # type: ignore[no-untyped-def]
    # Given messages in every default band
    queue, producer = fresh("range"), connect()
    for priority in (None, 49, 50, 120, 199, 200, 255):
        producer.send(queue, str(priority).encode(), {}, options=SendOptions(priority=priority))
    # When a consumer of 50-199 takes what it can, putting the first back once
    urgent = connect(prefetch=1)
    first = urgent.receive_priorities(queue, 10, PriorityRange(50, 199))
    assert first is not None and first.body == b"199"
    urgent.nack(first, requeue=True)
    taken = []
    while (delivery := urgent.receive_priorities(queue, 1, PriorityRange(50, 199))) is not None:
        taken.append(delivery.body)
        urgent.ack(delivery)
    # Then it got only its bands, highest first, the requeued one again in its band
    assert taken == [b"199", b"120", b"50"]
    rest = drain(connect(prefetch=1), queue, 4)
    # (ActiveMQ ranks no priority as 4, above 49's 2: the bands' order is what counts here)
    assert rest[:2] == [b"255", b"200"] and sorted(rest[2:]) == [b"49", b"None"]
    with pytest.raises(Unsupported, match="priority_bands=10,41,50"):
        urgent.receive_priorities(queue, 0, PriorityRange(10, 40))
    # (a URL with those bands serves that range)
    custom = connect(priority_bands="10,41")
    assert custom.receive_priorities(queue, 0.2, PriorityRange(10, 40)) is None


def test_delay_is_native_on_activemq_and_refused_on_rabbitmq(server: str, connect) -> None:  # type: ignore[no-untyped-def]
    transport = connect()
    queue = fresh("delay")
    due = time.time() + 1.5
    if server == "rabbitmq":
        with pytest.raises(Unsupported):
            transport.send(queue, b"later", {}, options=SendOptions(not_before=due))
        return
    transport.send(queue, b"later", {}, options=SendOptions(not_before=due))
    transport.send(queue, b"now", {})
    assert take(transport, queue).body == b"now"
    delivery = take(transport, queue, timeout=15)
    assert delivery.body == b"later"
    assert time.time() >= due - 0.05  # the broker's scheduler, not the client, held it
    transport.ack(delivery)


def test_killed_consumer_work_is_redelivered(server: str, connect) -> None:  # type: ignore[no-untyped-def]
    # Given a consumer process holding a message it has not acked
    queue = fresh("sigkill")
    producer = connect()
    producer.send(queue, b"precious", {})
    code = (
        "import sys, time\n"
        "from queuekit.spi.registry import open_transport\n"
        "t = open_transport(sys.argv[1])\n"
        "d = t.receive(sys.argv[2], 30)\n"
        "print('got' if d else 'none', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, url_for(server), queue],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "got"
        # When it is killed without a chance to close
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    # Then the server gives the message to the next consumer, flagged as redelivered
    delivery = take(connect(), queue, timeout=30)
    assert (delivery.body, delivery.redelivered) == (b"precious", True)


def test_close_returns_unacked_and_wakes_a_blocked_receive(server: str, connect) -> None:  # type: ignore[no-untyped-def]
    queue = fresh("close")
    holder = connect()
    holder.send(queue, b"held", {})
    held = take(holder, queue)
    waiting = connect()
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(waiting.receive(fresh("idle"), 30)))
    thread.start()
    time.sleep(0.2)  # let the receive block (not a synchronisation: either order passes)
    waiting.close()
    thread.join(5)
    assert not thread.is_alive() and result == [None]
    holder.close()
    with pytest.raises(TransportClosed):
        holder.ack(held)
    with pytest.raises(TransportClosed):
        holder.send(queue, b"x", {})
    holder.close()  # idempotent
    assert take(connect(), queue).body == b"held"


# -- topics ----------------------------------------------------------------------------


def test_broadcast_reaches_every_subscriber(server: str, connect) -> None:  # type: ignore[no-untyped-def]
    root = "qkstomp" + uuid.uuid4().hex[:8]
    a, b, publisher = connect(), connect(), connect()
    sub_a, sub_b = a.subscribe(f"{root}.news"), b.subscribe(f"{root}.news")
    publisher.broadcast(f"{root}.news", b"hello", {"h": "1"})
    for transport, sub in ((a, sub_a), (b, sub_b)):
        delivery = take(transport, sub)
        assert (delivery.body, delivery.headers) == (b"hello", {"h": "1"})
        transport.ack(delivery)


@pytest.mark.parametrize(
    ("pattern", "matching", "other"),
    [
        ("{r}.*.price", ["{r}.eur.price"], ["{r}.eur.usd.price", "{r}.price"]),
        ("{r}.#", ["{r}", "{r}.a", "{r}.a.b.c"], ["x{r}.a"]),
        ("{r}.#.end", ["{r}.end", "{r}.a.end", "{r}.a.b.end"], ["{r}.a.b", "{r}.end.x"]),
        ("#.{r}", ["{r}", "a.{r}", "a.b.{r}"], ["{r}.a"]),
    ],
)
def test_topic_patterns_match_like_amqp(  # type: ignore[no-untyped-def]
    server: str, connect, pattern: str, matching: list[str], other: list[str]
) -> None:
    root = "qkstomp" + uuid.uuid4().hex[:8]
    subscriber, publisher = connect(), connect()
    sub = subscriber.subscribe(pattern.format(r=root))
    topics = [t.format(r=root) for t in other + matching]
    for topic in topics:
        publisher.broadcast(topic, topic.encode(), {})
    got = []
    while (delivery := subscriber.receive(sub, 1.0)) is not None:
        got.append(delivery.body.decode())
        subscriber.ack(delivery)
    assert sorted(got) == sorted(t.format(r=root) for t in matching)
    subscriber.unsubscribe(sub)
    subscriber.unsubscribe(sub)  # idempotent


# -- connections ----------------------------------------------------------------------


def test_failover_skips_a_dead_host(server: str) -> None:
    _, port = SERVERS[server]
    transport = open_transport(f"stomp://guest:guest@127.0.0.1:1,127.0.0.1:{port}")
    try:
        queue = fresh("failover")
        transport.send(queue, b"x", {})
        assert take(transport, queue).body == b"x"
    finally:
        transport.close()


def test_no_server_is_connection_lost() -> None:
    with pytest.raises(ConnectionLost):
        open_transport("stomp://guest:guest@127.0.0.1:1,127.0.0.1:2?connect_timeout=1")


def test_bad_login_is_not_recoverable(server: str) -> None:
    _, port = SERVERS[server]
    if server == "activemq":
        pytest.skip("ActiveMQ here has no authentication plugin: every login is accepted")
    with pytest.raises(TransportError) as caught:
        open_transport(f"stomp://guest:wrong@127.0.0.1:{port}")
    assert not isinstance(caught.value, ConnectionLost)
    assert "wrong" not in str(caught.value)


def _drop_connections(server: str, transport: Transport) -> None:
    """Make the server side drop this transport's socket, as a broker restart would."""
    session = transport._session  # type: ignore[attr-defined]
    session.conn.transport.socket.shutdown(2)


def test_reconnects_and_resubscribes_after_the_link_drops(server: str, connect) -> None:  # type: ignore[no-untyped-def]
    transport, producer = connect(), connect()
    queue = fresh("relink")
    sub = transport.subscribe("qkstomp" + uuid.uuid4().hex[:8])
    assert transport.receive(queue, 0.05) is None  # subscribed to the queue too
    _drop_connections(server, transport)
    wait_until(lambda: not transport._session.alive, what="the drop to be noticed")  # type: ignore[attr-defined]
    producer.send(queue, b"after", {})
    delivery = take(transport, queue, timeout=20)
    assert delivery.body == b"after"
    transport.ack(delivery)
    assert transport.receive(sub, 0.05) is None  # the topic subscription came back too


@pytest.mark.skipif(
    not os.environ.get("QUEUEKIT_STOMP_RESTART"),
    reason="restarts the shared brokers: set QUEUEKIT_STOMP_RESTART=1",
)
def test_survives_a_server_restart_with_durable_messages(server: str, connect) -> None:  # type: ignore[no-untyped-def]
    transport = connect()
    queue = fresh("restart")
    transport.send(queue, b"durable", {})
    name, _ = SERVERS[server]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([os.path.join(root, "scripts", "brokers"), "restart", name], check=True)
    delivery = take(transport, queue, timeout=60)
    assert delivery.body == b"durable"
    transport.ack(delivery)
    transport.send(queue, b"after restart", {})
    assert take(transport, queue).body == b"after restart"


def _listener_pid(port: int) -> int | None:
    import psutil

    for connection in psutil.net_connections(kind="tcp"):
        if connection.laddr and connection.laddr.port == port and connection.status == "LISTEN":
            return connection.pid
    return None


def test_a_silent_server_is_noticed_by_heart_beats() -> None:
    # Given a connection with 500 ms heart-beats to the ActiveMQ this project runs
    name, port = SERVERS["activemq"]
    require_broker(name, "127.0.0.1", port)
    pid = _listener_pid(port)
    assert pid is not None, "no process owns the ActiveMQ port"
    transport = open_transport(url_for("activemq", heartbeat="500"))
    queue = fresh("heartbeat")
    try:
        transport.send(queue, b"before", {})
        # When the server process stops answering (paused, its socket stays open)
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_until(
                lambda: not transport._session.alive,  # type: ignore[attr-defined]
                timeout=15,
                what="the heart-beat timeout",
            )
        finally:
            os.kill(pid, signal.SIGCONT)
        # Then the next operation reconnects and the message is still there
        delivery = take(transport, queue, timeout=30)
        assert delivery.body == b"before"
        transport.ack(delivery)
    finally:
        transport.close()


def test_activemq_delays_survive_a_broker_restart() -> None:
    # Given a message ActiveMQ's scheduler holds for later
    name, port = SERVERS["activemq"]
    require_broker(name, "127.0.0.1", port)
    transport = open_transport(url_for("activemq"))
    queue = fresh("delay-restart")
    try:
        due = time.time() + 4
        transport.send(queue, b"scheduled", {}, options=SendOptions(not_before=due))
        # When the broker restarts before it is due (the script this project runs it with)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        subprocess.run([os.path.join(root, "scripts", "brokers"), "restart", name], check=True)
        # Then it is still delivered, and not early
        delivery = take(transport, queue, timeout=60)
        assert delivery.body == b"scheduled"
        assert time.time() >= due - 0.05
        transport.ack(delivery)
    finally:
        transport.close()


def test_a_refused_send_fails_at_once_with_a_hint(server: str, connect) -> None:  # type: ignore[no-untyped-def]
    if server != "rabbitmq":
        pytest.skip("needs RabbitMQ's queue arguments to disagree")
    # Given a queue declared without x-max-priority
    queue = fresh("args")
    connect(priority="0").send(queue, b"plain", {})
    # When a transport that declares priority queues sends to it
    with pytest.raises(TransportError) as caught:
        connect().send(queue, b"x", {})
    # Then the server's refusal surfaces, is not retried as a lost connection, and says why
    assert not isinstance(caught.value, ConnectionLost)
    assert "x-max-priority" in str(caught.value) and "priority=0" in str(caught.value)
