"""What the queues are doing now: one snapshot for ``worker status`` and the dashboard.

A snapshot joins three sources, each for what it alone knows:

- the **broker** (:meth:`~queuekit.spi.transport.Transport.stats`): ready, delayed (native
  delay), in flight, and the oldest ready message's age, each ``None`` where the adapter
  cannot count (STOMP counts nothing; AMQP counts ready only; SQLite counts all four);
- the **job store**: its delayed store and failed store per queue
  (:meth:`~queuekit.jobstore.base.JobStore.queue_counts`), and which queues are paused;
- the **worker registry**: the live workers (heard from within the heartbeat timeout) with
  their host, pid, concurrency, counts, messages in hand and memory.

``None`` means "the broker cannot tell" and is shown as "unknown", never as a zero: an
operator must not read an empty queue into a broker that cannot count. A broker that cannot
be reached leaves its counts ``None`` and says why in ``error``; the rest is still shown.
Reading is all a snapshot does: it never changes a queue (a passive count on every broker).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from ..jobstore.base import StoreCounts, WorkerInfo
from ..spi.errors import QueuekitError
from ..spi.transport import QueueStats
from ..spi.urls import redact
from .broker import Broker
from .registry import worker_timeout


@dataclass(frozen=True)
class QueueStatus:
    """One queue. ``delayed`` adds the broker's native delayed messages (``None`` when it
    has native delay it cannot count) to the job store's; ``working`` is what live workers
    reported in hand at their last heartbeat; ``latency`` the oldest ready message's age in
    seconds (0.0: none waits); ``paused`` whether its workers are told to take nothing."""

    name: str
    ready: int | None
    delayed: int | None
    in_flight: int | None
    working: int
    failed: int
    latency: float | None
    workers: int
    paused: bool = False
    error: str | None = None


@dataclass(frozen=True)
class Status:
    """A snapshot; :meth:`as_json` is what ``worker status --json`` prints."""

    broker: str
    jobstore: str
    taken_at: float
    heartbeat_timeout: float
    queues: tuple[QueueStatus, ...]
    workers: tuple[WorkerInfo, ...]

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        for worker in data["workers"]:
            worker["current"] = list(worker["current"])
            del worker["slot"]  # the workers limit's bookkeeping, not a fact about the worker
        return data


def snapshot(broker: Broker, queues: Iterable[str] = (), *, timeout: float | None = None) -> Status:
    """The status of ``queues`` plus every queue the registry or the job store knows.

    ``timeout``: seconds without a heartbeat after which a worker is left out as dead
    (default ``QUEUEKIT_WORKER_TIMEOUT``, as the workers limit uses).
    """
    timeout = worker_timeout() if timeout is None else timeout
    jobs = broker.jobs
    live = jobs.workers(timeout=timeout)
    stored = jobs.queue_counts()
    paused = jobs.paused_queues()
    names = sorted({*queues, *(w.queue for w in live), *stored, *paused})
    return Status(
        broker=broker.url.redacted(),
        jobstore=jobs.url.redacted(),
        taken_at=time.time(),
        heartbeat_timeout=timeout,
        queues=tuple(
            _queue(broker, n, stored.get(n, StoreCounts()), live, n in paused) for n in names
        ),
        workers=tuple(live),
    )


def _queue(
    broker: Broker, name: str, stored: StoreCounts, live: list[WorkerInfo], paused: bool
) -> QueueStatus:
    transport = broker.transport
    error = None
    try:
        stats = transport.stats(name)
    except QueuekitError as exc:
        stats, error = QueueStats(), redact(str(exc))
    if not transport.capabilities.delay:  # every delayed message is in the job store
        delayed: int | None = stored.delayed
    elif stats.delayed is None:
        delayed = None
    else:
        delayed = stats.delayed + stored.delayed
    mine = [w for w in live if w.queue == name]
    return QueueStatus(
        name=name,
        ready=stats.ready,
        delayed=delayed,
        in_flight=stats.in_flight,
        working=sum(len(w.current) for w in mine),
        failed=stored.failed,
        latency=stats.latency,
        workers=len(mine),
        paused=paused,
        error=error,
    )
