"""gearman:// against real gearmand (``scripts/brokers up gearman``).

Two daemons: 4730 with a persistent (libsqlite3) queue, 4731 in memory. Each test uses
fresh queue names, so they share the daemons with whatever else runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from queuekit import Message, Repeat, Unsupported, connect
from queuekit.adapters.gearman import CallFailed, GearmanTransport, frame
from queuekit.adapters.gearman.link import SUBMIT_BG, Link, Refused
from queuekit.features.envelope import decode, encode
from queuekit.features.rpc import REPLY
from queuekit.spi.errors import ConfigurationError, ConnectionLost, TransportClosed
from queuekit.spi.priorities import PriorityBands, PriorityRange
from queuekit.spi.registry import open_transport
from queuekit.spi.transport import Delivery, Outgoing, SendOptions
from tests.support import require_broker, wait_until
from tests.workers.harness import lines, start_worker, stop

HOST = "127.0.0.1"
PERSISTENT, MEMORY = 4730, 4731
ROOT = Path(__file__).resolve().parent.parent

Open = Callable[..., GearmanTransport]


@pytest.fixture
def gearman() -> Iterator[Open]:
    """Opens transports (``port=`` picks the daemon) and closes them after the test."""
    require_broker("gearman", HOST, MEMORY)
    opened: list[GearmanTransport] = []

    def open_(port: int = MEMORY, query: str = "", prefetch: int = 16) -> GearmanTransport:
        url = f"gearman://{HOST}:{port}" + (f"?{query}" if query else "")
        transport = open_transport(url, prefetch=prefetch)
        assert isinstance(transport, GearmanTransport)
        opened.append(transport)
        return transport

    yield open_
    for transport in opened:
        transport.close()


def new_queue(label: str = "q") -> str:
    return f"test-{label}-{uuid.uuid4().hex[:12]}"


def drain(transport: GearmanTransport, queue: str, count: int, timeout: float = 5.0) -> list[bytes]:
    bodies: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(bodies) < count and time.monotonic() < deadline:
        delivery = transport.receive(queue, 0.2)
        if delivery is not None:
            bodies.append(delivery.body)
            transport.ack(delivery)
    return bodies


# -- the wire format, without a server ---------------------------------------------------


@pytest.mark.parametrize(
    ("body", "headers", "level"),
    [
        (b"plain", {}, 0),
        (b"", {}, 0),
        (frame.MAGIC + b"looks framed", {}, 0),
        (b"\x00\xff binary \x00", {"trace": "t-1", "ünï": "cödé"}, 0),
        (b"prio", {}, 2),
    ],
)
def test_job_data_round_trips_every_body_exactly(
    body: bytes, headers: dict[str, str], level: int
) -> None:
    data = frame.encode(body, headers, level)
    decoded = frame.decode(data)
    assert (decoded.body, decoded.headers, decoded.level) == (body, headers, level)


def test_a_plain_message_is_sent_as_its_bare_body_for_other_gearman_clients() -> None:
    assert frame.encode(b"hello", {}, 0) == b"hello"
    assert frame.decode(b"from a php client").body == b"from a php client"


def test_priorities_go_to_their_bands_function_in_ordered_native_thirds() -> None:
    bands = PriorityBands()  # 0-49, 50-99, 100-149, 150-199, 200-255
    placed = [frame.place("q", p, bands) for p in range(256)]
    assert frame.place("q", None, bands) == placed[0] == frame.Placement(b"q", 0)
    assert [p.function for p in placed[48:52]] == [b"q", b"q", b"q#50", b"q#50"]
    assert placed[255] == frame.Placement(b"q#200", 2) and placed[200].native == "LOW"
    order = [(int(p.function.partition(b"#")[2] or 0), p.level) for p in placed]
    assert order == sorted(order) and len(set(order)) == 15
    assert frame.functions("q", bands) == [b"q", b"q#50", b"q#100", b"q#150", b"q#200"]
    assert frame.functions("q", bands, [200, 150]) == [b"q#150", b"q#200"]


def test_long_or_binary_dedup_keys_become_a_short_unique() -> None:
    assert frame.unique_for("k-1") == b"k-1"
    long_key = "x" * 200
    assert len(frame.unique_for(long_key)) <= frame.MAX_UNIQUE
    assert frame.unique_for(long_key) == frame.unique_for(long_key)
    assert frame.unique_for(long_key) != frame.unique_for(long_key + "y")
    assert b"\x00" not in frame.unique_for("a\x00b")


def test_url_without_host_or_with_bad_timeout_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        open_transport("gearman://")
    with pytest.raises(ConfigurationError):
        open_transport(f"gearman://{HOST}:{MEMORY}?timeout=soon")


def test_durable_is_declared_only_when_the_url_says_the_queue_persists() -> None:
    memory = open_transport(f"gearman://{HOST}:{MEMORY}")
    persistent = open_transport(f"gearman://{HOST}:{PERSISTENT}?durable=1")
    try:
        assert not memory.capabilities.durable
        assert "durable" in memory.capabilities.reasons
        assert persistent.capabilities.durable
        for caps in (memory.capabilities, persistent.capabilities):
            assert not (caps.delay or caps.fanout or caps.topics)
            assert caps.redelivery and caps.priority and caps.dedup and caps.inspect
    finally:
        memory.close()
        persistent.close()


# -- against gearmand -------------------------------------------------------------------


def test_send_many_arrives_whole_in_order_with_headers(gearman: Open) -> None:
    queue = new_queue()
    producer, consumer = gearman(), gearman()
    bodies = [f"m{i:03d}".encode() for i in range(50)]
    producer.send_many(queue, [Outgoing(b, {"n": b.decode()}) for b in bodies])
    assert producer.depth(queue) == 50
    got: list[Delivery] = []
    while len(got) < 50:
        delivery = consumer.receive(queue, 5)
        assert delivery is not None
        got.append(delivery)
        consumer.ack(delivery)
    assert [d.body for d in got] == bodies
    assert all(d.headers == {"n": d.body.decode()} for d in got)
    assert consumer.receive(queue, 0.1) is None
    assert producer.depth(queue) == 0


def test_higher_priority_waiting_is_received_first(gearman: Open) -> None:
    queue = new_queue("prio")
    producer = gearman()
    levels = [10, 200, 0, 255, 100, 50, 30, 180, 128, 70, None]
    for level in levels:
        producer.send(queue, str(level).encode(), {}, options=SendOptions(priority=level))
    got = drain(gearman(prefetch=1), queue, len(levels))
    expected = sorted(levels, key=lambda p: -(p or 0))
    assert got == [str(p).encode() for p in expected]


def test_a_range_worker_takes_only_its_bands_and_a_requeue_keeps_the_band(
    gearman: Open,
) -> None:
    # Given jobs in every default band
    queue, producer = new_queue("range"), gearman()
    for priority in (None, 49, 50, 120, 199, 200, 255):
        producer.send(queue, str(priority).encode(), {}, options=SendOptions(priority=priority))
    # When a worker for 50-199 takes what it can, requeueing the first once
    urgent = gearman(prefetch=1)  # grabs one at a time: strict order
    first = urgent.receive_priorities(queue, 5, PriorityRange(50, 199))
    assert first is not None and first.body == b"199"
    urgent.nack(first, requeue=True)
    taken = drain_range(urgent, queue, PriorityRange(50, 199))
    # Then it got its bands' jobs, highest band first, the requeued one again
    assert taken == [b"199", b"120", b"50"]
    assert sorted(drain(gearman(), queue, 4)) == sorted([b"None", b"49", b"200", b"255"])
    with pytest.raises(Unsupported, match="priority_bands=10,50,100"):
        urgent.receive_priorities(queue, 0, PriorityRange(10, 99))


def drain_range(transport: GearmanTransport, queue: str, only: PriorityRange) -> list[bytes]:
    got = []
    while (delivery := transport.receive_priorities(queue, 0.5, only)) is not None:
        got.append(delivery.body)
        transport.ack(delivery)
    return got


def test_same_dedup_key_while_pending_or_running_is_delivered_once(gearman: Open) -> None:
    queue, key = new_queue("dedup"), "order-" + "7" * 80  # long: hashed into the unique
    producer, consumer = gearman(), gearman()
    producer.send(queue, b"first", {}, options=SendOptions(dedup_key=key))
    producer.send(queue, b"second", {}, options=SendOptions(dedup_key=key))
    assert producer.depth(queue) == 1
    delivery = consumer.receive(queue, 5)
    assert delivery is not None and delivery.body == b"first"
    # While it runs, the key still coalesces ...
    producer.send(queue, b"third", {}, options=SendOptions(dedup_key=key))
    consumer.ack(delivery)
    assert consumer.receive(queue, 0.3) is None
    # ... and once it is done the key is free again.
    producer.send(queue, b"fourth", {}, options=SendOptions(dedup_key=key))
    assert drain(consumer, queue, 1) == [b"fourth"]


def test_a_retry_sent_while_holding_the_key_is_not_folded_into_the_original(
    gearman: Open,
) -> None:
    """The core retries by resending (same key) before acking the original."""
    queue, key = new_queue("retry"), "k-" + uuid.uuid4().hex
    worker = gearman()
    worker.send(queue, b"attempt 1", {}, options=SendOptions(dedup_key=key))
    delivery = worker.receive(queue, 5)
    assert delivery is not None
    worker.send(queue, b"attempt 2", {}, options=SendOptions(dedup_key=key))
    worker.ack(delivery)
    assert drain(worker, queue, 1) == [b"attempt 2"]


def test_the_core_retries_a_keyed_message_at_once_without_losing_it(
    gearman: Open, tmp_path: Path
) -> None:
    """The same, through the worker loop: a zero-delay retry is sent before the ack."""
    seen: list[int] = []

    def work(message: Message) -> None:
        seen.append(message.metadata.attempts)
        if len(seen) == 1:
            raise RuntimeError("the first attempt fails")

    with connect(f"gearman://{HOST}:{MEMORY}", jobstore=f"sqlite:///{tmp_path}/j.db") as conn:
        queue = conn.queue(new_queue("core-retry"))
        queue.publish({"n": 1}, key=f"k-{uuid.uuid4().hex}")
        queue.dispatch(
            work,
            retry=Repeat(times=2, every=0),
            max_messages=2,
            max_seconds=20,
            handle_signals=False,
        )
        assert seen == [0, 1]
        assert conn.failed.list() == []


def test_nack_requeue_comes_back_and_nack_drop_is_gone(gearman: Open) -> None:
    queue = new_queue("nack")
    transport = gearman()
    transport.send(queue, b"again", {"h": "1"}, options=SendOptions(priority=200))
    first = transport.receive(queue, 5)
    assert first is not None
    transport.nack(first, requeue=True)
    transport.nack(first, requeue=True)  # settling twice is a no-op
    second = transport.receive(queue, 5)
    assert second is not None and (second.body, second.headers) == (b"again", {"h": "1"})
    transport.nack(second, requeue=False)
    assert transport.receive(queue, 0.3) is None
    assert transport.depth(queue) == 0


def test_close_returns_held_and_prefetched_jobs(gearman: Open) -> None:
    queue = new_queue("close")
    producer = gearman()
    producer.send_many(queue, [Outgoing(f"{i}".encode()) for i in range(5)])
    holder = gearman(prefetch=16)
    held = holder.receive(queue, 5)
    assert held is not None
    assert producer.depth(queue) == 0  # the other four are prefetched by the holder
    holder.close()
    assert sorted(drain(gearman(), queue, 5)) == [b"0", b"1", b"2", b"3", b"4"]


CHILD = """
import sys, time
from queuekit.spi.registry import open_transport
t = open_transport(sys.argv[1], prefetch=1)
d = t.receive(sys.argv[2], 10)
print(d.body.decode() if d else "", flush=True)
time.sleep(60)
"""


def test_a_killed_workers_job_goes_to_another_worker(gearman: Open) -> None:
    queue = new_queue("kill")
    gearman().send(queue, b"survives", {})
    url = f"gearman://{HOST}:{MEMORY}"
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, url, queue], stdout=subprocess.PIPE, text=True, cwd=ROOT
    ) as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "survives"
        child.send_signal(signal.SIGKILL)
    again = gearman().receive(queue, 10)
    assert again is not None and again.body == b"survives"
    # gearmand marks nothing: the adapter cannot tell a redelivery from a first delivery.
    assert (again.redelivered, again.delivery_count) == (False, None)


def test_close_from_another_thread_ends_a_blocked_receive(gearman: Open) -> None:
    transport = gearman()
    returned = threading.Event()
    result: list[object] = []

    def consume() -> None:
        result.append(transport.receive(new_queue("idle"), 60))
        returned.set()

    thread = threading.Thread(target=consume)
    thread.start()
    wait_until(lambda: transport._consumers, what="the consumer to start")
    transport.close()
    assert returned.wait(5)
    thread.join()
    assert result == [None]
    with pytest.raises(TransportClosed):
        transport.send("q", b"x", {})
    transport.close()  # idempotent


def test_an_idle_receive_wakes_when_a_job_arrives(gearman: Open) -> None:
    queue = new_queue("wake")
    consumer, producer = gearman(), gearman()
    got: list[Delivery | None] = []
    thread = threading.Thread(target=lambda: got.append(consumer.receive(queue, 30)))
    thread.start()
    wait_until(lambda: any(link.sleeping for c in consumer._consumers.values() for link in c.links))
    producer.send(queue, b"ding", {})
    thread.join(10)
    assert got and got[0] is not None and got[0].body == b"ding"


def test_depth_counts_ready_jobs_and_purge_drops_prefetched_ones_too(gearman: Open) -> None:
    queue = new_queue("purge")
    producer, consumer = gearman(), gearman(prefetch=4)
    producer.send_many(
        queue, [Outgoing(f"{i}".encode(), {}, SendOptions(priority=i * 20)) for i in range(10)]
    )
    wait_until(lambda: producer.depth(queue) == 10)
    held = consumer.receive(queue, 5)  # grabs four: one in hand, three prefetched
    assert held is not None
    assert consumer.depth(queue) == 6  # the three prefetched are in flight: not ready
    assert consumer.purge(queue) == 9  # purge drops what this consumer prefetched too
    assert consumer.depth(queue) == 0
    consumer.ack(held)
    assert consumer.receive(queue, 0.2) is None


def _functions_listed(queue: str) -> set[str]:
    from gearman.admin_client import GearmanAdminClient

    admin = GearmanAdminClient([f"{HOST}:{MEMORY}"])
    try:
        return {row["task"] for row in admin.get_status() if row["task"].startswith(queue)}
    finally:
        admin.shutdown()


def test_delete_drops_the_jobs_and_the_functions(gearman: Open) -> None:
    queue = new_queue("delete")
    transport = gearman()
    transport.send_many(queue, [Outgoing(b"a"), Outgoing(b"b", {}, SendOptions(priority=255))])
    assert transport.receive(queue, 5) is not None  # registers this transport as a worker
    transport.delete(queue)
    # gearmand reads the worker's CANT_DO and the admin's status on separate connections
    wait_until(lambda: _functions_listed(queue) == set(), 5, "the functions to be dropped")
    assert gearman().receive(queue, 0.2) is None


def test_foreground_call_returns_the_workers_result(gearman: Open) -> None:
    queue = new_queue("rpc")
    caller, worker = gearman(), gearman()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            delivery = worker.receive(queue, 0.2)
            if delivery is None:
                continue
            assert delivery.reply_to is not None  # a caller waits: where its result goes
            if delivery.body == b"fail":
                worker.nack(delivery, requeue=False)
            else:
                result = delivery.body.upper() + delivery.headers["x"].encode()
                worker.send(delivery.reply_to, result, {})
                worker.ack(delivery)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        assert caller.call(queue, b"shout", headers={"x": "!"}, timeout=10) == b"SHOUT!"
        results = []
        callers = [threading.Thread(target=lambda i=i: results.append(
            caller.call(queue, f"c{i}".encode(), headers={"x": ""}, timeout=10)))
            for i in range(4)]  # fmt: skip
        for t in callers:
            t.start()
        for t in callers:
            t.join()
        assert sorted(results) == [b"C0", b"C1", b"C2", b"C3"]
        with pytest.raises(CallFailed) as failed:
            caller.call(queue, b"fail", timeout=10)
        assert failed.value.reason == "failed"
    finally:
        stop.set()
        thread.join()
    with pytest.raises(CallFailed) as late:
        caller.call(new_queue("nobody"), b"x", timeout=0.3)
    assert late.value.reason == "timeout"


def test_only_a_foreground_job_has_a_reply_address_and_a_late_reply_is_dropped(
    gearman: Open,
) -> None:
    queue = new_queue("reply-to")
    caller, worker = gearman(), gearman()
    caller.send(queue, b"background", {})
    background = worker.receive(queue, 5)
    assert background is not None and background.reply_to is None
    worker.ack(background)

    results: list[bytes] = []
    thread = threading.Thread(target=lambda: results.append(caller.call(queue, b"x", timeout=10)))
    thread.start()
    foreground = worker.receive(queue, 10)
    assert foreground is not None and foreground.reply_to is not None
    worker.send(foreground.reply_to, b"the result", {})
    worker.ack(foreground)
    thread.join(10)
    assert results == [b"the result"]

    # When the job is settled its address is gone: a reply is dropped, never a job
    worker.send(foreground.reply_to, b"late", {})
    assert _functions_listed(foreground.reply_to) == set()


def test_foreground_call_through_a_dispatching_worker(gearman: Open) -> None:
    """With the core's worker loop a call returns work()'s result, in the reply envelope
    any queuekit caller gets (the core's replies, sent to the delivery's reply_to)."""
    queue = new_queue("rpc-dispatch")
    url = f"gearman://{HOST}:{MEMORY}"
    done: list[object] = []

    def work(message: Message) -> object:
        done.append(message.payload)
        return {"sum": sum(message.payload["n"])}

    with connect(url, jobstore="sqlite:///:memory:") as conn:
        thread = threading.Thread(
            target=lambda: conn.queue(queue).dispatch(work, max_messages=1, handle_signals=False)
        )
        thread.start()
        reply = gearman().call(queue, encode(Message({"n": [1, 2, 3]})), timeout=10)
        thread.join(10)
    answer = decode(reply)
    assert answer.metadata.name == REPLY
    assert answer.payload == {"sum": 6}
    assert done == [{"n": [1, 2, 3]}]


def test_failover_skips_a_host_that_refuses(gearman: Open) -> None:
    dead = _free_port()
    queue = new_queue("failover")
    transport = open_transport(f"gearman://{HOST}:{dead},{HOST}:{MEMORY}")
    try:
        transport.send(queue, b"via the second host", {})
        delivery = transport.receive(queue, 5)
        assert delivery is not None and delivery.body == b"via the second host"
        transport.ack(delivery)
        assert transport.depth(queue) == 0
    finally:
        transport.close()


def test_a_consumer_of_several_hosts_takes_jobs_from_each(gearman: Open) -> None:
    queue = new_queue("both")
    gearman(PERSISTENT).send(queue, b"from 4730", {})
    gearman(MEMORY).send(queue, b"from 4731", {})
    both = open_transport(f"gearman://{HOST}:{PERSISTENT},{HOST}:{MEMORY}")
    try:
        assert sorted(drain(both, queue, 2)) == [b"from 4730", b"from 4731"]  # type: ignore[arg-type]
    finally:
        both.close()


def test_gearmand_error_answer_is_refused_and_the_link_dropped(gearman: Open) -> None:
    """gearmand answers ERROR to a unique over 64 bytes (the transport hashes dedup keys
    so it never sends one): the link reports it instead of waiting for JOB_CREATED."""
    wake_r, wake_w = socket.socketpair()
    link = Link(HOST, MEMORY, [], wake_r, io_timeout=5)
    try:
        link.connect()
        with pytest.raises(Refused):
            link.submit([(SUBMIT_BG[None], new_queue().encode(), b"u" * 65, b"data")])
        assert not link.connected
    finally:
        link.drop()
        wake_r.close()
        wake_w.close()


def test_no_server_raises_connection_lost() -> None:
    transport = open_transport(f"gearman://{HOST}:{_free_port()}?timeout=2")
    try:
        with pytest.raises(ConnectionLost):
            transport.send("q", b"x", {})
        with pytest.raises(ConnectionLost):
            transport.receive("q", 0.1)
        with pytest.raises(ConnectionLost):
            transport.depth("q")
    finally:
        transport.close()


def test_sends_from_many_threads_all_arrive(gearman: Open) -> None:
    queue = new_queue("threads")
    producer = gearman()

    def publish(thread: int) -> None:
        for i in range(50):
            producer.send(queue, f"{thread}-{i}".encode(), {})

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = drain(gearman(), queue, 200, timeout=20)
    assert sorted(got) == sorted(f"{t}-{i}".encode() for t in range(4) for i in range(50))


def test_a_large_message_round_trips(gearman: Open) -> None:
    queue = new_queue("large")
    body = os.urandom(4 << 20)
    gearman().send(queue, body, {"k": "v"})
    delivery = gearman().receive(queue, 10)
    assert delivery is not None and delivery.body == body


# -- restarts and gearmand's own limits ---------------------------------------------------


def test_persistent_queue_keeps_jobs_across_a_gearmand_restart(gearman: Open) -> None:
    require_broker("gearman", HOST, PERSISTENT)
    queue = new_queue("restart")
    producer = gearman(PERSISTENT, "durable=1")
    consumer = gearman(PERSISTENT, "durable=1")
    producer.send_many(queue, [Outgoing(f"{i}".encode(), {"i": str(i)}) for i in range(20)])
    assert drain(consumer, queue, 1) == [b"0"]  # the consumer's links are open
    subprocess.run([str(ROOT / "scripts" / "brokers"), "restart", "gearman"], check=True)
    # The same transports carry on: the publisher resubmits on a fresh connection, the
    # consumer reconnects its worker links and drops what it had prefetched on the old
    # ones (gearmand has those jobs again).
    producer.send(queue, b"after", {})
    expected = {f"{i}".encode() for i in range(1, 20)} | {b"after"}
    got = drain(consumer, queue, 20, timeout=20)
    assert set(got) == expected
    assert len(got) == len(expected)


def test_pooled_rpc_connections_survive_a_gearmand_restart(gearman: Open) -> None:
    require_broker("gearman", HOST, PERSISTENT)
    queue = new_queue("rpc-restart")
    caller, worker = gearman(PERSISTENT), gearman(PERSISTENT)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(ConnectionLost):
                delivery = worker.receive(queue, 0.2)
                if delivery is not None and delivery.reply_to is not None:
                    worker.send(delivery.reply_to, b"pong", {})
                    worker.ack(delivery)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        assert caller.call(queue, b"ping", timeout=10) == b"pong"
        subprocess.run([str(ROOT / "scripts" / "brokers"), "restart", "gearman"], check=True)
        assert caller.call(queue, b"ping", timeout=10) == b"pong"
    finally:
        stop.set()
        thread.join()


@pytest.fixture
def retrying_gearmand(tmp_path: Path) -> Iterator[int]:
    """A private in-memory gearmand with ``--job-retries=1`` (in the foreground)."""
    binary = shutil.which("gearmand") or "/usr/sbin/gearmand"
    if not os.path.exists(binary):
        require_broker("gearman", HOST, 1)  # skips (fails in CI) with the usual message
    port = _free_port()
    log_file = tmp_path / "gearmand.log"
    with subprocess.Popen(
        [binary, f"--listen={HOST}", f"--port={port}", "--job-retries=1",
         f"--log-file={log_file}", f"--pid-file={tmp_path / 'gearmand.pid'}"],
    ) as server:  # fmt: skip
        try:
            wait_until(lambda: _port_open(port), what="the private gearmand")
            yield port
        finally:
            server.terminate()
            server.wait(10)


def test_with_job_retries_gearmand_drops_a_job_whose_worker_died(retrying_gearmand: int) -> None:
    """The hazard docs/gearman.md warns about: queuekit never sees such a job again."""
    url = f"gearman://{HOST}:{retrying_gearmand}"
    queue = new_queue("retries")
    producer = open_transport(url)
    try:
        producer.send(queue, b"doomed", {})
        with subprocess.Popen(
            [sys.executable, "-c", CHILD, url, queue], stdout=subprocess.PIPE, text=True, cwd=ROOT
        ) as child:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "doomed"
            child.send_signal(signal.SIGKILL)
        wait_until(lambda: producer.depth(queue) == 0)
        consumer = open_transport(url)
        try:
            assert consumer.receive(queue, 0.5) is None
        finally:
            consumer.close()
    finally:
        producer.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
        return True
    return False


def test_a_message_that_keeps_killing_its_worker_ends_in_the_failed_store(
    gearman: Open, tmp_path: Path
) -> None:
    """gearmand hands a dead worker's job on without a mark; the core's start journal in the
    job store counts those attempts, so the default strategy (one retry) runs out."""
    queue, url = new_queue("killer"), f"gearman://{HOST}:{MEMORY}"
    jobstore = f"sqlite:///{tmp_path}/jobs.db"
    events, release = tmp_path / "events.txt", tmp_path / "release"
    env = {"QUEUEKIT_JOBSTORE": jobstore, "QK_EVENTS": str(events),
           "QK_OUT": str(tmp_path / "out.txt"), "QK_RELEASE": str(release)}  # fmt: skip
    with connect(url, jobstore=jobstore) as conn:
        conn.queue(queue).publish({"n": 1})
        # Given two workers in turn killed while work() runs (it waits for a release never given)
        for started in (1, 2):
            worker = start_worker("run", "tests.workers.queues:GatedQueue", "--url", url,
                                  "--queue", queue, cwd=tmp_path, env=env)  # fmt: skip
            wait_until(lambda n=started: lines(events).count("started 1") == n, 30, "a start")
            worker.send_signal(signal.SIGKILL)
            stop(worker)
        # When a third worker receives it
        third = start_worker(
            "run", "tests.workers.queues:GatedQueue", "--url", url, "--queue", queue,
            "--max-messages", "1", cwd=tmp_path, env=env,
        )  # fmt: skip
        try:
            wait_until(lambda: conn.failed.list(queue), 30, "the failed store")
        finally:
            stop(third)
        # Then it was not run a third time: two attempts died, the strategy allows two in all
        assert lines(events).count("started 1") == 2
        (failed,) = conn.failed.list(queue)
        assert "worker died during 2 attempt(s)" in failed.reason
        assert failed.attempts == 2
