"""Connections: a transport plus the job store beside it, opened by URL.

``connect(url)`` opens one (the URL by ``--url`` > ``QUEUEKIT_URL`` > ``queuekit.toml`` >
``sqlite:///queuekit.db``, see :mod:`queuekit.client.config`); ``queue(name)`` and
``topic(name)`` publish through it (:mod:`queuekit.client.queue`).
"""

from __future__ import annotations

import logging
import threading

from ..features.failed import FailedStore
from ..features.rpc import ReplyQueue
from ..features.schedules import add as add_schedule
from ..jobstore.base import Schedule, open_jobstore
from ..jobstore.records import JobRecord
from ..spi.errors import QueuekitError
from ..spi.registry import open_transport
from ..spi.transport import Transport
from ..spi.urls import TransportURL
from .config import resolve_jobstore, resolve_url
from .queue import Queue, Topic

log = logging.getLogger("queuekit")


def connect(
    url: str | None = None, *, jobstore: str | None = None, prefetch: int = 16
) -> Connection:
    """Open a connection to ``url`` (or the configured one; see :mod:`queuekit.client.config`)."""
    return Connection(resolve_url(url), jobstore=jobstore, prefetch=prefetch)


def default_jobstore(url: TransportURL) -> str:
    """Where the job store lives when none is configured."""
    if url.scheme == "sqlite":
        return url.render(reveal=True).split("?", 1)[0]  # the same file as the queues
    if url.scheme == "memory":  # shared by the connections to the same in-process broker
        name = url.hosts[0].name if url.hosts else url.path or "default"
        return f"sqlite:///:memory:?share=memory-{name}"
    return "sqlite:///queuekit-jobs.db"


class Connection:
    """A transport plus the job store beside it. Thread-safe; close it when done."""

    def __init__(self, url: str, *, jobstore: str | None = None, prefetch: int = 16) -> None:
        self.url = TransportURL.parse(url)
        self._prefetch = prefetch
        self.transport: Transport = open_transport(self.url, prefetch=prefetch)
        self.jobs = open_jobstore(resolve_jobstore(jobstore) or default_jobstore(self.url))
        self.failed = FailedStore(self)
        self._local = threading.local()  # per-thread state: the open bulk() buffers
        self._replies: ReplyQueue | None = None
        self._replies_lock = threading.Lock()

    def reconnect(self) -> None:
        """Replace the transport with a freshly opened one (after ``ConnectionLost``).

        The new transport is opened first, so a failed attempt leaves the connection as it
        was; deliveries not yet settled on the old one are the broker's to redeliver.
        """
        old, self.transport = self.transport, open_transport(self.url, prefetch=self._prefetch)
        try:
            old.close()
        except QueuekitError as exc:
            log.debug("closing the lost transport failed: %s", exc)

    def queue(self, name: str) -> Queue:
        return Queue(self, name)

    def topic(self, name: str) -> Topic:
        return Topic(self, name)

    @property
    def replies(self) -> ReplyQueue:
        """This connection's reply queue for ``call``/``gather`` (made on first use)."""
        with self._replies_lock:
            if self._replies is None:
                self._replies = ReplyQueue(self)
            return self._replies

    #: ``schedule(name, queue, payload, every, *, start=, job_name=, priority=, headers=)``:
    #: create or replace a recurring job (see :mod:`queuekit.features.schedules`).
    schedule = add_schedule

    def unschedule(self, name: str) -> bool:
        """Delete the recurring job ``name``; False when there was none."""
        return self.jobs.remove_schedule(name)

    def schedules(self) -> list[Schedule]:
        return self.jobs.schedules()

    def job(self, job_id: str) -> JobRecord | None:
        """A snapshot of the job record of message ``job_id``; ``None`` if it has none."""
        return self.jobs.get_job(job_id)

    def close(self) -> None:
        try:
            if self._replies is not None:
                self._replies.delete()
            self.transport.close()
        finally:
            self.jobs.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Connection {self.url.redacted()}>"
