"""The zmq:// adapter against a real routing device (a separate process per test module).

Each semantic the adapter declares is proven here, and so is each loss it documents
(a killed worker loses its prefetch; a device restart loses what it held).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator

import pytest

from queuekit.adapters.zmq import ZeroMQTransport
from queuekit.adapters.zmq.transport import subscription_prefix
from queuekit.spi.errors import ConnectionLost, MessageTooLarge, TransportClosed, Unsupported
from queuekit.spi.registry import open_transport
from queuekit.spi.topics import topic_matches
from queuekit.spi.transport import Delivery, Outgoing, SendOptions
from queuekit.spi.urls import TransportURL
from tests.support import port_open, require_broker, wait_until

pytest.importorskip("zmq")


def free_port_triple() -> int:
    """A port P with P, P+1 and P+2 bindable on loopback, below the ephemeral range (where
    outgoing connections take their local ports)."""
    for _ in range(200):
        base = random.randrange(20_000, 30_000)
        try:
            with socket.socket() as a, socket.socket() as b, socket.socket() as c:
                for offset, sock in enumerate((a, b, c)):
                    sock.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base
    raise RuntimeError("no three free consecutive ports")


class DeviceProcess:
    """The routing device in its own process, as `worker zmq-proxy` runs it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.port = TransportURL.parse(url).host.port or 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "queuekit.adapters.zmq.proxy", self.url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(
            lambda: all(port_open("127.0.0.1", self.port + i, 0.1) for i in range(3)),
            what=f"zmq device on {self.url}",
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


@pytest.fixture(scope="module")
def device() -> Iterator[DeviceProcess]:
    proc = DeviceProcess(f"zmq://127.0.0.1:{free_port_triple()}")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def open_zmq(device: DeviceProcess) -> Iterator[object]:
    opened: list[ZeroMQTransport] = []

    def make(query: str = "", prefetch: int = 16) -> ZeroMQTransport:
        url = device.url + (f"?{query}" if query else "")
        transport = ZeroMQTransport(TransportURL.parse(url), prefetch=prefetch)
        opened.append(transport)
        return transport

    yield make
    for transport in opened:
        transport.close()


def qname() -> str:
    return f"test-{uuid.uuid4().hex}"


def next_body(transport: ZeroMQTransport, queue: str, timeout: float) -> bytes | None:
    delivery = transport.receive(queue, timeout)
    if delivery is None:
        return None
    transport.ack(delivery)
    return delivery.body


def receive_all(transport: ZeroMQTransport, queue: str, n: int) -> list[Delivery]:
    got: list[Delivery] = []
    while len(got) < n:
        delivery = transport.receive(queue, 10.0)
        assert delivery is not None, f"only {len(got)} of {n} arrived"
        transport.ack(delivery)
        got.append(delivery)
    return got


# -- point to point ------------------------------------------------------------------------


def test_round_trip_keeps_body_bytes_and_headers(open_zmq) -> None:  # type: ignore[no-untyped-def]
    producer, worker, queue = open_zmq(), open_zmq(), qname()
    body = bytes(range(256)) * 4
    producer.send(queue, body, {"trace": "abc", "ünï": "cödé"})
    delivery = worker.receive(queue, 10.0)
    assert delivery is not None
    assert (delivery.queue, delivery.body) == (queue, body)
    assert delivery.headers == {"trace": "abc", "ünï": "cödé"}
    assert (delivery.redelivered, delivery.delivery_count) == (False, 1)
    worker.ack(delivery)
    assert worker.receive(queue, 0.2) is None


def test_open_transport_finds_the_adapter_by_scheme(device: DeviceProcess) -> None:
    transport = open_transport(device.url)
    try:
        assert isinstance(transport, ZeroMQTransport)
        assert transport.capabilities.max_message_size == 4 * 1024 * 1024
        assert set(transport.capabilities.reasons) >= {"durable", "redelivery", "inspect"}
    finally:
        transport.close()


def test_work_for_one_queue_never_reaches_a_worker_of_another(open_zmq) -> None:  # type: ignore[no-untyped-def]
    producer, worker_a, worker_b = open_zmq(), open_zmq(), open_zmq()
    queue_a, queue_b = qname(), qname()
    for i in range(50):
        producer.send(queue_a, f"a{i}".encode(), {})
        producer.send(queue_b, f"b{i}".encode(), {})
    got_a = receive_all(worker_a, queue_a, 50)
    got_b = receive_all(worker_b, queue_b, 50)
    assert all(d.body.startswith(b"a") for d in got_a)
    assert all(d.body.startswith(b"b") for d in got_b)
    assert worker_a.receive(queue_a, 0.2) is None


def test_work_sent_before_any_worker_exists_waits_for_one(open_zmq) -> None:  # type: ignore[no-untyped-def]
    producer, queue = open_zmq(), qname()
    producer.send_many(queue, [Outgoing(str(i).encode()) for i in range(30)])
    producer.close()
    worker = open_zmq()
    assert sorted(int(d.body) for d in receive_all(worker, queue, 30)) == list(range(30))


def test_one_producer_one_consumer_keeps_order(open_zmq) -> None:  # type: ignore[no-untyped-def]
    producer, worker, queue = open_zmq(), open_zmq(prefetch=64), qname()
    for i in range(500):
        producer.send(queue, str(i).encode(), {})
    producer.send_many(queue, [Outgoing(str(i).encode()) for i in range(500, 3000)])
    assert [int(d.body) for d in receive_all(worker, queue, 3000)] == list(range(3000))


def test_competing_consumers_each_get_a_message_exactly_once(open_zmq) -> None:  # type: ignore[no-untyped-def]
    queue, total = qname(), 2000
    workers = [open_zmq(prefetch=8) for _ in range(3)]
    seen: list[list[bytes]] = [[] for _ in workers]
    done = threading.Event()

    def consume(index: int) -> None:
        while not done.is_set():
            delivery = workers[index].receive(queue, 0.2)
            if delivery is not None:
                seen[index].append(delivery.body)
                workers[index].ack(delivery)

    # Given three workers already waiting on the queue
    threads = [threading.Thread(target=consume, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    try:
        for worker in workers:  # each has announced its window once it polls
            wait_until(lambda w=worker: queue in w._inboxes, what="worker polling")  # type: ignore[misc]
        # When messages are sent
        open_zmq().send_many(queue, [Outgoing(str(i).encode()) for i in range(total)])
        wait_until(lambda: sum(map(len, seen)) >= total, what="all messages consumed")
    finally:
        done.set()
        for thread in threads:
            thread.join()
    # Then every message was received once, and the work was shared
    everything = [body for bodies in seen for body in bodies]
    assert sorted(everything) == sorted(str(i).encode() for i in range(total))
    assert all(bodies for bodies in seen)


def test_a_worker_never_holds_more_than_its_prefetch(open_zmq) -> None:  # type: ignore[no-untyped-def]
    # Given 100 messages and a first worker with prefetch 5 holding one in hand
    producer, queue = open_zmq(), qname()
    producer.send_many(queue, [Outgoing(str(i).encode()) for i in range(100)])
    slow = open_zmq(prefetch=5)
    assert slow.receive(queue, 10.0) is not None
    # When a second worker drains the queue
    fast = open_zmq(prefetch=5)
    got: list[bytes] = []
    while (delivery := fast.receive(queue, 1.0)) is not None:
        got.append(delivery.body)
        fast.ack(delivery)
    # Then the first one was sent at most its window (one in hand plus five more)
    assert 94 <= len(got) <= 99


def test_concurrent_senders_share_one_transport(open_zmq) -> None:  # type: ignore[no-untyped-def]
    producer, worker, queue = open_zmq(), open_zmq(prefetch=100), qname()

    def send(prefix: str) -> None:
        for i in range(250):
            producer.send(queue, f"{prefix}{i}".encode(), {})

    threads = [threading.Thread(target=send, args=(p,)) for p in "abcd"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    bodies = {d.body for d in receive_all(worker, queue, 1000)}
    assert bodies == {f"{p}{i}".encode() for p in "abcd" for i in range(250)}


def test_nack_requeue_puts_the_message_back_with_a_delivery_count(open_zmq) -> None:  # type: ignore[no-untyped-def]
    producer, worker, other, queue = open_zmq(), open_zmq(), open_zmq(), qname()
    producer.send(queue, b"again", {"h": "v"})
    first = worker.receive(queue, 10.0)
    assert first is not None
    worker.nack(first, requeue=True)
    worker.nack(first, requeue=True)  # settling twice is a no-op
    worker.close()  # the requeued copy goes to any worker
    second = other.receive(queue, 10.0)
    assert second is not None
    assert (second.body, second.headers) == (b"again", {"h": "v"})
    assert (second.redelivered, second.delivery_count) == (True, 2)
    other.nack(second, requeue=False)
    assert other.receive(queue, 0.3) is None


def test_close_returns_prefetched_and_unsettled_work_to_the_device(open_zmq) -> None:  # type: ignore[no-untyped-def]
    producer, queue = open_zmq(), qname()
    producer.send_many(queue, [Outgoing(str(i).encode()) for i in range(100)])
    greedy = open_zmq(prefetch=50)
    in_hand = greedy.receive(queue, 10.0)
    assert in_hand is not None
    wait_until(lambda: len(greedy._inboxes[queue].items) > 0 or greedy.receive(queue, 0) is None)
    greedy.close()  # one handed out and never settled, the rest prefetched
    later = receive_all(open_zmq(), queue, 100)
    assert sorted(int(d.body) for d in later) == list(range(100))
    assert [d.delivery_count for d in later if d.body == in_hand.body] == [2]


def test_a_killed_worker_loses_at_most_its_prefetch(device: DeviceProcess, open_zmq) -> None:  # type: ignore[no-untyped-def]
    # Given 200 messages and a worker process with prefetch 20 that takes one and is killed
    queue, prefetch = qname(), 20
    open_zmq().send_many(queue, [Outgoing(str(i).encode()) for i in range(200)])
    code = textwrap.dedent(
        f"""
        import os, signal, sys
        from queuekit.adapters.zmq import ZeroMQTransport
        from queuekit.spi.urls import TransportURL
        t = ZeroMQTransport(TransportURL.parse({device.url!r}), prefetch={prefetch})
        d = t.receive({queue!r}, 10.0)
        sys.stdout.write("got\\n"); sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    victim = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
    assert victim.returncode == -signal.SIGKILL and victim.stdout == b"got\n"
    # When another worker drains the queue
    survivor = open_zmq()
    rest: list[bytes] = []
    while (delivery := survivor.receive(queue, 1.0)) is not None:
        rest.append(delivery.body)
        survivor.ack(delivery)
    # Then what the killed worker held is gone (at most once), but no more than its window
    lost = 200 - len(rest)
    assert 1 <= lost <= prefetch + 1
    assert len(set(rest)) == len(rest)


def test_a_worker_finds_a_restarted_device(open_zmq) -> None:  # type: ignore[no-untyped-def]
    own = DeviceProcess(f"zmq://127.0.0.1:{free_port_triple()}")
    own.start()
    producer = ZeroMQTransport(TransportURL.parse(own.url))
    worker = ZeroMQTransport(TransportURL.parse(own.url), prefetch=4)
    queue = qname()
    try:
        producer.send(queue, b"before", {})
        assert next_body(worker, queue, 10.0) == b"before"
        # When the device restarts
        own.stop()
        own.start()
        # Then new work flows to the same worker (it re-announces its window)
        producer.send(queue, b"after", {})
        assert next_body(worker, queue, 15.0) == b"after"
    finally:
        producer.close()
        worker.close()
        own.stop()


# -- fan-out -------------------------------------------------------------------------------


def test_broadcast_right_after_subscribe_reaches_every_subscriber(open_zmq) -> None:  # type: ignore[no-untyped-def]
    publisher = open_zmq()
    for round_ in range(5):
        topic = f"news.{uuid.uuid4().hex}"
        a, b = open_zmq(), open_zmq()
        sub_a, sub_b = a.subscribe(topic), b.subscribe(topic)
        publisher.broadcast(topic, f"r{round_}".encode(), {"k": "v"})
        for transport, sub in ((a, sub_a), (b, sub_b)):
            delivery = transport.receive(sub, 10.0)
            assert delivery is not None and delivery.body == f"r{round_}".encode()
            assert delivery.headers == {"k": "v"}
            transport.ack(delivery)


def test_topic_patterns_filter_words(open_zmq) -> None:  # type: ignore[no-untyped-def]
    root = f"t{uuid.uuid4().hex}"
    consumer, publisher = open_zmq(), open_zmq()
    subs = {p: consumer.subscribe(p.replace("R", root)) for p in ("R.*", "R.#", "R.a", "R.*.c")}
    topics = ["R", "R.a", "R.ab", "R.a.c", "R.b.c", "R.a.b.c", "Rx.a"]
    for topic in topics:
        publisher.broadcast(topic.replace("R", root), topic.encode(), {})
    # A sentinel per pattern, sent last by the same publisher, so order says "nothing more".
    for pattern in subs:
        sentinel = pattern.replace("R", root).replace("*", "end").replace("#", "end")
        publisher.broadcast(sentinel, b"end", {})
    expected = {p: [t for t in topics if topic_matches(p, t)] for p in subs}
    for pattern, sub in subs.items():
        got: list[str] = []
        while (delivery := consumer.receive(sub, 10.0)) is not None and delivery.body != b"end":
            got.append(delivery.body.decode())
        assert delivery is not None, f"{pattern}: no sentinel"
        assert got == expected[pattern], pattern


def test_unsubscribe_ends_a_subscription(open_zmq) -> None:  # type: ignore[no-untyped-def]
    consumer, publisher, topic = open_zmq(), open_zmq(), f"u.{uuid.uuid4().hex}"
    keep, drop = consumer.subscribe(topic), consumer.subscribe(topic)
    consumer.unsubscribe(drop)
    consumer.unsubscribe(drop)
    publisher.broadcast(topic, b"x", {})
    assert next_body(consumer, keep, 10.0) == b"x"


def test_subscription_prefixes() -> None:
    assert subscription_prefix("a.b") == b"a.b\0"
    assert subscription_prefix("a.*.c") == b"a."
    assert subscription_prefix("a.#") == b"a"
    assert subscription_prefix("#") == b""
    assert subscription_prefix("*.b") == b""


# -- limits, options, close -----------------------------------------------------------------


def test_message_larger_than_the_limit_is_refused_at_send() -> None:
    own = DeviceProcess(f"zmq://127.0.0.1:{free_port_triple()}?max_message_size=1000")
    own.start()
    url = TransportURL.parse(own.url)
    producer, worker = ZeroMQTransport(url), ZeroMQTransport(url)
    queue = qname()
    try:
        assert producer.capabilities.max_message_size == 1000
        with pytest.raises(MessageTooLarge):
            producer.send(queue, b"x" * 1001, {})
        with pytest.raises(MessageTooLarge):
            producer.send_many(queue, [Outgoing(b"ok"), Outgoing(b"x" * 1001)])
        producer.send(queue, b"y" * 1000, {})
        assert next_body(worker, queue, 10.0) == b"y" * 1000
    finally:
        producer.close()
        worker.close()
        own.stop()


def test_send_many_splits_batches_to_fit_the_frame_limit() -> None:
    # Given a device and clients whose frames may hold about 66 KiB (1000 + 64 KiB)
    own = DeviceProcess(f"zmq://127.0.0.1:{free_port_triple()}?max_message_size=1000")
    own.start()
    url = TransportURL.parse(own.url)
    producer, worker, queue = ZeroMQTransport(url), ZeroMQTransport(url, prefetch=50), qname()
    try:
        # When one send_many carries 300 KB (a single frame would exceed the limit, and
        # ZeroMQ would drop the producer's connection instead of delivering it)
        bodies = [str(i).encode().ljust(1000, b".") for i in range(300)]
        producer.send_many(queue, [Outgoing(body) for body in bodies])
        # Then every message arrives, in order
        assert [d.body for d in receive_all(worker, queue, 300)] == bodies
    finally:
        producer.close()
        worker.close()
        own.stop()


def test_undeclared_options_are_refused(open_zmq) -> None:  # type: ignore[no-untyped-def]
    transport = open_zmq()
    for options in (
        SendOptions(not_before=1.0),
        SendOptions(priority=5),
        SendOptions(dedup_key="k"),
    ):
        with pytest.raises(Unsupported):
            transport.send(qname(), b"x", {}, options=options)


def test_calls_after_close_raise_and_close_is_idempotent(open_zmq) -> None:  # type: ignore[no-untyped-def]
    producer, worker, queue = open_zmq(), open_zmq(), qname()
    producer.send(queue, b"x", {})
    delivery = worker.receive(queue, 10.0)
    assert delivery is not None
    worker.ack(delivery)
    worker.close()
    worker.close()
    with pytest.raises(TransportClosed):
        worker.receive(queue, 0.1)
    with pytest.raises(TransportClosed):
        worker.send(queue, b"x", {})
    with pytest.raises(TransportClosed):
        worker.ack(delivery)


def test_close_from_another_thread_wakes_a_blocked_receive(open_zmq) -> None:  # type: ignore[no-untyped-def]
    worker, queue = open_zmq(), qname()
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(worker.receive(queue, 120.0)))
    thread.start()
    wait_until(lambda: queue in worker._inboxes, what="receive blocked")
    worker.close()
    thread.join(timeout=30)
    assert not thread.is_alive() and result == [None]


def test_without_a_device_close_returns_and_send_times_out() -> None:
    url = f"zmq://127.0.0.1:{free_port_triple()}?linger=100&send_timeout=0.2&hwm=10&subscribe_timeout=0.3"
    transport = ZeroMQTransport(TransportURL.parse(url))
    closer: threading.Thread | None = None
    try:
        with pytest.raises(ConnectionLost):
            for _ in range(100):  # fills the high-water mark, then send gives up
                transport.send(qname(), b"x", {})
        with pytest.raises(ConnectionLost):
            transport.subscribe("a.b")
        assert transport.receive(qname(), 0.1) is None
    finally:
        closer = threading.Thread(target=transport.close)
        closer.start()
        closer.join(timeout=30)
    assert not closer.is_alive()


def test_the_shared_device_from_the_broker_script_answers() -> None:
    require_broker("zmq", "127.0.0.1", int(os.environ.get("QUEUEKIT_ZMQ_PORT", "5560")))
    url = TransportURL.parse(f"zmq://127.0.0.1:{os.environ.get('QUEUEKIT_ZMQ_PORT', '5560')}")
    producer, worker, queue = ZeroMQTransport(url), ZeroMQTransport(url), qname()
    try:
        producer.send(queue, b"hello", {})
        assert next_body(worker, queue, 10.0) == b"hello"
    finally:
        producer.close()
        worker.close()


# -- the core on top, the device's own behaviour --------------------------------------------


def test_dispatch_failures_reach_the_failed_store(device: DeviceProcess, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from queuekit import PermanentError, connect

    queue = qname()
    conn = connect(device.url, jobstore=f"sqlite:///{tmp_path}/jobs.db")
    try:
        q = conn.queue(queue)
        q.publish_many([{"n": 1}, {"n": 2}, {"n": 3}])
        done: list[int] = []

        def work(message):  # type: ignore[no-untyped-def]
            if message.payload["n"] == 2:
                raise PermanentError("two is bad")
            done.append(message.payload["n"])

        assert q.dispatch(work, max_messages=3, handle_signals=False) == 3
        assert sorted(done) == [1, 3]
        failed = conn.failed.list(queue=queue)
        assert [f.reason for f in failed] == ["permanent error: two is bad"]
    finally:
        conn.close()


def test_delete_drops_what_waits_in_the_device(open_zmq) -> None:  # type: ignore[no-untyped-def]
    producer, queue = open_zmq(), qname()
    producer.send_many(queue, [Outgoing(b"old")] * 10)
    producer.delete(queue)
    producer.send(queue, b"new", {})
    worker = open_zmq()
    assert next_body(worker, queue, 10.0) == b"new"
    assert worker.receive(queue, 0.3) is None


def test_a_full_device_pushes_back_instead_of_dropping() -> None:
    own = DeviceProcess(f"zmq://127.0.0.1:{free_port_triple()}")
    own.process = subprocess.Popen(
        [sys.executable, "-m", "queuekit.adapters.zmq.proxy", own.url, "--max-buffered", "50"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: port_open("127.0.0.1", own.port + 2, 0.1), what="device")
    url = TransportURL.parse(f"{own.url}?hwm=20&send_timeout=0.5")
    producer, worker, queue = ZeroMQTransport(url), ZeroMQTransport(url), qname()
    sent = 0
    try:
        # Given a device that holds at most 50 messages and no worker
        # When a producer sends large messages (so socket buffers fill up soon)
        pad = b" " * 65536
        with pytest.raises(ConnectionLost):
            for i in range(20_000):
                producer.send(queue, str(i).encode() + pad, {})
                sent += 1
        # Then send pushed back, and every message it accepted is delivered, in order
        bodies = [int(d.body) for d in receive_all(worker, queue, sent)]
        assert bodies == list(range(sent))
    finally:
        producer.close()
        worker.close()
        own.stop()


def test_serve_runs_in_a_thread_until_stopped() -> None:
    from queuekit.adapters.zmq.proxy import serve

    url = f"zmq://127.0.0.1:{free_port_triple()}"
    ready, stop, result = threading.Event(), threading.Event(), []
    thread = threading.Thread(target=lambda: result.append(serve(url, ready=ready.set, stop=stop)))
    thread.start()
    try:
        assert ready.wait(10)
        assert serve(url) == 1  # the ports are taken: reported, not raised
        parsed, queue = TransportURL.parse(url), qname()
        producer, worker = ZeroMQTransport(parsed), ZeroMQTransport(parsed)
        producer.send(queue, b"via serve()", {})
        assert next_body(worker, queue, 10.0) == b"via serve()"
        producer.close()
        worker.close()
    finally:
        stop.set()
        thread.join(timeout=30)
    assert result == [0]


def test_the_device_survives_malformed_input(device: DeviceProcess, open_zmq) -> None:  # type: ignore[no-untyped-def]
    import zmq

    from queuekit.adapters.zmq.wire import SEND, make_head, pack_index

    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    dealer = ctx.socket(zmq.DEALER)
    try:
        push.connect(f"tcp://127.0.0.1:{device.port}")
        dealer.connect(f"tcp://127.0.0.1:{device.port + 1}")
        push.send(b"junk")
        push.send_multipart([make_head(SEND, 3, b"q"), b"only one frame"])
        push.send_multipart([b"\xff" * 9, b"", b""])
        dealer.send_multipart([b"W", b"not", b"numbers"])
        producer, worker, queue = open_zmq(), open_zmq(), qname()
        push.send_multipart([make_head(SEND, 2, queue.encode()), b"abc", b"index is not"])
        push.send_multipart([make_head(SEND, 2, queue.encode()), pack_index([9]), b"short"])
        producer.send(queue, b"still routing", {})
        assert next_body(worker, queue, 10.0) == b"still routing"
        assert worker.receive(queue, 0.2) is None
    finally:
        push.close(linger=0)
        dealer.close(linger=0)
        ctx.term()


def test_garbage_records_still_count_against_the_credit(device: DeviceProcess, open_zmq) -> None:  # type: ignore[no-untyped-def]
    import zmq

    from queuekit.adapters.zmq.wire import SEND, make_head, pack_index

    # Given a worker with prefetch 2, and a raw producer that sends two batches whose index
    # matches their length but whose records are garbage (two "records" each)
    worker, queue = open_zmq(prefetch=2), qname()
    assert worker.receive(queue, 0.1) is None  # announces its window
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    try:
        push.connect(f"tcp://127.0.0.1:{device.port}")
        for _ in range(2):
            push.send_multipart(
                [make_head(SEND, 2, queue.encode()), pack_index([5, 10]), b"\xff" * 10]
            )
        # When real work follows
        open_zmq().send_many(queue, [Outgoing(b"real-%d" % i) for i in range(5)])
        # Then the garbage is dropped, and the window it took is given back: all work arrives
        assert [d.body for d in receive_all(worker, queue, 5)] == [b"real-%d" % i for i in range(5)]
        assert worker.receive(queue, 0.2) is None
    finally:
        push.close(linger=0)
        ctx.term()
