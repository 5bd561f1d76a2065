"""The xmpp:// adapter against real Prosody and ejabberd (scripts/brokers up prosody ejabberd).

The conformance suite proves the declared capabilities; these tests pin what is specific to
XMPP pub/sub: the URL's TLS opt-in, the payload codec, the full-node refusal, take marks,
fan-out, the event bridge seen by a plain XMPP client, clean shutdown and reconnecting.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from queuekit import connect
from queuekit.features.registry import Registration
from queuekit.spi.errors import (
    ConfigurationError,
    ConnectionLost,
    TransportError,
    Unsupported,
)
from queuekit.spi.transport import Outgoing
from queuekit.spi.urls import TransportURL
from tests.support import require_broker, wait_until

pytest.importorskip("slixmpp")
from queuekit.adapters.xmpp import QueueFull, XMPPSettings, XMPPTransport
from queuekit.adapters.xmpp.settings import decode_payload, encode_payload
from queuekit.adapters.xmpp.stanzas import read_config

ROOT = Path(__file__).resolve().parent.parent
#: Each server scripts/brokers starts, and its port (tests/test_tls.py covers their STARTTLS).
SERVERS = {
    "prosody": int(os.environ.get("QUEUEKIT_PROSODY_PORT", "5222")),
    "ejabberd": int(os.environ.get("QUEUEKIT_EJABBERD_PORT", "5322")),
}
BASE = "xmpp://queuekit:queuekit@127.0.0.1:5222/?domain=localhost&pubsub=pubsub.localhost"
URL = BASE + "&tls=off&allow_plaintext=1"


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Opened(list[XMPPTransport]):
    """The transports a test opened on one server (closed after it), and that server."""

    def __init__(self, server: str) -> None:
        super().__init__()
        self.server = server
        self.port = SERVERS[server]
        self.url = URL.replace(":5222/", f":{self.port}/")


@pytest.fixture(params=sorted(SERVERS))
def opened(request: pytest.FixtureRequest) -> Iterator[Opened]:
    transports = Opened(request.param)
    require_broker(transports.server, "127.0.0.1", transports.port)
    yield transports
    for transport in transports:
        transport.close()


def open_transport(opened: Opened, url: str | None = None, **kw: Any) -> XMPPTransport:
    transport = XMPPTransport(TransportURL.parse(url or opened.url), **kw)
    opened.append(transport)
    return transport


# -- no broker needed -----------------------------------------------------------------------


def test_a_dropped_stream_fails_every_outstanding_iq_tasks_included() -> None:
    """slixmpp hands back futures and the adapter wraps coroutines in Tasks: both kinds
    must end in ConnectionLost when the stream drops, or their callers wait for ever."""
    from queuekit.adapters.xmpp.connection import Connection

    async def scenario() -> list[str]:
        connection = Connection(XMPPSettings.from_url(TransportURL.parse(URL)),
                                restore=asyncio.sleep, notifications={})  # fmt: skip
        client = connection.client = object()
        connection.connected = True
        plain: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        never = asyncio.Event()
        waiting = [asyncio.ensure_future(connection.iq(never.wait())),
                   asyncio.ensure_future(connection.iq(plain))]  # fmt: skip
        await asyncio.sleep(0)  # both registered
        connection._on_disconnected(client)
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        return [type(o).__name__ for o in outcomes]

    assert asyncio.run(scenario()) == ["ConnectionLost", "ConnectionLost"]


def test_tls_is_required_unless_plaintext_is_opted_in() -> None:
    settings = XMPPSettings.from_url(TransportURL.parse(BASE))
    assert settings.tls and not settings.allow_plaintext
    with pytest.raises(ConfigurationError, match="allow_plaintext=1"):
        XMPPSettings.from_url(TransportURL.parse(BASE + "&tls=off"))
    plain = XMPPSettings.from_url(TransportURL.parse(URL))
    assert not plain.tls and plain.allow_plaintext


def test_url_names_the_jid_service_and_defaults() -> None:
    s = XMPPSettings.from_url(TransportURL.parse("xmpp://bot:pw@xmpp.example.org"))
    assert (s.jid, s.host, s.port, s.pubsub) == (
        "bot@xmpp.example.org",
        "xmpp.example.org",
        5222,
        "pubsub.xmpp.example.org",
    )
    s = XMPPSettings.from_url(TransportURL.parse("xmpp://bot%40example.org:pw@10.0.0.5:5223"))
    assert (s.jid, s.host, s.port, s.pubsub) == (
        "bot@example.org",
        "10.0.0.5",
        5223,
        "pubsub.example.org",
    )
    assert s.queue_node("email") == "queuekit/queue/email"
    assert s.topic_node("user.saved") == "queuekit/topic/user.saved"
    with pytest.raises(ConfigurationError):
        XMPPSettings.from_url(TransportURL.parse("xmpp://127.0.0.1"))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b'{"payload":"x"}',
        "h\u00e9llo \U0001f600".encode(),
        b"a\r\nb",
        b"\x00\xff\x01",
        b"\x0b",
    ],
)
def test_payload_codec_round_trips_bytes_exactly(body: bytes) -> None:
    headers = {"trace": "a<b&c>", "empty": ""}
    from xml.etree import ElementTree as ET

    wire = ET.fromstring(ET.tostring(encode_payload(body, headers)))
    assert decode_payload(wire) == (body, headers)


# -- against Prosody --------------------------------------------------------------------------


def test_send_many_arrives_in_order_and_ack_removes(opened: Opened) -> None:
    producer, consumer = open_transport(opened), open_transport(opened)
    queue = name("order")
    bodies = [f"m{i:04d}".encode() for i in range(300)]
    producer.send_many(queue, [Outgoing(b, {"i": str(i)}) for i, b in enumerate(bodies)])
    assert producer.depth(queue) == 300
    got = []
    while (delivery := consumer.receive(queue, 2.0)) is not None:
        got.append(delivery)
        consumer.ack(delivery)
    assert [d.body for d in got] == bodies
    assert [d.headers["i"] for d in got[:3]] == ["0", "1", "2"]
    assert not any(d.redelivered for d in got)
    assert producer.depth(queue) == 0
    producer.delete(queue)


def test_unacked_items_come_back_marked_to_the_next_consumer(
    opened: Opened,
) -> None:
    producer = open_transport(opened)
    queue = name("redeliver")
    producer.send(queue, b"work", {})
    first = open_transport(opened)
    taken = first.receive(queue, 5.0)
    assert taken is not None and taken.delivery_count == 1 and not taken.redelivered
    # Given the item is taken: depth no longer counts it
    assert producer.depth(queue) == 0
    first.close()  # the consumer goes away without acking
    second = open_transport(opened)
    again = second.receive(queue, 5.0)
    assert again is not None and again.body == b"work"
    assert again.redelivered and again.delivery_count == 2
    second.ack(again)
    assert second.receive(queue, 0.5) is None


def test_marking_ahead_keeps_at_most_prefetch_items_taken(opened: Opened) -> None:
    """The consumer records the next batch as taken while it still works on the current
    one; a consumer that goes away still leaves at most ``prefetch`` unacked items marked,
    each marked once, and acked items never come back."""
    producer = open_transport(opened)
    queue = name("ahead")
    bodies = [f"a{i:03d}".encode() for i in range(100)]
    producer.send_many(queue, [Outgoing(b) for b in bodies])
    first = open_transport(opened, prefetch=8)
    for expected in bodies[:40]:
        delivery = first.receive(queue, 5.0)
        assert delivery is not None and delivery.body == expected
        assert not delivery.redelivered and delivery.delivery_count == 1
        first.ack(delivery)
    first.close()  # waits for its retracts
    second = open_transport(opened, prefetch=8)
    rest = []
    while (delivery := second.receive(queue, 1.0)) is not None:
        rest.append(delivery)
        second.ack(delivery)
    assert [d.body for d in rest] == bodies[40:]
    marked = [d.redelivered for d in rest]
    assert sum(marked) <= 8 and marked == sorted(marked, reverse=True)  # a prefix
    assert all(d.delivery_count == (2 if d.redelivered else 1) for d in rest)
    producer.delete(queue)


def test_a_full_node_is_refused_never_truncated(opened: Opened) -> None:
    transport = open_transport(opened, opened.url + "&max_items=5")
    queue = name("full")
    transport.send_many(queue, [Outgoing(f"{i}".encode()) for i in range(4)])
    transport.send(queue, b"4", {})
    with pytest.raises(QueueFull, match="at most 5"):
        transport.send(queue, b"5", {})
    with pytest.raises(QueueFull):
        transport.send_many(queue, [Outgoing(b"x"), Outgoing(b"y")])
    # Then nothing was dropped: the first item is still there
    consumer = open_transport(opened, opened.url + "&max_items=5", prefetch=1)
    first = consumer.receive(queue, 5.0)
    assert first is not None and first.body == b"0"
    consumer.ack(first)
    consumer.close()  # acks are confirmed in the background; close waits for them
    transport.send(queue, b"5", {})  # room again
    assert transport.depth(queue) == 5
    transport.delete(queue)


def test_fanout_reaches_every_subscriber_only_after_subscribe_returns(
    opened: Opened,
) -> None:
    topic = f"orders.{uuid.uuid4().hex[:8]}"
    a, b, publisher = open_transport(opened), open_transport(opened), open_transport(opened)
    publisher.broadcast(topic, b"before", {})  # nobody subscribed yet: owed to nobody
    sa, sb = a.subscribe(topic), b.subscribe(topic)
    for i in range(20):
        publisher.broadcast(topic, f"e{i}".encode(), {"n": str(i)})
    for transport, sub in ((a, sa), (b, sb)):
        got = [transport.receive(sub, 5.0) for _ in range(20)]
        assert [d.body if d else None for d in got] == [f"e{i}".encode() for i in range(20)]
        assert transport.receive(sub, 0.3) is None
    a.unsubscribe(sa)
    publisher.broadcast(topic, b"after", {})
    last = b.receive(sb, 5.0)
    assert last is not None and last.body == b"after"


def test_wildcard_subscriptions_are_unsupported(opened: Opened) -> None:
    transport = open_transport(opened)
    for pattern in ("orders.*", "#", "a.#.b"):
        with pytest.raises(Unsupported):
            transport.subscribe(pattern)


def test_close_wakes_a_blocked_receive_and_leaves_nothing_behind(
    opened: Opened, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    transport = open_transport(opened)
    queue = name("close")
    result: list[object] = []
    waiter = threading.Thread(target=lambda: result.append(transport.receive(queue, 60.0)))
    waiter.start()
    wait_until(lambda: queue in transport._session.consumers, what="the consumer to start")
    threads_before = {t.name for t in threading.enumerate()}
    transport.close()
    waiter.join(10)
    assert not waiter.is_alive() and result == [None]
    transport.close()  # idempotent
    with pytest.raises(TransportError):
        transport.send(queue, b"x", {})
    gc.collect()
    assert not [
        t
        for t in threading.enumerate()
        if t.name.startswith("queuekit-xmpp-") and t.name in threads_before and t.is_alive()
    ]
    assert not [r for r in caplog.records if "destroyed" in r.getMessage()]


def test_bad_password_and_dead_port_fail_clearly(opened: Opened) -> None:
    bad = opened.url.replace("queuekit:queuekit@", "queuekit:wrong@")
    with pytest.raises(ConfigurationError, match="authentication"):
        XMPPTransport(TransportURL.parse(bad))
    dead = opened.url.replace(f":{opened.port}/", ":1/") + "&timeout=3"
    with pytest.raises(ConnectionLost):
        XMPPTransport(TransportURL.parse(dead))


def test_event_bridge_is_seen_live_by_a_plain_xmpp_client(opened: Opened) -> None:
    from queuekit import EventManager, bridge, connect

    topic = f"service.events.{uuid.uuid4().hex[:8]}"
    seen: list[str] = []
    ready, done = threading.Event(), threading.Event()
    client = threading.Thread(target=_plain_client, args=(opened.port, topic, ready, done, seen))
    conn = connect(opened.url)
    try:
        conn.topic(topic).publish("warm-up")  # creates the node (only admins may, on Prosody)
        client.start()
        try:
            assert ready.wait(15), "the plain client did not subscribe"
            events = EventManager()
            bridge(events, "user.*", conn.topic(topic))
            events.trigger("user.saved", None, email="a@example.com")
            assert done.wait(15), "the plain client saw no notification"
        finally:
            done.set()
            client.join(15)
    finally:
        conn.close()
    assert '"event":"user.saved"' in seen[0] and "a@example.com" in seen[0]


def _plain_client(
    port: int, topic: str, ready: threading.Event, done: threading.Event, seen: list[str]
) -> None:
    """An ordinary slixmpp client (a chat bot, a dashboard) watching the bridge's node."""
    from xml.etree import ElementTree as ET

    import slixmpp

    async def main() -> None:
        client = slixmpp.ClientXMPP("queuekit2@localhost/watcher", "queuekit")
        client.enable_starttls, client.enable_direct_tls, client.enable_plaintext = (
            False,
            False,
            True,
        )
        for plugin in ("xep_0030", "xep_0004", "xep_0060"):
            client.register_plugin(plugin)
        client.plugin["feature_mechanisms"].unencrypted_scram = True
        started = asyncio.Event()
        client.add_event_handler("session_start", lambda _: started.set())

        def on_item(msg: Any) -> None:
            item = msg["pubsub_event"]["items"]["item"]
            seen.append(ET.tostring(item.xml).decode())
            done.set()

        client.add_event_handler("pubsub_publish", on_item)
        client.connect("127.0.0.1", port)
        await asyncio.wait_for(started.wait(), 10)
        node = f"queuekit/topic/{topic}"
        pubsub = client.plugin["xep_0060"]
        await pubsub.subscribe("pubsub.localhost", node, bare=False)
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, done.wait, 15)
        await pubsub.unsubscribe("pubsub.localhost", node, bare=False)
        client.disconnect()
        await client.disconnected

    asyncio.run(main())


def test_next_operation_reconnects_after_a_server_restart(opened: Opened) -> None:
    if os.environ.get("QUEUEKIT_SKIP_RESTART"):
        pytest.skip("QUEUEKIT_SKIP_RESTART is set")
    transport = open_transport(opened)
    queue = name("restart")
    transport.send(queue, b"survives", {})
    subprocess.run([str(ROOT / "scripts/brokers"), "restart", opened.server], check=True)
    got = None
    for _ in range(3):  # the first call may report the lost connection
        try:
            got = transport.receive(queue, 5.0)
            break
        except ConnectionLost:
            continue
    assert got is not None and got.body == b"survives"
    transport.ack(got)
    transport.delete(queue)


def test_a_purge_by_another_connection_drops_what_a_consumer_listed(
    opened: Opened,
) -> None:
    producer = open_transport(opened)
    consumer = open_transport(opened, prefetch=1)
    queue = name("purged")
    producer.send_many(queue, [Outgoing(f"{i}".encode()) for i in range(5)])
    held = consumer.receive(queue, 5.0)  # the consumer has listed all five
    assert held is not None
    consumer.ack(held)
    assert producer.purge(queue) == 4
    assert consumer.receive(queue, 0.5) is None
    producer.send(queue, b"fresh", {})
    fresh = consumer.receive(queue, 5.0)
    assert fresh is not None and fresh.body == b"fresh"
    consumer.ack(fresh)


def test_a_cap_the_config_form_does_not_state_is_found(opened: Opened) -> None:
    """ejabberd does not state max_items_node in the form but refuses more: the adapter
    finds that bound and configures queue nodes to it; Prosody states its bound."""
    transport = open_transport(opened)
    queue = name("cap")
    transport.send(queue, b"x", {})
    state = transport._session.nodes.states[transport.settings.queue_node(queue)]
    env = f"QUEUEKIT_{opened.server.upper()}_MAX_ITEMS"
    assert state.cap == int(os.environ.get(env, "100000"))
    assert state.max_items == ("max" if opened.server == "prosody" else str(state.cap))
    transport.delete(queue)


def test_finding_the_cap_never_reconfigures_the_queue_node() -> None:
    """ejabberd: a fresh connection finds max_items_node by trying values. It tried them on
    the queue node itself, and each accepted guess (1024, 2048, ..., 99968) was that node's
    max_items until the next one: ejabberd dropped the oldest items beyond it at the next
    publish, and a consumer SIGKILLed mid-way (the chaos bench) left the node at a guess.
    The node's owner watches its configuration (XEP-0060 ``notify_config``, which Prosody,
    whose form states the cap so nothing is tried, does not send): a consumer starting on
    the node holding more items than the first guess changes nothing, and loses nothing."""
    opened = Opened("ejabberd")
    require_broker(opened.server, "127.0.0.1", opened.port)
    try:
        producer = open_transport(opened)
        queue = name("probed")
        node = producer.settings.queue_node(queue)
        producer.send_many(queue, [Outgoing(f"{i}".encode()) for i in range(1100)])
        session = producer._session
        seen: list[str] = []  # max_items of each configuration the server announced

        async def watch() -> None:
            client = session.connection.client
            client.add_event_handler(
                "pubsub_config", lambda m: seen.append(read_config(m.xml).max_items)
            )
            await session.nodes._set_config(node, {"pubsub#notify_config": True}, "notify")
            await session.nodes.subscribe(node)

        producer._call(watch())
        consumer = open_transport(opened)  # a fresh connection: it has to find the cap
        first = consumer.receive(queue, 10.0)
        assert first is not None and first.body == b"0"
        assert consumer._session.nodes.service_cap == producer._session.nodes.states[node].cap
        producer.send(queue, b"1100", {})
        assert len(producer._call(session.nodes.item_ids(node))) == 1101
        # Given the watch works: a change of our own is announced (after anything earlier)
        producer._call(session.nodes._set_config(node, {"pubsub#title": "probed"}, "title"))
        wait_until(lambda: len(seen) > 0, 10.0, "the configuration notification")
        assert seen == [producer._session.nodes.states[node].max_items]
        consumer.ack(first)
        producer.delete(queue)
    finally:
        for transport in opened:
            transport.close()


def test_items_acked_while_another_connection_publishes_never_come_back(opened: Opened) -> None:
    """ejabberd keeps a list of item ids per account and node and rewrites it without
    isolation: a producer and a consumer of one account at once left items on the node
    that every retract answers item-not-found for, and every later consumer ran them again
    (469 of 2,001 here). A consumer records such an item as settled in the journal; then
    neither a listing nor ``depth`` counts it. On Prosody every retract removes its item."""
    producer, consumer = open_transport(opened), open_transport(opened)
    queue = name("concurrent")
    total = 1000

    def produce() -> None:
        for start in range(0, total, 50):
            batch = range(start, start + 50)
            producer.send_many(queue, [Outgoing(f"{i}".encode()) for i in batch])

    publishing = threading.Thread(target=produce)
    publishing.start()
    seen: set[bytes] = set()
    while (delivery := consumer.receive(queue, 5.0)) is not None:
        seen.add(delivery.body)
        consumer.ack(delivery)
    publishing.join()
    assert seen == {f"{i}".encode() for i in range(total)}
    consumer.close()  # waits for its acks, and for recording the stuck ones
    assert producer.depth(queue) == 0
    assert producer.purge(queue) == 0  # ejabberd's purge leaves them too: still settled
    later = open_transport(opened)
    assert later.receive(queue, 1.0) is None
    producer.delete(queue)


def test_connections_creating_one_node_at_once_all_succeed(opened: Opened) -> None:
    """A producer and workers starting together create the same queue node at once;
    ejabberd failed one such create with internal-server-error (seen in CI): each must end
    with the node, never that error."""
    transports = [open_transport(opened) for _ in range(6)]
    errors: list[BaseException] = []

    def create(transport: XMPPTransport, queue: str, start: threading.Barrier) -> None:
        start.wait()
        try:
            assert transport.depth(queue) == 0  # creates the node, or finds it
        except BaseException as exc:
            errors.append(exc)

    for _ in range(3):
        queue, start = name("created-together"), threading.Barrier(len(transports), timeout=30)
        threads = [threading.Thread(target=create, args=(t, queue, start)) for t in transports]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        transports[0].delete(queue)


def test_a_deleted_queue_leaves_nothing_for_the_next_node(opened: Opened) -> None:
    """Given a queue deleted with items on it, new queues start empty (ejabberd reuses a
    deleted node's index and showed its leftover items before the adapter retracted them)."""
    producer = open_transport(opened)
    old = name("old")
    producer.send_many(old, [Outgoing(f"{i}".encode()) for i in range(20)])
    producer.delete(old)
    for _ in range(3):
        fresh = name("fresh")
        assert producer.depth(fresh) == 0
        producer.delete(fresh)


def test_a_second_worker_of_a_queue_is_told_each_job_would_run_twice(
    opened: Opened, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a worker of the queue alive in the registry (pub/sub has no competing consumers)
    queue = name("shared")
    with connect(opened.url, jobstore=f"sqlite:///{tmp_path}/jobs.db") as conn:
        first = Registration(conn.broker.jobs, queue, stop=lambda reason: None)
        first.register(lambda: False)
        # When a second one starts
        with caplog.at_level(logging.WARNING, logger="queuekit.worker"):
            conn.queue(queue).dispatch(lambda message: None, max_messages=0,
                                       handle_signals=False)  # fmt: skip
        first.deregister()
    # Then it says so, naming the other worker
    [warning] = [r.getMessage() for r in caplog.records if "competing" in r.getMessage()]
    assert f"pid {os.getpid()}" in warning and "each job runs 2 times" in warning
