"""What metrics and tracing cost a no-op worker, on SQLite and RabbitMQ, in one run.

Rows (messages per second of ``Queue.dispatch`` with a no-op ``work()``, median of
``--reps`` runs): instruments off; Prometheus metrics on (:func:`enable_metrics`: counters,
two histograms and a gauge per message); the same metrics in prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set, as in a ``--processes`` child: every
value lives in a memory-mapped file); OpenTelemetry tracing on (:func:`enable_tracing`
with an SDK tracer provider and no exporter: the spans are made, then dropped); both. The
ratio is each row's rate over "off" of the same broker, the issue's bar being 0.9x for
metrics. Instruments are process-wide, so every measurement runs in a fresh child process,
the cases round-robin so a noisy moment hits each alike; the messages are published before
the clock starts. The RabbitMQ rows need ``scripts/brokers up rabbitmq`` and are left out
when it does not answer.

Run: ``.venv/bin/python bench/bench_metrics.py`` (about a minute; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import report

AMQP = "amqp://guest:guest@127.0.0.1:5672/"
CASES = ("off", "metrics", "metrics-mp", "tracing", "both")


def child(broker: str, case: str, count: int) -> None:
    """Measure one case in this (fresh) process; print the rate."""
    with tempfile.TemporaryDirectory(prefix="qk-bench-metrics-") as directory:
        if case == "metrics-mp":  # before prometheus_client is imported, as a child has it
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        rate = measure(broker, case, count, directory)
    print(json.dumps(rate))


def measure(broker: str, case: str, count: int, directory: str) -> float:
    if case in ("metrics", "metrics-mp", "both"):
        from queuekit.worker.metrics import enable_metrics

        enable_metrics()
    if case in ("tracing", "both"):
        from opentelemetry.sdk.trace import TracerProvider

        from queuekit.worker.tracing import enable_tracing

        enable_tracing(TracerProvider())
    from queuekit import connect

    url = f"sqlite:///{directory}/q.db" if broker == "sqlite" else AMQP
    name = f"bench-{uuid.uuid4().hex[:8]}"
    with connect(url, jobstore=f"sqlite:///{directory}/j.db") as conn:
        queue = conn.queue(name)
        try:
            queue.publish_many(range(count))
            start = time.perf_counter()
            done = queue.dispatch(lambda m: None, max_messages=count, handle_signals=False)
            elapsed = time.perf_counter() - start
        finally:
            conn.transport.delete(name)
    assert done == count, done
    return count / elapsed


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="messages per measurement")
    parser.add_argument("--reps", type=int, default=5)
    args = report.parse_args(parser, {"count": 300, "reps": 1})
    brokers = ["sqlite", *(["amqp"] if report.answers("127.0.0.1", 5672) else [])]
    rates: dict[tuple[str, str], list[float]] = {(b, c): [] for b in brokers for c in CASES}
    for _ in range(args.reps):
        for (broker, case), measured in rates.items():
            run = subprocess.run([sys.executable, __file__, "--child", broker, case,
                                  str(args.count)], capture_output=True, text=True,
                                 check=True)  # fmt: skip
            measured.append(json.loads(run.stdout.splitlines()[-1]))
    report.heading(
        "Metrics and tracing: no-op worker throughput",
        f"{args.count} messages per measurement, median of {args.reps}, each in a fresh "
        "process; ratio over 'off' of the same broker."
        + ("" if "amqp" in brokers else " RabbitMQ did not answer: its rows are left out."),
    )
    rows = []
    for broker in brokers:
        off = statistics.median(rates[broker, "off"])
        for case in CASES:
            rate = statistics.median(rates[broker, case])
            rows.append([broker, case, rate, report.ratio(rate, off)])
    report.table(["broker", "instruments", "msg/s", "vs off"], rows)


if __name__ == "__main__":
    main()
