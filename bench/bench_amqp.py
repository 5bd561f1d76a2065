"""amqp:// throughput against raw kombu, on the same RabbitMQ, in one run.

Run by hand (scripts/brokers up rabbitmq first)::

    .venv/bin/python bench/bench_amqp.py [--messages 10000] [--runs 5] [--prefetch 64]

Prints messages per second, the median of ``--runs`` runs per row. Every row uses durable
queues and persistent 100-byte messages; consumers ack each message. Publishing rows wait
for the broker (confirms) where they say so; "raw kombu confirmed" is kombu's
``confirm_publish`` transport option, one round trip per message. Celery and dramatiq rows
appear only if those packages are installed (never a queuekit dependency).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import kombu

from queuekit import connect
from queuekit.adapters.amqp import AMQPTransport
from queuekit.core.transport import Outgoing
from queuekit.core.urls import TransportURL

URL = "amqp://guest:guest@127.0.0.1:5672/"
BODY = b"x" * 100


def fresh_queue() -> str:
    return f"bench-amqp-{uuid.uuid4().hex}"


def transport(prefetch: int = 64) -> AMQPTransport:
    return AMQPTransport(TransportURL.parse(URL), prefetch=prefetch)


def fill(queue: str, count: int) -> None:
    t = transport()
    for start in range(0, count, 1000):
        t.send_many(queue, [Outgoing(BODY)] * min(1000, count - start))
    t.close()


def drop(queue: str) -> None:
    t = transport()
    t.delete(queue)
    t.close()


# -- raw kombu -------------------------------------------------------------------------


def kombu_publish(count: int, confirm: bool) -> float:
    queue = fresh_queue()
    with kombu.Connection(URL, transport_options={"confirm_publish": confirm}) as conn:
        entity = kombu.Queue(queue, durable=True, routing_key=queue)
        producer = conn.Producer()
        producer.publish(BODY, routing_key=queue, declare=[entity], delivery_mode=2)
        started = time.perf_counter()
        for _ in range(count):
            producer.publish(
                BODY,
                routing_key=queue,
                delivery_mode=2,
                content_type="application/octet-stream",
                content_encoding="binary",
            )
        seconds = time.perf_counter() - started
    drop(queue)
    return count / seconds


def kombu_consume(count: int, prefetch: int) -> float:
    queue = fresh_queue()
    fill(queue, count)
    done = 0

    def on_message(message: Any) -> None:
        nonlocal done
        message.ack()
        done += 1

    with kombu.Connection(URL) as conn:
        entity = kombu.Queue(queue, durable=True, queue_arguments={"x-max-priority": 10})
        with conn.Consumer(entity, on_message=on_message, prefetch_count=prefetch):
            started = time.perf_counter()
            while done < count:
                conn.drain_events(timeout=10)
            seconds = time.perf_counter() - started
    drop(queue)
    return count / seconds


# -- queuekit --------------------------------------------------------------------------


def qk_send(count: int) -> float:
    queue, t = fresh_queue(), transport()
    t.send(queue, BODY, {})
    started = time.perf_counter()
    for _ in range(count):
        t.send(queue, BODY, {})
    seconds = time.perf_counter() - started
    t.delete(queue)
    t.close()
    return count / seconds


def qk_send_many(count: int, batch: int = 1000) -> float:
    queue, t = fresh_queue(), transport()
    t.send(queue, BODY, {})
    messages = [Outgoing(BODY)] * batch
    started = time.perf_counter()
    for start in range(0, count, batch):
        t.send_many(queue, messages[: min(batch, count - start)])
    seconds = time.perf_counter() - started
    t.delete(queue)
    t.close()
    return count / seconds


def qk_send_threads(count: int, threads: int = 4) -> float:
    import threading

    queue, t = fresh_queue(), transport()
    t.send(queue, BODY, {})
    each = count // threads

    def run() -> None:
        for _ in range(each):
            t.send(queue, BODY, {})

    workers = [threading.Thread(target=run) for _ in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - started
    t.delete(queue)
    t.close()
    return each * threads / seconds


def qk_receive(count: int, prefetch: int) -> float:
    queue = fresh_queue()
    fill(queue, count)
    t = transport(prefetch)
    started = time.perf_counter()
    for _ in range(count):
        delivery = t.receive(queue, 10)
        assert delivery is not None
        t.ack(delivery)
    seconds = time.perf_counter() - started
    t.delete(queue)
    t.close()
    return count / seconds


def qk_publish_many(count: int, batch: int = 1000) -> float:
    conn = connect(URL)
    q = conn.queue(fresh_queue())
    q.publish("warm")
    started = time.perf_counter()
    for start in range(0, count, batch):
        q.publish_many([{"n": i} for i in range(start, min(count, start + batch))])
    seconds = time.perf_counter() - started
    conn.transport.delete(q.name)
    conn.close()
    return count / seconds


def qk_dispatch(count: int, prefetch: int) -> float:
    conn = connect(URL, prefetch=prefetch)
    q = conn.queue(fresh_queue())
    for start in range(0, count, 1000):
        q.publish_many([{"n": i} for i in range(start, min(count, start + 1000))])
    started = time.perf_counter()
    done = q.dispatch(lambda message: None, max_messages=count, handle_signals=False)
    seconds = time.perf_counter() - started
    assert done == count, done
    conn.transport.delete(q.name)
    conn.close()
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prefetch", type=int, default=64)
    args = parser.parse_args()
    n, p = args.messages, args.prefetch
    slow = max(1000, n // 5)  # one-by-one confirmed publishing is ~10x slower
    rows: list[tuple[str, Callable[[], float]]] = [
        ("raw kombu publish, no confirms", lambda: kombu_publish(n, False)),
        ("raw kombu publish, confirmed one by one", lambda: kombu_publish(slow, True)),
        ("queuekit send (confirmed)", lambda: qk_send(slow)),
        ("queuekit send, 4 threads (confirmed)", lambda: qk_send_threads(slow)),
        ("queuekit send_many (confirmed batch of 1000)", lambda: qk_send_many(n)),
        ("queuekit Queue.publish_many (envelope, batch 1000)", lambda: qk_publish_many(n)),
        (f"raw kombu consume + ack (prefetch {p})", lambda: kombu_consume(n, p)),
        (f"queuekit receive + ack (prefetch {p})", lambda: qk_receive(n, p)),
        (f"queuekit Queue.dispatch no-op (prefetch {p})", lambda: qk_dispatch(n, p)),
    ]
    print(f"RabbitMQ at {URL.replace('guest:guest', 'guest:***')}, {n} messages, {args.runs} runs")
    # rows interleave run by run, so a load change on the machine hits every row alike
    rates: dict[str, list[float]] = {label: [] for label, _ in rows}
    for _ in range(args.runs):
        for label, function in rows:
            rates[label].append(function())
    print(f"{'benchmark':55} {'median msg/s':>12}   runs")
    results: dict[str, float] = {}
    for label, _ in rows:
        results[label] = median = statistics.median(rates[label])
        print(f"{label:55} {median:12,.0f}   {', '.join(f'{r:,.0f}' for r in rates[label])}")
    bulk = results["queuekit send_many (confirmed batch of 1000)"]
    one = results["raw kombu publish, confirmed one by one"]
    worker = results[f"queuekit Queue.dispatch no-op (prefetch {p})"]
    receive = results[f"queuekit receive + ack (prefetch {p})"]
    raw = results[f"raw kombu consume + ack (prefetch {p})"]
    print(f"\nconfirmed bulk / raw kombu confirmed one by one: {bulk / one:.1f}x (target >= 3x)")
    print(f"receive+ack / raw kombu consume+ack: {receive / raw:.2f}x")
    print(f"dispatch worker / raw kombu consume+ack: {worker / raw:.2f}x (target >= 0.8x)")


if __name__ == "__main__":
    main()
