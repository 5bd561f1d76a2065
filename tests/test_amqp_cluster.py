"""amqp:// on a 3-node RabbitMQ cluster with quorum queues (scripts/brokers.d/rabbitmq-cluster.sh):
SIGKILL the node that leads the queue while a publisher and a worker run on the cluster's URL
list, with the job store (records, delayed messages) on PostgreSQL. Publishing and consuming
go on through the other nodes, nothing confirmed is lost, duplicates stay within what was in
flight, and the node comes back and rejoins."""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections import Counter
from pathlib import Path

import pytest

from queuekit import Message, connect
from queuekit.adapters.amqp import AMQPTransport
from queuekit.spi.errors import ConfigurationError
from queuekit.spi.urls import TransportURL
from queuekit.worker.loop import Worker
from queuekit.worker.pipeline import FunctionHandler
from tests.databases import drop_tables, require_database
from tests.support import require_broker, wait_until

ROOT = Path(__file__).resolve().parent.parent
HOSTS = "127.0.0.1:5681,127.0.0.1:5682,127.0.0.1:5683"
#: A producer that rides out a node's loss (the default publish timeout is 5 s).
URL = f"amqp://guest:guest@{HOSTS}/?queue_type=quorum&publish_timeout=60"
PREFETCH = 8
TOTAL = 400


def cluster(*args: str) -> str:
    """``scripts/brokers VERB rabbitmq-cluster ARGS``: its output."""
    verb, rest = args[0], args[1:]
    command = ["scripts/brokers", verb, "rabbitmq-cluster", *rest]
    done = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def running_nodes(node: str) -> int:
    return int(cluster("ctl", node, "eval", "length(rabbit_nodes:all_running())."))


def test_killing_the_leader_loses_nothing_and_the_node_rejoins() -> None:  # noqa: PLR0915
    require_broker("rabbitmq-cluster", "127.0.0.1", 5681)
    base = require_database("postgresql")
    prefix = f"qkt{uuid.uuid4().hex[:10]}_"
    store = f"{base}?table_prefix={prefix}"
    name = f"test-cluster-{uuid.uuid4().hex}"
    producer = connect(URL, jobstore=store)
    consumer = connect(URL, jobstore=store, prefetch=PREFETCH)
    seen: list[int] = []
    published: dict[int, str] = {}
    errors: list[BaseException] = []
    stop = threading.Event()

    def work(message: Message) -> None:
        seen.append(message.payload["n"])

    def publish(first: int, count: int) -> None:
        try:
            queue = producer.queue(name)
            for n in range(first, first + count):
                # every 25th waits a second in the job store's delayed store (PostgreSQL)
                delay = 1.0 if n % 25 == 0 else None
                published[n] = queue.publish({"n": n}, delay=delay, record=True)
                if stop.wait(0.005):
                    return
        except BaseException as exc:
            errors.append(exc)

    worker = Worker(consumer.broker, name, FunctionHandler(work), handle_signals=False)
    threads = [
        threading.Thread(target=publish, args=(0, TOTAL)),
        threading.Thread(target=worker.run),
    ]
    killed = None
    try:
        for thread in threads:
            thread.start()
        # Given traffic in both directions on a quorum queue of the cluster
        wait_until(lambda: len(seen) >= 50 or errors, 60, "traffic before the kill")
        killed = cluster("leader", name)
        # When the node that leads the queue dies mid-run
        cluster("kill", killed)
        # Then publishing and consuming go on through the other nodes
        threads[0].join(120)
        assert not errors, errors
        assert len(published) == TOTAL
        wait_until(lambda: set(seen) >= set(published) or errors, 90, "every published message")
        survivor = next(f"qk{n}" for n in (1, 2, 3) if f"qk{n}@" not in killed)
        new_leader = cluster("leader", name)
        assert new_leader != killed
        # And the node comes back, rejoins, and the queue serves on
        cluster("start", killed)
        wait_until(lambda: running_nodes(survivor) == 3, 60, f"{killed} to rejoin")
        publish(TOTAL, 20)
        wait_until(lambda: set(seen) >= set(published) or errors, 60, "messages after the rejoin")
    finally:
        stop.set()
        worker.stop("test over")
        for thread in threads:
            thread.join(30)
        if killed is not None and "qk" in killed:
            cluster("start", killed)  # idempotent: a running node is left alone
        producer.broker.transport.delete(name)
        producer.close()
        consumer.close()
    assert not errors, errors
    # nothing lost; a duplicate only for what was in flight when the node died: the worker's
    # prefetched deliveries and the publisher's one unconfirmed message
    duplicates = sum(count - 1 for count in Counter(seen).values())
    assert set(seen) == set(published), sorted(set(published) - set(seen))[:10]
    assert duplicates <= PREFETCH + 1, Counter(seen).most_common(5)
    records = connect(URL, jobstore=store)
    try:
        states = Counter(record.state for record in map(records.job, published.values()) if record)
        assert states == {"done": len(published)}, states
    finally:
        records.close()
        drop_tables(base, prefix)


def test_a_classic_queue_of_the_same_name_is_one_clear_error(tmp_path: Path) -> None:
    require_broker("rabbitmq-cluster", "127.0.0.1", 5681)
    name = f"test-cluster-classic-{uuid.uuid4().hex}"
    store = f"sqlite:///{tmp_path}/jobs.db"
    classic = connect(f"amqp://guest:guest@{HOSTS}/?priority_bands=", jobstore=store)
    quorum = connect(f"{URL}&priority_bands=", jobstore=store)
    try:
        # Given a classic queue
        classic.queue(name).publish("x")
        # When a quorum URL declares it
        with pytest.raises(ConfigurationError, match="cannot turn a classic queue into a quorum"):
            quorum.queue(name).publish("y")
        # Then nothing of the classic queue was lost
        assert classic.queue(name).depth() == 1
    finally:
        classic.broker.transport.delete(name)
        classic.close()
        quorum.close()


def test_a_quorum_url_declares_what_quorum_queues_serve_and_refuses_the_rest() -> None:
    # Given a quorum URL (nothing connects before the first call)
    transport = AMQPTransport(TransportURL.parse(URL))
    transport.close()
    caps = transport.capabilities
    # Then ranges are served by bands, but neither order by priority nor native delay
    assert caps.priority_range and caps.takes_priority and caps.durable and caps.redelivery
    assert not caps.priority and not caps.delay
    assert "quorum" in caps.reasons["priority"] and "delayed store" in caps.reasons["delay"]
    # And what a quorum queue cannot honour is refused, never ignored
    for option in ("max_priority=5", "delay=1", "queue_type=stream"):
        with pytest.raises(ConfigurationError, match=option.split("=")[0]):
            AMQPTransport(TransportURL.parse(f"{URL}&{option}"))


def test_a_quorum_queue_counts_deliveries() -> None:
    require_broker("rabbitmq-cluster", "127.0.0.1", 5681)
    name = f"test-cluster-count-{uuid.uuid4().hex}"
    transport = AMQPTransport(TransportURL.parse(f"{URL}&priority_bands="), prefetch=1)
    try:
        # Given a message delivered once and handed back
        transport.send(name, b"x", {"k": "v"})
        first = transport.receive(name, 10)
        assert first is not None and first.delivery_count == 1
        transport.nack(first, requeue=True)
        # When it comes again
        again = transport.receive(name, 10)
        # Then the broker's count says so, and its header is not the user's
        assert again is not None and again.body == b"x"
        assert again.delivery_count == 2 and again.redelivered
        assert again.headers == {"k": "v"}
        transport.ack(again)
    finally:
        transport.delete(name)
        transport.close()
