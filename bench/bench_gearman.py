"""Raw pygearman against queuekit's gearman:// on both gearmand modes, in one run.

    .venv/bin/python bench/bench_gearman.py [--runs 5] [--messages 5000] [--persistent 1000]
    .venv/bin/python bench/bench_gearman.py --quick   # smoke run: 300 / 50 messages, one run

Rows (messages per second, median of ``--runs``; the same encoded envelope bytes in every
row; background jobs; one connection each):

- publish one by one: raw ``GearmanClient.submit_job(background=True)`` waiting for
  JOB_CREATED, against queuekit ``Queue.publish`` (envelope encode + send, which waits for
  JOB_CREATED too) and the bare ``transport.send``.
- bulk publish (batches of 500): raw ``submit_multiple_jobs`` against ``Queue.publish_many``.
- consume: raw ``GearmanWorker.work()`` (callback returns, pygearman sends WORK_COMPLETE)
  against queuekit ``Queue.dispatch`` (decode, no-op work(), ack = WORK_COMPLETE) and the
  bare transport (``receive`` + ``ack``).

"memory" is gearmand on 4731 (jobs in memory); "sqlite" is gearmand on 4730 with
``--queue-type=libsqlite3`` (every background job written), which is slow, so it gets
``--persistent`` messages per run. Needs ``scripts/brokers up gearman``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import report
from gearman.client import GearmanClient
from gearman.worker import GearmanWorker

import queuekit
from queuekit import Message, Metadata
from queuekit.features.envelope import encode
from queuekit.spi.registry import open_transport

MODES = {"memory": 4731, "sqlite": 4730}
BATCH = 500
BODY = encode(Message({"to": "user@example.org", "n": 1}, Metadata(name="bench")))


def _queue() -> str:
    return f"bench-{uuid.uuid4().hex[:10]}"


def _fill(port: int, queue: str, count: int) -> None:
    client = GearmanClient([f"127.0.0.1:{port}"])
    for start in range(0, count, BATCH):
        jobs = [{"task": queue.encode(), "data": BODY, "priority": "LOW"}] * min(
            BATCH, count - start
        )
        client.submit_multiple_jobs(jobs, background=True, wait_until_complete=False)
    client.shutdown()


def _purge(port: int, queue: str) -> None:
    """Drop what a publish row left behind (untimed), so runs do not pile up jobs."""
    transport = open_transport(f"gearman://127.0.0.1:{port}")
    try:
        transport.delete(queue)
    finally:
        transport.close()


def _rate(count: int, run: Callable[[], None]) -> float:
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


# -- raw pygearman -----------------------------------------------------------------------


def raw_publish(port: int, count: int) -> float:
    client, name = GearmanClient([f"127.0.0.1:{port}"]), _queue()
    queue = name.encode()

    def run() -> None:
        for _ in range(count):
            client.submit_job(queue, BODY, background=True, wait_until_complete=False)

    rate = _rate(count, run)
    client.shutdown()
    _purge(port, name)
    return rate


def raw_publish_bulk(port: int, count: int) -> float:
    client, name = GearmanClient([f"127.0.0.1:{port}"]), _queue()
    queue = name.encode()

    def run() -> None:
        for start in range(0, count, BATCH):
            jobs = [{"task": queue, "data": BODY}] * min(BATCH, count - start)
            client.submit_multiple_jobs(jobs, background=True, wait_until_complete=False)

    rate = _rate(count, run)
    client.shutdown()
    _purge(port, name)
    return rate


class _CountingWorker(GearmanWorker):  # type: ignore[misc]
    """Stops once ``limit`` jobs ran. Counted in the task callback: pygearman calls
    ``after_job`` more than once per job (counting there stops after half the jobs)."""

    def __init__(self, hosts: list[str], limit: int) -> None:
        super().__init__(hosts)
        self.limit, self.done = limit, 0

    def run(self, _worker: object, _job: object) -> bytes:
        self.done += 1
        return b""

    def after_job(self) -> bool:
        return self.done < self.limit


def raw_consume(port: int, count: int) -> float:
    queue = _queue()
    _fill(port, queue, count)
    worker = _CountingWorker([f"127.0.0.1:{port}"], count)
    worker.register_task(queue.encode(), worker.run)
    rate = _rate(count, lambda: worker.work(poll_timeout=1.0))
    worker.shutdown()
    assert worker.done == count, f"raw worker ran {worker.done} of {count} jobs"
    return rate


# -- queuekit ----------------------------------------------------------------------------


def _connect(port: int, tmp: Path) -> queuekit.Connection:
    return queuekit.connect(
        f"gearman://127.0.0.1:{port}", jobstore=f"sqlite:///{tmp / uuid.uuid4().hex}.db"
    )


def qk_publish(port: int, count: int, tmp: Path) -> float:
    with _connect(port, tmp) as conn:
        queue = conn.queue(_queue())
        payload = {"to": "user@example.org", "n": 1}
        rate = _rate(count, lambda: [queue.publish(payload, name="bench") for _ in range(count)])
    _purge(port, queue.name)
    return rate


def qk_send(port: int, count: int, tmp: Path) -> float:
    with _connect(port, tmp) as conn:
        transport, queue = conn.transport, _queue()
        rate = _rate(count, lambda: [transport.send(queue, BODY, {}) for _ in range(count)])
    _purge(port, queue)
    return rate


def qk_publish_bulk(port: int, count: int, tmp: Path) -> float:
    with _connect(port, tmp) as conn:
        queue = conn.queue(_queue())
        payloads = [{"to": "user@example.org", "n": 1}] * BATCH

        def run() -> None:
            for start in range(0, count, BATCH):
                queue.publish_many(payloads[: min(BATCH, count - start)])

        rate = _rate(count, run)
    _purge(port, queue.name)
    return rate


def qk_dispatch(port: int, count: int, tmp: Path) -> float:
    with _connect(port, tmp) as conn:
        name = _queue()
        _fill(port, name, count)
        queue = conn.queue(name)
        return _rate(
            count,
            lambda: queue.dispatch(lambda m: None, max_messages=count, handle_signals=False),
        )


def qk_receive(port: int, count: int, tmp: Path) -> float:
    with _connect(port, tmp) as conn:
        transport, queue = conn.transport, _queue()
        _fill(port, queue, count)

        def run() -> None:
            for _ in range(count):
                delivery = transport.receive(queue, 5.0)
                assert delivery is not None
                transport.ack(delivery)

        return _rate(count, run)


ROWS: list[tuple[str, str, Callable[..., float]]] = [
    ("publish one by one", "raw submit_job", lambda p, n, _t: raw_publish(p, n)),
    ("publish one by one", "queuekit Queue.publish", qk_publish),
    ("publish one by one", "queuekit transport.send", qk_send),
    ("bulk publish (500)", "raw submit_multiple_jobs", lambda p, n, _t: raw_publish_bulk(p, n)),
    ("bulk publish (500)", "queuekit Queue.publish_many", qk_publish_bulk),
    ("consume + complete", "raw GearmanWorker.work", lambda p, n, _t: raw_consume(p, n)),
    ("consume + complete", "queuekit Queue.dispatch", qk_dispatch),
    ("consume + complete", "queuekit receive + ack", qk_receive),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--messages", type=int, default=5000, help="per run, in-memory gearmand")
    parser.add_argument("--persistent", type=int, default=1000, help="per run, libsqlite3")
    args = report.parse_args(parser, {"runs": 1, "messages": 300, "persistent": 50})
    counts = {"memory": args.messages, "sqlite": args.persistent}
    rates: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Rows interleave within each run, so a noisy neighbour hurts raw and queuekit alike.
        for _ in range(args.runs):
            for mode, port in MODES.items():
                for _, label, bench in ROWS:
                    rate = bench(port, counts[mode], Path(tmp))
                    rates.setdefault((mode, label), []).append(rate)
    results = {key: statistics.median(values) for key, values in rates.items()}
    report.heading(
        "Gearman benchmark",
        f"msg/s, median of {args.runs} runs ({counts['memory']:,} messages with gearmand in "
        f"memory, {counts['sqlite']:,} with libsqlite3); ratio: queuekit / raw of its group.",
    )
    baseline: dict[tuple[str, str], float] = {}
    rows: list[list[report.Cell]] = []
    for group, label, _ in ROWS:
        row: list[report.Cell] = [group, label]
        for mode in MODES:
            rate = results[(mode, label)]
            if label.startswith("raw"):
                baseline[(group, mode)] = rate
                row += [rate, ""]
            else:
                row += [rate, report.ratio(rate, baseline[(group, mode)])]
        rows.append(row)
    report.table(["row", "client", "memory msg/s", "ratio", "sqlite msg/s", "ratio"], rows)


if __name__ == "__main__":
    main()
