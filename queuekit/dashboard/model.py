"""What the dashboard reads and does, over one connection: every page's data, every action.

Each action is also a CLI command (``worker failed retry|purge``, ``worker pause|resume``)
and goes through the same code (:func:`~queuekit.client.redrive.retry_failed`, the job
store), so the two never differ. Calls hold one lock: the transport's contract is one
thread at a time, and the web server runs handlers on a thread pool.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..client.connection import Connection
from ..client.redrive import retry_failed
from ..features.status import Status, snapshot
from ..features.throughput import Series, series
from ..jobstore.base import FailedMessage, Schedule
from ..jobstore.records import JobRecord
from ..spi.errors import ConnectionLost


@dataclass(frozen=True)
class Overview:
    status: Status
    charts: list[Series]
    hours: float


class Dashboard:
    """The dashboard's view of ``conn``; ``queues`` are shown even when nothing else knows
    them (as ``worker status QUEUE`` does)."""

    def __init__(self, conn: Connection, queues: Sequence[str] = ()) -> None:
        self.conn, self.queues = conn, tuple(queues)
        self._lock = threading.Lock()

    @property
    def broker_url(self) -> str:
        return self.conn.url.redacted()

    def overview(self, hours: float = 6.0) -> Overview:
        now = time.time()
        with self._lock:
            status = self._snapshot()
            buckets = self.conn.jobs.throughput(now - hours * 3600)
        names = [q.name for q in status.queues]
        return Overview(status, series(buckets, names, now - hours * 3600, now), hours)

    def status(self) -> Status:
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> Status:
        return snapshot(self.conn.broker, self.queues)

    # -- failed messages -----------------------------------------------------------------

    def failed(self, queue: str | None = None, *, limit: int = 500) -> list[FailedMessage]:
        with self._lock:
            return self.conn.failed.list(queue or None, limit=limit)

    def failed_one(self, failed_id: int) -> FailedMessage | None:
        with self._lock:
            return self.conn.failed.get(failed_id)

    def retry(self, ids: Iterable[int]) -> int:
        """Put these dead letters back on their queues, each through the broker its queue
        is routed to (as ``worker failed retry``); how many went back."""
        with self._lock:
            return self._resend(list(ids))

    def _resend(self, ids: list[int]) -> int:
        done = 0
        try:
            for count in retry_failed(self.conn, self.conn, self._entries(ids)):
                done += count
        except ConnectionLost:  # a link went away while the dashboard idled: once more
            for each in self.conn.connections():
                each.broker.reconnect()
            for count in retry_failed(self.conn, self.conn, self._entries(ids)):
                done += count
        return done

    def _entries(self, ids: list[int]) -> list[FailedMessage]:
        return [e for i in ids if (e := self.conn.failed.get(i)) is not None]

    def retry_queue(self, queue: str) -> int:
        with self._lock:
            return self._resend([entry.id for entry in self.conn.failed.list(queue)])

    def delete(self, ids: Iterable[int]) -> int:
        with self._lock:
            return sum(self.conn.jobs.remove_failed(failed_id) for failed_id in ids)

    def delete_queue(self, queue: str) -> int:
        with self._lock:
            return self.conn.failed.purge(queue)

    # -- job records, workers, schedules, pausing ------------------------------------------

    def find_jobs(
        self, text: str = "", queue: str | None = None, state: str | None = None
    ) -> list[JobRecord]:
        """The record whose id is ``text``; else the newest records (of ``queue``, in
        ``state``) of messages whose dedup key is ``text``; else those whose name contains
        ``text``."""
        queue, state = queue or None, state or None
        with self._lock:
            if text and (record := self.conn.jobs.get_job(text)) is not None:
                return [record]
            if text and (keyed := self.conn.jobs.jobs(queue, state=state, key=text, limit=200)):
                return keyed
            records = self.conn.jobs.jobs(queue, state=state, limit=200)
        return [r for r in records if not text or text in (r.name or "")]

    def schedules(self) -> list[Schedule]:
        with self._lock:
            return self.conn.jobs.schedules()

    def pause(self, queue: str) -> None:
        with self._lock:
            self.conn.jobs.pause_queue(queue)

    def resume(self, queue: str) -> None:
        with self._lock:
            self.conn.jobs.resume_queue(queue)
