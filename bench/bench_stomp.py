"""Raw stomp.py against queuekit's stomp:// on each STOMP server, in one run.

    .venv/bin/python bench/bench_stomp.py [--runs 5] [--messages 5000] [--confirmed 1000]
    .venv/bin/python bench/bench_stomp.py --quick     # smoke run: 300 / 50 messages, one run

Rows (messages per second and this process's CPU time per message, medians of ``--runs``;
the same encoded envelope bytes in every row, persistent, one connection each; an untimed
warm-up first, so a freshly started ActiveMQ's JIT does not penalise the first row):

- publish, receipt each: raw ``send(receipt=...)`` and wait, one by one (the baseline the
  issue measured) against queuekit ``Queue.publish`` (which waits for a receipt too).
- publish, fire and forget: raw ``send`` with no receipt until the last frame (no per-message
  guarantee: the ceiling, not a fair peer of anything confirmed).
- bulk publish: queuekit ``Queue.publish_many`` (one receipt per batch of up to 1000), and
  the bare transport's ``send_many`` with the same pre-encoded bodies as the raw rows.
- consume with ack: raw stomp.py listener acking each MESSAGE in the callback (client-
  individual, same prefetch) against queuekit ``Queue.dispatch`` (decode the envelope, run
  a no-op work(), ack) and against the bare transport (``receive`` + ``ack``).

Needs ``scripts/brokers up rabbitmq-stomp activemq``. Queues are uuid-named and drained.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial

import report
import stomp

import queuekit
import queuekit.spi
from queuekit import Message, Metadata
from queuekit.features.envelope import encode

SERVERS = {"RabbitMQ": 61613, "ActiveMQ": 61623}
PREFETCH = 64
BODY = encode(Message({"to": "user@example.org", "n": 1}, Metadata(name="bench")))


class _Raw(stomp.ConnectionListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.receipts: set[str] = set()
        self.cond = threading.Condition()
        self.conn: stomp.Connection12 | None = None
        self.acked = 0
        self.prefetch_header = ""

    def on_receipt(self, frame: stomp.utils.Frame) -> None:
        with self.cond:
            self.receipts.add(frame.headers["receipt-id"])
            self.cond.notify_all()

    def on_message(self, frame: stomp.utils.Frame) -> None:
        assert self.conn is not None
        self.conn.ack(frame.headers["ack"])
        with self.cond:
            self.acked += 1
            self.cond.notify_all()

    def wait(self, condition: Callable[[], bool]) -> None:
        with self.cond:
            if not self.cond.wait_for(condition, 120):
                raise TimeoutError("raw stomp.py run stalled")


def raw_connect(port: int) -> tuple[stomp.Connection12, _Raw]:
    conn = stomp.Connection12([("127.0.0.1", port)], vhost="/", auto_decode=False)
    listener = _Raw()
    listener.conn = conn
    conn.set_listener("bench", listener)
    conn.connect("guest", "guest", wait=True)
    return conn, listener


def raw_send(conn: stomp.Connection12, queue: str, receipt: str | None = None) -> None:
    # x-max-priority: the same (priority) queue queuekit declares; ActiveMQ ignores it
    headers = {"persistent": "true", "x-max-priority": "9"}
    if receipt:
        headers["receipt"] = receipt
    conn.send(f"/queue/{queue}", BODY, "application/octet-stream", headers)


def raw_publish_receipt_each(port: int, queue: str, n: int) -> float:
    conn, listener = raw_connect(port)
    start = time.perf_counter()
    for i in range(n):
        raw_send(conn, queue, f"r{i}")
        listener.wait(lambda i=i: f"r{i}" in listener.receipts)  # type: ignore[misc]
    elapsed = time.perf_counter() - start
    conn.disconnect()
    return n / elapsed


def raw_publish_fire(port: int, queue: str, n: int) -> float:
    conn, listener = raw_connect(port)
    start = time.perf_counter()
    for i in range(n):
        raw_send(conn, queue, "last" if i == n - 1 else None)
    listener.wait(lambda: "last" in listener.receipts)
    elapsed = time.perf_counter() - start
    conn.disconnect()
    return n / elapsed


def raw_consume(port: int, queue: str, n: int, header: str) -> float:
    conn, listener = raw_connect(port)
    start = time.perf_counter()
    headers = {header: str(PREFETCH), "x-max-priority": "9"}
    conn.subscribe(f"/queue/{queue}", "s", "client-individual", headers)
    listener.wait(lambda: listener.acked >= n)
    elapsed = time.perf_counter() - start
    conn.disconnect()
    return n / elapsed


def qk_publish(url: str, queue: str, n: int) -> float:
    conn = queuekit.connect(url, prefetch=PREFETCH)
    q = conn.queue(queue)
    start = time.perf_counter()
    for _ in range(n):
        q.publish({"to": "user@example.org", "n": 1}, name="bench")
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


def qk_publish_many(url: str, queue: str, n: int) -> float:
    conn = queuekit.connect(url, prefetch=PREFETCH)
    q = conn.queue(queue)
    payloads = [{"to": "user@example.org", "n": 1}] * n
    start = time.perf_counter()
    q.publish_many(payloads, name="bench")
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


def qk_transport_send_many(url: str, queue: str, n: int) -> float:
    conn = queuekit.connect(url, prefetch=PREFETCH)
    batch = [queuekit.spi.Outgoing(BODY)] * n
    start = time.perf_counter()
    conn.transport.send_many(queue, batch)
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


def qk_dispatch(url: str, queue: str, n: int) -> float:
    conn = queuekit.connect(url, prefetch=PREFETCH)
    q = conn.queue(queue)
    start = time.perf_counter()
    done = q.dispatch(lambda message: None, max_messages=n, handle_signals=False)
    elapsed = time.perf_counter() - start
    conn.close()
    assert done == n, f"dispatch processed {done} of {n}"
    return n / elapsed


def qk_transport_consume(url: str, queue: str, n: int) -> float:
    conn = queuekit.connect(url, prefetch=PREFETCH)
    transport = conn.transport
    start = time.perf_counter()
    for _ in range(n):
        delivery = transport.receive(queue, 30)
        assert delivery is not None
        transport.ack(delivery)
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


def fill(url: str, queue: str, n: int) -> None:
    conn = queuekit.connect(url)
    conn.queue(queue).publish_many([{"to": "user@example.org", "n": 1}] * n, name="bench")
    conn.close()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


Result = dict[str, tuple[float, float]]  # row -> (median msgs/s, median client CPU us/msg)


def bench_server(name: str, port: int, runs: int, n: int, confirmed: int) -> Result:
    url = f"stomp://guest:guest@127.0.0.1:{port}"
    header = "prefetch-count" if name == "RabbitMQ" else "activemq.prefetchSize"
    rows: dict[str, list[tuple[float, float]]] = {}

    def record(row: str, run: Callable[[], float], count: int) -> None:
        before = _cpu()
        rate = run()
        rows.setdefault(row, []).append((rate, (_cpu() - before) * 1e6 / count))

    # warm-up, not timed: a freshly (re)started ActiveMQ runs interpreted until its JIT
    # has compiled the hot paths, which would penalise whichever row comes first
    warm = f"bench-stomp-warm-{uuid.uuid4().hex[:8]}"
    qk_transport_send_many(url, warm, n)
    raw_consume(port, warm, n, header)
    for _ in range(runs):
        q = f"bench-stomp-{uuid.uuid4().hex[:8]}"
        c = confirmed
        record("raw publish, receipt each", partial(raw_publish_receipt_each, port, q, c), c)
        record("qk publish (receipt each)", partial(qk_publish, url, q, c), c)
        record("raw publish, fire and forget", partial(raw_publish_fire, port, q, n), n)
        record("qk publish_many (receipt/batch)", partial(qk_publish_many, url, q, n), n)
        record("qk transport send_many", partial(qk_transport_send_many, url, q, n), n)
        # drain what the publish rows left, then time each consumer on a full queue
        raw_consume(port, q, 2 * c + 3 * n, header)
        fill(url, q, n)
        record("raw consume + ack", partial(raw_consume, port, q, n, header), n)
        fill(url, q, n)
        record("qk dispatch (worker)", partial(qk_dispatch, url, q, n), n)
        fill(url, q, n)
        record("qk transport receive + ack", partial(qk_transport_consume, url, q, n), n)
    return {
        row: (
            statistics.median(rate for rate, _ in values),
            statistics.median(cpu for _, cpu in values),
        )
        for row, values in rows.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--confirmed", type=int, default=1000)
    args = report.parse_args(parser, {"runs": 1, "messages": 300, "confirmed": 50})
    results = {
        name: bench_server(name, port, args.runs, args.messages, args.confirmed)
        for name, port in SERVERS.items()
    }
    report.heading(
        "STOMP benchmark",
        f"Medians of {args.runs} runs, {args.messages:,} messages ({args.confirmed:,} for "
        f"receipt-each rows), {len(BODY)}-byte envelope, prefetch {PREFETCH}; msg/s and this "
        "process's CPU (user+sys) us per message.",
    )
    header = ["row"]
    for name in results:
        header += [f"{name} msg/s", f"{name} us/msg"]
    rows = list(next(iter(results.values())))
    report.table(
        header,
        [[row, *(v for name in results for v in results[name][row])] for row in rows],
    )
    ratios: list[list[report.Cell]] = []
    for label, top, bottom in (
        ("worker / raw consume", "qk dispatch (worker)", "raw consume + ack"),
        ("transport / raw consume", "qk transport receive + ack", "raw consume + ack"),
        (
            "publish_many / raw receipt each",
            "qk publish_many (receipt/batch)",
            "raw publish, receipt each",
        ),
        ("send_many / raw receipt each", "qk transport send_many", "raw publish, receipt each"),
        (
            "send_many / raw fire and forget",
            "qk transport send_many",
            "raw publish, fire and forget",
        ),
        ("publish / raw receipt each", "qk publish (receipt each)", "raw publish, receipt each"),
    ):
        ratios.append(
            [label, *(report.ratio(results[n][top][0], results[n][bottom][0]) for n in results)]
        )
    report.table(["ratio (msg/s)", *results], ratios)


if __name__ == "__main__":
    main()
