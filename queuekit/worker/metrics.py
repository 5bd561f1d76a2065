"""Prometheus metrics (``pip install 'queuekit[metrics]'``): an instrument on the worker's
pipeline, a publish counter on the producer side, and ``/metrics`` over HTTP.

``worker run ... --metrics-port 9191`` calls :func:`enable_metrics` and :func:`serve_metrics`
(a worker with ``PROMETHEUS_MULTIPROC_DIR`` set enables them without serving, see below);
a producer process calls :func:`enable_metrics` and exposes prometheus_client's default
registry the way its web framework does. Every metric is documented in
``docs/observability.md``; names and labels follow Prometheus conventions (``_total``,
``_seconds``, base units); labels are the queue, the handler class and the outcome only, so
their number stays bounded (never a message id or a user's job name).

**Several processes** (``worker run --processes N``): prometheus_client's multiprocess mode.
The supervisor enters :func:`serving_children` before its children start: it sets
``PROMETHEUS_MULTIPROC_DIR`` to a fresh directory of its own (prometheus_client reads it when
first imported, so each child writes its values there), serves ``/metrics`` as the sum over
every file in it, and gives the supervisor the call to make with the pid of each child that
exits, so that child's live gauges leave the sum while its counters and histograms stay
counted. The children run ``worker run`` without ``--metrics-port``: with the variable set
they record metrics into that directory and serve nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

from ..features.broker import PublishObserver, observe_publishing
from ..jobstore.base import JobStore
from ..spi.errors import QueuekitError
from .observers import Instrument, add_instrument
from .pipeline import Attempt

#: Where prometheus_client's multiprocess mode keeps every process's values.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds between refreshes of the job-store gauges (one grouped count each time).
STORE_REFRESH = 15.0
#: Queue wait spans milliseconds to hours (a backlog, a delay, a retry later).
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                600, 1800, 3600, 4 * 3600, float("inf"))  # fmt: skip

PROCESSED = Counter(
    "queuekit_messages_processed",
    "Messages settled by workers, by outcome: done, retried, failed or rejected.",
    ["queue", "handler", "outcome"],
)
PROCESSING = Histogram(
    "queuekit_message_processing_seconds",
    "Seconds from an attempt's start (before validate()) until it is settled.",
    ["queue", "handler"],
)
QUEUE_WAIT = Histogram(
    "queuekit_message_queue_wait_seconds",
    "Seconds from publish (or from when a delayed message fell due) to the attempt's start.",
    ["queue", "handler"],
    buckets=WAIT_BUCKETS,
)
IN_PROGRESS = Gauge(
    "queuekit_messages_in_progress",
    "Attempts started and not yet settled.",
    ["queue", "handler"],
    multiprocess_mode="livesum",
)
DELAYED = Gauge(
    "queuekit_jobstore_delayed_messages",
    "Messages waiting in the job store's delayed store (brokers without native delay).",
    ["queue"],
    multiprocess_mode="mostrecent",
)
FAILED = Gauge(
    "queuekit_jobstore_failed_messages",
    "Dead letters in the job store's failed store.",
    ["queue"],
    multiprocess_mode="mostrecent",
)
PUBLISHED = Counter(
    "queuekit_messages_published",
    "Messages published by the client (Queue.publish, publish_many), by queue.",
    ["queue"],
)


class Metrics(Instrument):
    """Counts and times every message of one worker's queue; see the module docstring."""

    def __init__(self, queue: str, handler: str) -> None:
        self.queue = queue
        self._processed = {
            outcome: PROCESSED.labels(queue, handler, outcome)
            for outcome in ("done", "retried", "failed", "rejected")
        }
        self._processing = PROCESSING.labels(queue, handler)
        self._wait = QUEUE_WAIT.labels(queue, handler)
        self._in_progress = IN_PROGRESS.labels(queue, handler)
        #: perf_counter() at each running attempt's start, by identity (dict operations
        #: are atomic: attempts start and end in several threads under -c N).
        self._began: dict[int, float] = {}
        self._next_refresh = 0.0
        self._seen: set[str] = set()

    def started(self, attempt: Attempt) -> None:
        meta = attempt.message.metadata
        since = max(meta.created_at, meta.not_before or 0.0)
        self._wait.observe(max(0.0, time.time() - since))
        self._in_progress.inc()
        self._began[id(attempt)] = time.perf_counter()

    def retrying(self, attempt: Attempt, error: str, trace: str | None) -> None:
        self._end(attempt, "retried")
        self._next_refresh = 0.0  # it may wait in the delayed store: count at once

    def failing(self, attempt: Attempt, reason: str, trace: str | None) -> None:
        self._end(attempt, "rejected" if attempt.rejected else "failed")
        self._next_refresh = 0.0  # the failed store grew: count at once

    def finished(self, attempt: Attempt, *, result: object, error: str | None) -> None:
        if error is None:
            self._end(attempt, "done")

    def _end(self, attempt: Attempt, outcome: str) -> None:
        self._processed[outcome].inc()
        began = self._began.pop(id(attempt), None)
        if began is not None:  # refused before it started: counted, not timed
            self._processing.observe(time.perf_counter() - began)
            self._in_progress.dec()

    def periodic(self, jobs: JobStore) -> None:
        now = time.monotonic()
        if now < self._next_refresh:
            return
        self._next_refresh = now + STORE_REFRESH
        try:
            counts = jobs.queue_counts()
        except QueuekitError:
            return  # the store is away: the gauges keep their last values until it is back
        for queue in self._seen - counts.keys():
            DELAYED.labels(queue).set(0)
            FAILED.labels(queue).set(0)
        for queue, count in counts.items():
            DELAYED.labels(queue).set(count.delayed)
            FAILED.labels(queue).set(count.failed)
        self._seen = set(counts)


class PublishMetrics(PublishObserver):
    """Counts what the client publishes, once the broker holds it."""

    @contextmanager
    def publishing(
        self, queue: str, headers: dict[str, str], count: int, system: str
    ) -> Iterator[None]:
        yield
        PUBLISHED.labels(queue).inc(count)


def _metrics(queue: str, handler: str, system: str) -> Metrics:
    return Metrics(queue, handler)


_PUBLISH = PublishMetrics()
_lock = threading.Lock()


def enable_metrics() -> None:
    """Count publishes and give every worker built from now on the :class:`Metrics`
    instrument, in this process. Idempotent."""
    with _lock:
        observe_publishing(_PUBLISH)
        add_instrument(_metrics)


def serve_metrics(port: int, addr: str = "0.0.0.0") -> Callable[[], None]:
    """Serve ``/metrics`` on ``port`` from a daemon thread: this process's metrics, or with
    ``PROMETHEUS_MULTIPROC_DIR`` set, the sum over every process writing there. Returns the
    call that stops serving."""
    registry = REGISTRY
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server, _ = start_http_server(port, addr=addr, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop


@contextmanager
def serving_children(port: int, addr: str = "0.0.0.0") -> Iterator[Callable[[int], None]]:
    """For a supervisor of worker processes: point ``PROMETHEUS_MULTIPROC_DIR`` (in this
    process's environment, which its children inherit) at a fresh private directory, serve
    the sum of every child's metrics on ``port``, and yield the call to make with each exited
    child's pid. On leaving: stop serving, remove the directory, restore the variable.
    ``OSError`` when the port cannot be bound (nothing is left behind then)."""
    previous = os.environ.get(MULTIPROC_ENV)
    directory = tempfile.mkdtemp(prefix="queuekit-metrics-")
    os.environ[MULTIPROC_ENV] = directory

    def exited(pid: int) -> None:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]

    try:
        stop = serve_metrics(port, addr)
        try:
            yield exited
        finally:
            stop()
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(directory, ignore_errors=True)
