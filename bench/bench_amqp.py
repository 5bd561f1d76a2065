"""amqp:// throughput against raw kombu, on the same RabbitMQ, in one run.

Run by hand (scripts/brokers up rabbitmq first)::

    .venv/bin/python bench/bench_amqp.py [--messages 10000] [--runs 5] [--prefetch 64]
    .venv/bin/python bench/bench_amqp.py --quick      # smoke run: 300 messages, one run

Prints messages per second, the median of ``--runs`` runs per row. Every row uses durable
queues and persistent 100-byte messages; consumers ack each message. Publishing rows wait
for the broker (confirms) where they say so; "raw kombu confirmed" is kombu's
``confirm_publish`` transport option, one round trip per message.

Worker rows (queuekit ``Queue.dispatch``, Celery, dramatiq) process ``--messages`` no-op jobs
that were published before the worker started; the rate is jobs / (first job started -> last
job done), timed inside the job, so worker start-up is not counted. Celery and dramatiq run as
real worker processes started by this script (this file is also their app module, selected
by the ``QK_BENCH_WORKER`` environment variable); their rows appear only if those packages are
installed (``bench/requirements.txt``; never a queuekit dependency).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import amqp
import kombu
import report

from queuekit import connect
from queuekit.adapters.amqp import AMQPTransport
from queuekit.spi import Outgoing
from queuekit.spi.urls import TransportURL

URL = "amqp://guest:guest@127.0.0.1:5672/"
BODY = b"x" * 100


def fresh_queue() -> str:
    return f"bench-amqp-{uuid.uuid4().hex}"


#: A single priority band: one broker queue per queue, as before priority bands; the rows
#: with it measure what the default bands cost a queue that never sees a priority.
ONE_BAND = "?priority_bands="


def transport(prefetch: int = 64, query: str = "") -> AMQPTransport:
    return AMQPTransport(TransportURL.parse(URL + query), prefetch=prefetch)


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


#: How queuekit declares a work queue (a classic queue with priorities)...
QUEUEKIT_QUEUE = {"x-max-priority": 10}
#: ... and a version-2 classic queue without them (RabbitMQ 3.10+; the only classic queue
#: of 4.x), whose persistent messages are confirmed faster.
CLASSIC_V2 = {"x-queue-version": 2}


def broker_window(count: int, window: int, arguments: dict[str, Any] = QUEUEKIT_QUEUE) -> float:
    """The broker alone: one thread on py-amqp (no queuekit, no threads) keeps ``window``
    confirmed publishes unconfirmed at a time, to a queue declared with ``arguments``.
    What the broker does with 4 in flight bounds any 4 publishing threads."""
    queue = fresh_queue()
    with kombu.Connection(URL) as conn:
        channel = conn.default_channel  # a py-amqp channel
        channel.queue_declare(queue, durable=True, auto_delete=False, arguments=arguments)
        channel.confirm_select()
        confirmed = 0

        def on_ack(tag: int, multiple: bool) -> None:
            nonlocal confirmed
            confirmed = tag if multiple else max(confirmed, tag)

        channel.events["basic_ack"].add(on_ack)
        sent, started = 0, time.perf_counter()
        while confirmed < count:
            while sent < count and sent - confirmed < window:
                channel.basic_publish(amqp.Message(BODY, delivery_mode=2), "", queue)
                sent += 1
            conn.drain_events(timeout=10)
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


def qk_receive(count: int, prefetch: int, query: str = "") -> float:
    queue = fresh_queue()
    fill(queue, count)
    t = transport(prefetch, query)
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


def qk_dispatch(count: int, prefetch: int, query: str = "") -> float:
    conn = connect(URL + query, prefetch=prefetch)
    q = conn.queue(fresh_queue())
    for start in range(0, count, 1000):
        q.publish_many([{"n": i} for i in range(start, min(count, start + 1000))])
    clock = JobClock(count)
    done = q.dispatch(clock.job, max_messages=count, handle_signals=False)
    assert done == count, done
    conn.transport.delete(q.name)
    conn.close()
    return count / clock.seconds()


# -- worker rows: first job started -> last job done, timed inside the job --------------


class JobClock:
    """Counts jobs; on the last one, knows (and optionally writes) first start -> last done."""

    def __init__(self, count: int, out: str = "") -> None:
        self.count, self.out = count, out
        self.done = 0
        self.first = self.last = 0.0

    def job(self, *_: object) -> None:
        if self.done == 0:
            self.first = time.perf_counter()
        # the no-op job itself: nothing
        self.done += 1
        if self.done == self.count:
            self.last = time.perf_counter()
            if self.out:
                with open(self.out + ".tmp", "w") as f:
                    f.write(repr(self.last - self.first))
                os.replace(self.out + ".tmp", self.out)

    def seconds(self) -> float:
        assert self.done == self.count, (self.done, self.count)
        return self.last - self.first


def drop_amqp(queues: list[str], exchanges: tuple[str, ...] = ()) -> None:
    with kombu.Connection(URL) as conn:
        channel = conn.default_channel
        for name in queues:
            channel.queue_delete(name)
        for name in exchanges:
            channel.exchange_delete(name)


def run_worker(command: list[str], env: dict[str, str], out: str, timeout: float) -> float:
    """Start a worker process, wait until its last job wrote ``out``, stop it."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, **env, "QK_BENCH_OUT": out}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    with open(out + ".log", "w") as log:
        proc = subprocess.Popen(command, cwd=here, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not os.path.exists(out):  # the bench waits for the worker, not a sync point
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(out + ".log") as log:
                    raise RuntimeError(f"{command[:4]} failed: {log.read()[-2000:]}")
            time.sleep(0.05)
        with open(out) as f:
            return float(f.read())
    finally:
        # The number is in. A Celery worker then spends 7-10 s in its warm shutdown after
        # closing its channel (untimed, but most of a --quick run), so it gets a short grace
        # and is then killed; its queue is deleted next anyway.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for path in (out, out + ".log"):
            if os.path.exists(path):
                os.remove(path)


def out_file() -> str:
    return os.path.join("/tmp", f"qk-bench-{uuid.uuid4().hex}")


def celery_worker(count: int, prefetch: int, acks_late: bool) -> float:
    queue = fresh_queue()
    app = celery_app(queue, acks_late)
    task = app.tasks["bench.noop"]
    with app.producer_or_acquire() as producer:
        for i in range(count):
            task.apply_async((i,), queue=queue, producer=producer)
    app.close()
    command = [sys.executable, "-m", "celery", "-A", "bench_amqp:app", "worker"]
    command += ["--pool=solo", "--concurrency=1", f"--prefetch-multiplier={prefetch}"]
    command += ["-Q", queue, "--without-gossip", "--without-mingle", "--without-heartbeat"]
    command += ["--loglevel=WARNING"]
    env = {"QK_BENCH_WORKER": "celery", "QK_BENCH_QUEUE": queue, "QK_BENCH_N": str(count)}
    env["QK_BENCH_ACKS_LATE"] = "1" if acks_late else "0"
    try:
        seconds = run_worker(command, env, out_file(), timeout=60 + count / 100)
    finally:
        drop_amqp([queue], (queue,))
    return count / seconds


def dramatiq_worker(count: int, prefetch: int) -> float:
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    queue = fresh_queue()
    broker = RabbitmqBroker(url=URL)
    broker.declare_queue(queue)
    for i in range(count):
        message = dramatiq.Message(
            queue_name=queue, actor_name="bench_noop", args=(i,), kwargs={}, options={}
        )
        broker.enqueue(message)
    broker.close()
    command = [sys.executable, "-m", "dramatiq", "bench_amqp", "--processes", "1"]
    command += ["--threads", "1", "--queues", queue]
    env = {"QK_BENCH_WORKER": "dramatiq", "QK_BENCH_QUEUE": queue, "QK_BENCH_N": str(count)}
    env["dramatiq_queue_prefetch"] = str(prefetch)  # default would be 2 x threads
    try:
        seconds = run_worker(command, env, out_file(), timeout=60 + count / 100)
    finally:
        drop_amqp([queue, f"{queue}.DQ", f"{queue}.XQ"])
    return count / seconds


def celery_app(queue: str, acks_late: bool) -> Any:
    """The Celery app, in the bench (to publish) and in the worker (``-A bench_amqp:app``)."""
    import celery

    app = celery.Celery("bench_amqp", broker=URL, set_as_current=False)
    app.conf.update(
        task_ignore_result=True,
        task_default_queue=queue,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    clock = JobClock(int(os.environ.get("QK_BENCH_N", "0")), os.environ.get("QK_BENCH_OUT", ""))

    @app.task(name="bench.noop", acks_late=acks_late, shared=False)
    def noop(n: int) -> None:
        clock.job(n)

    return app


def _worker_module() -> None:
    """Run on import inside a Celery/dramatiq worker process started by this script."""
    kind, queue = os.environ["QK_BENCH_WORKER"], os.environ["QK_BENCH_QUEUE"]
    if kind == "celery":
        globals()["app"] = celery_app(queue, os.environ["QK_BENCH_ACKS_LATE"] == "1")
    elif kind == "dramatiq":
        import dramatiq
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        dramatiq.set_broker(RabbitmqBroker(url=URL))
        clock = JobClock(int(os.environ["QK_BENCH_N"]), os.environ["QK_BENCH_OUT"])

        def bench_noop(n: int) -> None:
            clock.job(n)

        dramatiq.actor(actor_name="bench_noop", queue_name=queue, max_retries=0)(bench_noop)


if __name__ != "__main__" and os.environ.get("QK_BENCH_WORKER"):
    _worker_module()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prefetch", type=int, default=64)
    parser.add_argument("--no-peers", action="store_true", help="skip the Celery/dramatiq rows")
    args = report.parse_args(parser, {"messages": 300, "runs": 1})
    n, p = args.messages, args.prefetch
    slow = max(min(n, 1000), n // 5)  # one-by-one confirmed publishing is ~10x slower
    rows: list[tuple[str, Callable[[], float]]] = [
        ("raw kombu publish, no confirms", lambda: kombu_publish(n, False)),
        ("raw kombu publish, confirmed one by one", lambda: kombu_publish(slow, True)),
        ("queuekit send (confirmed)", lambda: qk_send(slow)),
        ("queuekit send, 4 threads (confirmed)", lambda: qk_send_threads(slow)),
        ("py-amqp alone, 1 thread, 1 unconfirmed at a time", lambda: broker_window(slow, 1)),
        ("py-amqp alone, 1 thread, 4 unconfirmed at a time", lambda: broker_window(slow, 4)),
        (
            "py-amqp alone, version-2 queue, 1 unconfirmed at a time",
            lambda: broker_window(slow, 1, CLASSIC_V2),
        ),
        (
            "py-amqp alone, version-2 queue, 4 unconfirmed at a time",
            lambda: broker_window(slow, 4, CLASSIC_V2),
        ),
        ("queuekit send_many (confirmed batch of 1000)", lambda: qk_send_many(n)),
        ("queuekit Queue.publish_many (envelope, batch 1000)", lambda: qk_publish_many(n)),
        (f"raw kombu consume + ack (prefetch {p})", lambda: kombu_consume(n, p)),
        (f"queuekit receive + ack (prefetch {p})", lambda: qk_receive(n, p)),
        (f"queuekit receive + ack, one band (prefetch {p})", lambda: qk_receive(n, p, ONE_BAND)),
        (f"queuekit Queue.dispatch no-op (prefetch {p})", lambda: qk_dispatch(n, p)),
        (
            f"queuekit Queue.dispatch no-op, one band (prefetch {p})",
            lambda: qk_dispatch(n, p, ONE_BAND),
        ),
    ]
    absent = [] if args.no_peers else report.missing("celery", "dramatiq")
    if "celery" not in absent and not args.no_peers:
        rows += [
            (f"Celery worker no-op, acks_late (prefetch {p})", lambda: celery_worker(n, p, True)),
            (
                f"Celery worker no-op, default early ack (prefetch {p})",
                lambda: celery_worker(n, p, False),
            ),
        ]
    if "dramatiq" not in absent and not args.no_peers:
        rows += [(f"dramatiq worker no-op (prefetch {p})", lambda: dramatiq_worker(n, p))]
    # rows interleave run by run, so a load change on the machine hits every row alike
    rates: dict[str, list[float]] = {label: [] for label, _ in rows}
    for _ in range(args.runs):
        for label, function in rows:
            rates[label].append(function())
    results = {label: statistics.median(runs) for label, runs in rates.items()}
    report.heading(
        "AMQP benchmark",
        f"RabbitMQ at {URL.replace('guest:guest', 'guest:***')}, {n:,} messages "
        f"({slow:,} for one-by-one confirmed rows), median of {args.runs} runs. "
        + ("Peer rows skipped (--no-peers)." if args.no_peers else report.skipped(absent)),
    )
    report.table(
        ["benchmark", "median msg/s", "runs"],
        [[label, results[label], ", ".join(f"{r:,.0f}" for r in rates[label])] for label in rates],
    )
    bulk = results["queuekit send_many (confirmed batch of 1000)"]
    one = results["raw kombu publish, confirmed one by one"]
    worker = results[f"queuekit Queue.dispatch no-op (prefetch {p})"]
    receive = results[f"queuekit receive + ack (prefetch {p})"]
    raw = results[f"raw kombu consume + ack (prefetch {p})"]
    print(f"- bulk / kombu confirmed one by one: {report.ratio(bulk, one)} (target >= 3x)")
    threads = results["queuekit send, 4 threads (confirmed)"] / results["queuekit send (confirmed)"]
    print(f"- send from 4 threads / from 1 thread: {threads:.2f}x (target >= 3x)")
    alone = (
        results["py-amqp alone, 1 thread, 4 unconfirmed at a time"]
        / results["py-amqp alone, 1 thread, 1 unconfirmed at a time"]
    )
    print(f"- the broker alone, 4 unconfirmed / 1 unconfirmed: {alone:.2f}x (the ceiling above)")
    v2 = (
        results["py-amqp alone, version-2 queue, 4 unconfirmed at a time"]
        / results["py-amqp alone, version-2 queue, 1 unconfirmed at a time"]
    )
    print(f"- the same on a version-2 classic queue: {v2:.2f}x")
    print(f"- receive+ack / kombu consume+ack: {report.ratio(receive, raw)}")
    print(f"- dispatch worker / kombu consume+ack: {report.ratio(worker, raw)} (target >= 0.8x)")
    for label, rate in results.items():
        if label.startswith(("Celery", "dramatiq")):
            print(f"- dispatch worker / {label}: {report.ratio(worker, rate)} (target > 1x)")


if __name__ == "__main__":
    main()
