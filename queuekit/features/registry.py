"""The worker registry and the workers limit: who works on which queue, heard from when.

Every worker registers in the job store before it takes a message, writes a heartbeat from
its loop's periodic work (one write, every :data:`HEARTBEAT_EVERY` seconds at most) and
deregisters when it stops. The rows (host, pid, queue, concurrency, started, last heartbeat,
processed and failed counts, messages in hand, resident memory) are what ``worker status``
and the dashboard read: see :meth:`queuekit.jobstore.base.JobStore.workers`.

**Workers limit.** A queue class with ``workers_limit = N`` (or ``worker run
--workers-limit N``) runs at most N workers of its queue at once across every host sharing
the job store: a worker takes one of N slots when it registers (atomically, on every
backend). Over the limit it raises :class:`WorkersLimitReached`, which ``worker run`` turns
into one line and exit status :data:`OVER_LIMIT_EXIT`; with ``wait`` it polls, with capped
backoff, until a slot frees or it is told to stop.

**Dead workers.** A worker not heard from for the timeout (``QUEUEKIT_WORKER_TIMEOUT``
seconds, default :data:`DEFAULT_TIMEOUT`; every worker of a queue should use one value) is
dead: its slot frees and its row is deleted by the next worker that registers on its queue.
A worker killed with SIGKILL therefore holds its slot for one timeout at most. One that only
seemed dead (stopped by a debugger, or busy in a ``work()`` call longer than the timeout
while its loop runs one message at a time, so no heartbeat is written) finds its row gone at
its next heartbeat: it registers again, and when its queue's slots were taken meanwhile it
stops after the message in hand, so the limit holds again from then on.

**Hosts.** The host name is ``QUEUEKIT_HOSTNAME`` when set (containers with random host
names, tests that fake several hosts on one machine), else :func:`socket.gethostname`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence

from ..jobstore.base import JobStore, WorkerInfo
from ..spi.errors import ConfigurationError, QueuekitError

log = logging.getLogger("queuekit.worker")

#: ``worker run``'s exit status when the workers limit is reached (EX_TEMPFAIL: a slot may
#: free later). A supervisor must not restart such a worker at once, or it loops.
OVER_LIMIT_EXIT = 75
#: Seconds without a heartbeat after which a worker counts as dead.
DEFAULT_TIMEOUT = 60.0
#: Longest pause between heartbeats (shorter when a third of the timeout is shorter).
HEARTBEAT_EVERY = 2.0
_WAIT_FIRST, _WAIT_CAP = 0.25, 5.0  # polls for a free slot: first pause, longest pause
_NAP = 0.05  # seconds between checks of the stop flag while waiting


def hostname() -> str:
    """The host name this worker registers under (``QUEUEKIT_HOSTNAME`` overrides it)."""
    return os.environ.get("QUEUEKIT_HOSTNAME") or socket.gethostname()


def worker_timeout() -> float:
    """Seconds without a heartbeat after which a worker is dead (``QUEUEKIT_WORKER_TIMEOUT``)."""
    text = os.environ.get("QUEUEKIT_WORKER_TIMEOUT")
    if not text:
        return DEFAULT_TIMEOUT
    try:
        timeout = float(text)
    except ValueError:
        timeout = 0.0
    if not timeout > 0:
        raise ConfigurationError(
            f"QUEUEKIT_WORKER_TIMEOUT must be a number of seconds, not {text!r}"
        )
    return timeout


class WorkersLimitReached(QueuekitError):
    """This worker's queue has ``limit`` live workers already: it must not run now."""

    exit_code = OVER_LIMIT_EXIT

    def __init__(self, queue: str, limit: int, holders: Sequence[WorkerInfo]) -> None:
        self.queue, self.limit, self.holders = queue, limit, tuple(holders)
        who = ", ".join(f"{w.host} pid {w.pid}" for w in holders) or "holders just left"
        workers = "worker" if limit == 1 else "workers"
        super().__init__(f"queue {queue!r} has its limit of {limit} {workers} already ({who})")


class Registration:
    """One worker's row in the registry, kept fresh; see the module docstring.

    ``stop(reason)`` is how a worker that lost its slot is told to stop. Not thread-safe:
    the worker's loop calls it, from one thread.
    """

    def __init__(
        self,
        jobs: JobStore,
        queue: str,
        *,
        stop: Callable[[str], None],
        limit: int | None = None,
        wait: bool = False,
        concurrency: int = 1,
        timeout: float | None = None,
    ) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"a workers limit must be 1 or more, not {limit}")
        self.jobs, self.limit, self.wait, self._stop = jobs, limit, wait, stop
        self.timeout = worker_timeout() if timeout is None else timeout
        #: Seconds between heartbeats: the worker is heard from twice within a timeout.
        self.every = min(HEARTBEAT_EVERY, self.timeout / 3)
        self.info = WorkerInfo(uuid.uuid4().hex, queue, hostname(), os.getpid(), concurrency,
                               started_at=time.time())  # fmt: skip
        self._registered = False
        self._last_beat = 0.0  # time.monotonic() of the last write

    def register(self, stopping: Callable[[], bool]) -> bool:
        """Register, taking a slot when there is a limit; return whether the worker goes on
        (``False``: ``stopping()`` became true while it waited for a slot).

        Over the limit: :class:`WorkersLimitReached`, or with ``wait`` a poll until a slot
        frees, said once in the log. A job store error is raised when there is a limit (it
        cannot be kept without the store); without one it is logged and the worker goes
        on unregistered (its first heartbeat tries again).
        """
        pause, said = _WAIT_FIRST, False
        while True:
            try:
                if self.jobs.register_worker(self.info, timeout=self.timeout, limit=self.limit):
                    break
                holders = [w for w in self.jobs.workers(self.info.queue) if w.slot]
            except QueuekitError as exc:
                if self.limit is not None:
                    raise
                log.warning("could not register in the worker registry: %s", exc)
                return True
            assert self.limit is not None  # only a limit refuses
            full = WorkersLimitReached(self.info.queue, self.limit, holders)
            if not self.wait:
                raise full
            if not said:
                log.warning("%s: this worker waits for a slot", full)
                said = True
            deadline = time.monotonic() + pause
            while time.monotonic() < deadline:
                if stopping():
                    return False
                time.sleep(_NAP)
            pause = min(pause * 2, _WAIT_CAP)
        self._registered = True
        self._last_beat = time.monotonic()
        log.info("registered as %s pid %d on %r%s", self.info.host, self.info.pid,
                 self.info.queue, "" if self.limit is None else " (holds a slot)")  # fmt: skip
        return True

    def beat(
        self,
        *,
        processed: int,
        failed: int | None = None,
        current: Sequence[str] = (),
        rss: Callable[[], int] | None = None,
    ) -> None:
        """Write a heartbeat if the last one is ``every`` seconds old (else do nothing), with
        the worker's counts and, from ``rss()``, its resident memory. Errors are logged: a
        heartbeat never stops a worker, but losing a slot to another worker does."""
        now = time.monotonic()
        if now - self._last_beat < self.every:
            return
        self._last_beat = now
        worker = self.info
        try:
            if self.jobs.heartbeat_worker(worker.id, processed=processed, failed=failed,
                                          current=current,
                                          rss=rss() if rss else None):  # fmt: skip
                return
            if self._registered:
                log.warning("worker %s pid %d was taken for dead (silent for %gs):"
                            " registering again", worker.host, worker.pid,
                            self.timeout)  # fmt: skip
            self._registered = self.jobs.register_worker(worker, timeout=self.timeout,
                                                         limit=self.limit)  # fmt: skip
        except QueuekitError as exc:
            log.warning("could not write the worker's heartbeat: %s", exc)
            return
        if not self._registered:
            self._stop(f"its slot of {worker.queue!r} was taken while it seemed dead"
                       f" (limit {self.limit})")  # fmt: skip

    def deregister(self) -> None:
        """Leave the registry (frees the slot at once); a failure is logged, the row then
        ages out after the timeout."""
        if not self._registered:
            return
        try:
            self.jobs.deregister_worker(self.info.id)
            self._registered = False
        except QueuekitError as exc:
            log.warning("could not leave the worker registry: %s", exc)
