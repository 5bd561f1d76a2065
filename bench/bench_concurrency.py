"""Worker concurrency on RabbitMQ: ``worker run -c 8`` against ``-c 1``, Celery and dramatiq.

Run by hand (scripts/brokers up rabbitmq first)::

    .venv/bin/python bench/bench_concurrency.py [--jobs 400] [--noop 10000] [--runs 5]
    .venv/bin/python bench/bench_concurrency.py --quick   # smoke run: 40 and 300 jobs, one run

Every row is a real worker process started by this script on a queue whose jobs were all
published before it started: queuekit's ``worker run`` (``-c 8`` with a sync ``work()``,
``-c 8`` with an ``async def work()``, ``-c 1``), Celery (``--pool threads -c 8``,
``acks_late``) and dramatiq (``-p 1 -t 8``). Sleep rows run ``--jobs`` jobs that each wait
``--sleep`` s (``time.sleep``, or ``await asyncio.sleep`` for the async row), the I/O-bound
work concurrency is for; their ideal is concurrency / sleep (160 jobs/s at 8 x 50 ms).
No-op rows run ``--noop`` empty jobs: what the handoff to threads or tasks costs.

The rate is jobs / (first job started -> last job done), timed inside the jobs (a lock
around the counters, the jobs run in threads), so start-up and shutdown are not counted.
Peak RSS is the largest sum of resident memory over the worker's process tree (the process
and its children), sampled with psutil every 20 ms from the moment it is started until its
last job is done; a forked child's pages shared with its parent count twice (dramatiq).
Prefetch is ``--prefetch`` for all (Celery: its multiplier times the concurrency). Rows run
round-robin, one of each per run, so a load change on the machine hits every row alike.

This file is also the workers' module: queuekit loads ``bench_concurrency:SyncJob`` (or
``AsyncJob``); Celery (``-A bench_concurrency:app``) and dramatiq (``bench_concurrency``)
import it with ``QK_BENCH_WORKER`` set. Peer rows appear only when those are installed
(``bench/requirements.txt``). queuekit's job store is a fresh SQLite file per invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

URL = "amqp://guest:guest@127.0.0.1:5672/"
HERE = os.path.dirname(os.path.abspath(__file__))
MiB = 1024 * 1024


# -- inside the worker processes -------------------------------------------------------


class JobClock:
    """Counts jobs from any thread; after the last, writes first start -> last done, and
    the CPU time the process spent meanwhile, to ``out`` (atomically: the bench polls for
    the file)."""

    def __init__(self, count: int, out: str) -> None:
        self.count, self.out = count, out
        self._lock = threading.Lock()
        self.done = 0
        self.first = 0.0
        self.first_cpu = 0.0

    def started(self) -> None:
        with self._lock:
            if self.first == 0.0:
                self.first = time.perf_counter()
                self.first_cpu = time.process_time()

    def finished(self) -> None:
        with self._lock:
            self.done += 1
            if self.done != self.count:
                return
            seconds = time.perf_counter() - self.first
            cpu = time.process_time() - self.first_cpu
        with open(self.out + ".tmp", "w") as f:
            f.write(f"{seconds!r} {cpu!r}")
        os.replace(self.out + ".tmp", self.out)


CLOCK = JobClock(int(os.environ.get("QK_BENCH_N", "0")), os.environ.get("QK_BENCH_OUT", ""))
SLEEP = float(os.environ.get("QK_BENCH_SLEEP", "0"))


def sync_job() -> None:
    CLOCK.started()
    if SLEEP:
        time.sleep(SLEEP)
    CLOCK.finished()


def queuekit_classes() -> dict[str, type]:
    """``worker run bench_concurrency:SyncJob --queue Q -c N`` (threads) and ``AsyncJob``
    (tasks on an event loop). Defined only in queuekit's worker, so that importing this
    module does not add queuekit to a peer worker's memory."""
    from queuekit import AbstractQueue, Message

    class SyncJob(AbstractQueue):
        def work(self, message: Message) -> None:
            sync_job()

    class AsyncJob(AbstractQueue):
        async def work(self, message: Message) -> None:
            CLOCK.started()
            if SLEEP:
                await asyncio.sleep(SLEEP)
            CLOCK.finished()

    return {"SyncJob": SyncJob, "AsyncJob": AsyncJob}


def celery_app(queue: str) -> Any:
    """The Celery app, in the bench (to publish) and in the worker (``-A ...:app``)."""
    import celery

    app = celery.Celery("bench_concurrency", broker=URL, set_as_current=False)
    app.conf.update(
        task_ignore_result=True,
        task_default_queue=queue,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name="bench.job", acks_late=True, shared=False)
    def job(n: int) -> None:
        sync_job()

    return app


def _worker_module() -> None:
    """Run on import inside a worker process started by this script."""
    kind, queue = os.environ["QK_BENCH_WORKER"], os.environ.get("QK_BENCH_QUEUE", "")
    if kind == "queuekit":
        globals().update(queuekit_classes())
    elif kind == "celery":
        globals()["app"] = celery_app(queue)
    elif kind == "dramatiq":
        import dramatiq
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        dramatiq.set_broker(RabbitmqBroker(url=URL))

        def bench_job(n: int) -> None:
            sync_job()

        dramatiq.actor(actor_name="bench_job", queue_name=queue, max_retries=0)(bench_job)


if __name__ != "__main__" and os.environ.get("QK_BENCH_WORKER"):
    _worker_module()


# -- in the bench: publish, start a worker, time it, measure it, clean up ---------------


@dataclass
class Result:
    rate: float  # jobs/s
    rss: float  # peak RSS of the process tree, bytes
    cpu: float  # CPU seconds per job of the process that ran the jobs


class TreeMemory:
    """Samples the summed RSS of a process and its descendants in a thread; keeps the peak."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        import psutil

        self._psutil, self._root = psutil, psutil.Process(pid)
        self.every, self.peak = every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                tree = [self._root, *self._root.children(recursive=True)]
            except self._psutil.Error:
                return
            for process in tree:
                with contextlib.suppress(self._psutil.Error):  # gone since the listing
                    total += process.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_worker(command: list[str], env: dict[str, str], count: int, timeout: float) -> Result:
    """Start a worker, wait until its last job wrote the time, stop it; rate and peak RSS."""
    out = os.path.join(tempfile.gettempdir(), f"qk-bench-{uuid.uuid4().hex}")
    env = {**os.environ, **env, "QK_BENCH_OUT": out, "QK_BENCH_N": str(count)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))
    with open(out + ".log", "w") as log:
        proc = subprocess.Popen(command, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT)
    memory = TreeMemory(proc.pid)
    try:
        deadline = time.monotonic() + timeout
        while not os.path.exists(out):  # the bench waits for the worker, not a sync point
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(out + ".log") as log:
                    raise RuntimeError(f"{' '.join(command[:6])} failed: {log.read()[-2000:]}")
            time.sleep(0.02)
        peak = memory.stop()
        with open(out) as f:
            seconds, cpu = map(float, f.read().split())
        return Result(count / seconds, peak, cpu / count)
    finally:
        memory.stop()
        # A Celery worker's warm shutdown takes seconds after its last job (untimed); it
        # gets a short grace, then is killed: its queue is deleted next anyway.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for path in (out, out + ".log"):
            if os.path.exists(path):
                os.remove(path)


def fresh_queue() -> str:
    return f"bench-conc-{uuid.uuid4().hex[:12]}"


def drop_amqp(queues: list[str], exchanges: tuple[str, ...] = ()) -> None:
    import kombu

    with kombu.Connection(URL) as conn:
        channel = conn.default_channel
        for name in queues:
            channel.queue_delete(name)
        for name in exchanges:
            channel.exchange_delete(name)


def queuekit_worker(
    count: int, sleep: float, concurrency: int, prefetch: int, asynchronous: bool
) -> Result:
    from queuekit import connect

    queue = fresh_queue()
    conn = connect(URL)
    try:
        q = conn.queue(queue)
        for start in range(0, count, 1000):
            q.publish_many([{"n": n} for n in range(start, min(count, start + 1000))])
        worker = shutil.which("worker", path=os.path.dirname(sys.executable)) or "worker"
        cls = "bench_concurrency:AsyncJob" if asynchronous else "bench_concurrency:SyncJob"
        command = [worker, "run", cls, "--url", URL, "--queue", queue]
        command += ["-c", str(concurrency), "--prefetch", str(prefetch)]
        env = {"QK_BENCH_WORKER": "queuekit", "QK_BENCH_SLEEP": repr(sleep)}
        return run_worker(command, env, count, timeout=60 + count * sleep / concurrency * 3)
    finally:
        conn.transport.delete(queue)
        conn.close()


def celery_worker(count: int, sleep: float, concurrency: int, prefetch: int) -> Result:
    queue = fresh_queue()
    app = celery_app(queue)
    task = app.tasks["bench.job"]
    try:
        with app.producer_or_acquire() as producer:
            for n in range(count):
                task.apply_async((n,), queue=queue, producer=producer)
        app.close()
        multiplier = max(1, math.ceil(prefetch / concurrency))
        command = [sys.executable, "-m", "celery", "-A", "bench_concurrency:app", "worker"]
        command += ["--pool", "threads", "-c", str(concurrency)]
        command += [f"--prefetch-multiplier={multiplier}", "-Q", queue]
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        command += ["--loglevel=WARNING"]
        env = {"QK_BENCH_WORKER": "celery", "QK_BENCH_QUEUE": queue}
        env["QK_BENCH_SLEEP"] = repr(sleep)
        return run_worker(command, env, count, timeout=60 + count * sleep / concurrency * 3)
    finally:
        drop_amqp([queue], (queue,))


def dramatiq_worker(count: int, sleep: float, threads: int, prefetch: int) -> Result:
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    queue = fresh_queue()
    try:
        broker = RabbitmqBroker(url=URL)
        broker.declare_queue(queue)
        for n in range(count):
            message = dramatiq.Message(
                queue_name=queue, actor_name="bench_job", args=(n,), kwargs={}, options={}
            )
            broker.enqueue(message)
        broker.close()
        command = [sys.executable, "-m", "dramatiq", "bench_concurrency"]
        command += ["--processes", "1", "--threads", str(threads), "--queues", queue]
        env = {"QK_BENCH_WORKER": "dramatiq", "QK_BENCH_QUEUE": queue}
        env["QK_BENCH_SLEEP"] = repr(sleep)
        env["dramatiq_queue_prefetch"] = str(prefetch)  # its default: 2 x threads
        return run_worker(command, env, count, timeout=60 + count * sleep / threads * 3)
    finally:
        drop_amqp([queue, f"{queue}.DQ", f"{queue}.XQ"])


# -- the table -------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    run: Callable[[], Result]
    ideal: float | None = None  # jobs/s if every worker slot slept back to back
    kind: str = ""  # "qk-sleep", "peer", "qk-noop"


def main() -> None:
    import report

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=400, help="sleeping jobs per sleep row")
    parser.add_argument("--sleep", type=float, default=0.05, help="seconds each job waits")
    parser.add_argument("--noop", type=int, default=10000, help="jobs per no-op row")
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--prefetch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-peers", action="store_true", help="skip the Celery/dramatiq rows")
    args = report.parse_args(parser, {"jobs": 40, "noop": 300, "runs": 1})
    n, s, c, p, noop = args.jobs, args.sleep, args.concurrency, args.prefetch, args.noop
    # queuekit's job store for this invocation only: publisher and workers share it, and
    # other work on the machine's per-host default store does not add to the noise
    store = tempfile.mkdtemp(prefix="qk-bench-conc-")
    os.environ["QUEUEKIT_JOBSTORE"] = f"sqlite:///{store}/jobs.db"

    rows = [
        Row(f"queuekit `worker run -c {c}`, sync `work()`", ideal=c / s, kind="qk-sleep",
            run=lambda: queuekit_worker(n, s, c, p, asynchronous=False)),
        Row(f"queuekit `worker run -c {c}`, `async def work()`", ideal=c / s, kind="qk-sleep",
            run=lambda: queuekit_worker(n, s, c, p, asynchronous=True)),
        Row("queuekit `worker run -c 1`, sync `work()`", ideal=1 / s, kind="qk-sleep",
            run=lambda: queuekit_worker(n, s, 1, p, asynchronous=False)),
    ]  # fmt: skip
    absent = [] if args.no_peers else report.missing("celery", "dramatiq")
    if not args.no_peers and "celery" not in absent:
        rows.append(Row(f"Celery `--pool threads -c {c}`, acks_late", ideal=c / s, kind="peer",
                        run=lambda: celery_worker(n, s, c, p)))  # fmt: skip
    if not args.no_peers and "dramatiq" not in absent:
        rows.append(Row(f"dramatiq `-p 1 -t {c}`", ideal=c / s, kind="peer",
                        run=lambda: dramatiq_worker(n, s, c, p)))  # fmt: skip
    rows += [
        Row("queuekit `worker run -c 1`, no-op", kind="qk-noop",
            run=lambda: queuekit_worker(noop, 0, 1, p, asynchronous=False)),
        Row(f"queuekit `worker run -c {c}`, no-op", kind="qk-noop",
            run=lambda: queuekit_worker(noop, 0, c, p, asynchronous=False)),
        Row(f"queuekit `worker run -c {c}`, async no-op", kind="qk-noop",
            run=lambda: queuekit_worker(noop, 0, c, p, asynchronous=True)),
    ]  # fmt: skip

    results: dict[str, list[Result]] = {row.label: [] for row in rows}
    try:
        for _ in range(args.runs):  # round-robin: one of each row per run
            for row in rows:
                results[row.label].append(row.run())
    finally:
        shutil.rmtree(store, ignore_errors=True)
    rate = {label: statistics.median(r.rate for r in runs) for label, runs in results.items()}
    rss = {label: statistics.median(r.rss for r in runs) for label, runs in results.items()}
    cpu = {label: statistics.median(r.cpu for r in runs) for label, runs in results.items()}
    peers = [row for row in rows if row.kind == "peer"]
    noop_one = rows[-3].label

    def compared(row: Row) -> list[str]:
        """Ratios: to the ideal, to each peer (concurrent sleep rows), to ``-c 1`` (no-op)."""
        cells = [report.ratio(rate[row.label], row.ideal) if row.ideal else ""]
        for peer in peers:
            same = row.kind != "peer" and row.ideal == peer.ideal
            cells.append(report.ratio(rate[row.label], rate[peer.label]) if same else "")
        noop_ratio = row.kind == "qk-noop" and row.label != noop_one
        cells.append(report.ratio(rate[row.label], rate[noop_one]) if noop_ratio else "")
        return cells

    report.heading(
        "Worker concurrency benchmark",
        f"RabbitMQ at {URL.replace('guest:guest', 'guest:***')}; sleep rows: {n:,} jobs of "
        f"{s * 1000:g} ms each, no-op rows: {noop:,} jobs; prefetch {p}; median of "
        f"{args.runs} runs, rows round-robin. Rate: jobs / (first job started -> last job "
        "done), timed inside the jobs. Peak RSS: the largest summed RSS of the worker's "
        "process tree, sampled every 20 ms from start to its last job (median of the runs). "
        "CPU/job: the CPU time of the process that ran the jobs, first job to last, per job "
        "(no-op rows; steadier than a rate on a shared machine). "
        + ("Peer rows skipped (--no-peers)." if args.no_peers else report.skipped(absent)),
    )
    header = ["worker", "jobs/s", "ideal", "/ ideal"]
    header += [f"/ {peer.label.split()[0]}" for peer in peers]
    header += ["/ `-c 1` no-op", "CPU µs/job", "peak RSS MiB", "runs (jobs/s)"]
    report.table(
        header,
        [
            [row.label, rate[row.label], row.ideal if row.ideal else "", *compared(row),
             f"{cpu[row.label] * 1e6:.0f}" if row.kind == "qk-noop" else "",
             f"{rss[row.label] / MiB:.1f}",
             ", ".join(f"{r.rate:,.1f}" for r in results[row.label])]
            for row in rows
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
