"""Connections: a transport plus the job store beside it, opened by URL.

``connect(url)`` opens one (the URL by ``--url`` > ``QUEUEKIT_URL`` > ``queuekit.toml`` >
the per-user SQLite default, see :mod:`queuekit.client.config`); ``queue(name)`` and
``topic(name)`` publish through it (:mod:`queuekit.client.queue`). A connection opened from
the configuration file also follows its ``[queues]`` routes: ``queue("reports")`` is on the
broker ``reports`` is routed to, through a connection to that broker opened on first use and
closed with this one (the routing rule in :mod:`queuekit.client.config`).

The job store is ``jobstore=`` > ``QUEUEKIT_JOBSTORE`` > ``jobstore =`` in ``queuekit.toml``
> :func:`default_jobstore`, which never depends on the working directory: the producers and
workers of one broker on one host share it by construction. Across hosts only a configured
shared database does; a worker that meets a message registered in another store refuses it
(:mod:`queuekit.features.storeid`).
"""

from __future__ import annotations

import contextlib
import threading
from datetime import datetime
from typing import Any

from ..features import schedules
from ..features.broker import Broker
from ..features.delays import Delay
from ..features.failed import FailedStore
from ..features.inbox import INBOX_LEASE, Inbox
from ..features.rpc import ReplyQueue
from ..jobstore import open_jobstore
from ..jobstore.base import JobStore, Schedule
from ..jobstore.records import JobRecord
from ..spi.transport import Transport
from ..spi.urls import TransportURL
from .config import broker_jobstore, resolve_jobstore, resolve_signer, routes
from .queue import Queue, Topic


def connect(
    url: str | None = None,
    *,
    jobstore: str | None = None,
    prefetch: int = 16,
    signing_keys: str | None = None,
) -> Connection:
    """Open a connection to ``url``, or to the configured broker with the configured queue
    routes (see :mod:`queuekit.client.config`). ``signing_keys`` (else
    ``QUEUEKIT_SIGNING_KEYS``, else the config file) signs and verifies every message
    (:mod:`queuekit.features.signing`)."""
    main, queues = routes(url)
    return Connection(main, jobstore=jobstore, prefetch=prefetch, routes=queues,
                      signing_keys=signing_keys)  # fmt: skip


def default_jobstore(url: TransportURL) -> str:
    """Where the job store lives when none is configured: beside the queues of an SQLite
    or in-process broker, else this host's file for the broker (see
    :func:`queuekit.client.config.broker_jobstore`)."""
    if url.scheme == "sqlite":
        return url.render(reveal=True).split("?", 1)[0]  # the same file as the queues
    if url.scheme == "memory":  # shared by the connections to the same in-process broker
        name = url.hosts[0].name if url.hosts else url.path or "default"
        return f"sqlite:///:memory:?share=memory-{name}"
    return broker_jobstore(url)


class Connection:
    """A broker and the job store beside it, for an application. Thread-safe; close it
    when done."""

    def __init__(
        self,
        url: str,
        *,
        jobstore: str | None = None,
        prefetch: int = 16,
        routes: dict[str, str] | None = None,
        signing_keys: str | None = None,
    ) -> None:
        self.url = TransportURL.parse(url)
        signer = resolve_signer(signing_keys)
        #: Queues that live on another broker: name -> URL (``queuekit.toml``'s [queues]).
        self.routes = {q: u for q, u in (routes or {}).items() if TransportURL.parse(u) != self.url}
        self._jobstore, self._prefetch, self._signing_keys = jobstore, prefetch, signing_keys
        self._routed: dict[str, Connection] = {}  # by URL, opened on first use
        self._routed_lock = threading.Lock()
        store = resolve_jobstore(jobstore) or default_jobstore(self.url)
        jobs = open_jobstore(store)
        per_host = store == broker_jobstore(self.url)
        try:
            self.broker = Broker(self.url, jobs, prefetch=prefetch, per_host=per_host,
                                 signer=signer)  # fmt: skip
        except BaseException:
            jobs.close()
            raise
        self.failed = FailedStore(self.broker)
        self._replies: ReplyQueue | None = None
        self._replies_lock = threading.Lock()

    @property
    def transport(self) -> Transport:
        """The adapter in use (a new one after a reconnect)."""
        return self.broker.transport

    @property
    def jobs(self) -> JobStore:
        return self.broker.jobs

    def reconnect(self) -> None:
        """Reopen the transport (after ``ConnectionLost``); see :meth:`Broker.reconnect`."""
        self.broker.reconnect()

    def queue(self, name: str) -> Queue:
        """The queue ``name``, on the broker it is routed to (:attr:`routes`), else here."""
        return Queue(self.connection_for(name), name)

    def connection_for(self, queue: str) -> Connection:
        """The connection ``queue`` lives on: this one, or its route's (opened now if it
        was not yet; closed with this one)."""
        url = self.routes.get(queue)
        if url is None:
            return self
        with self._routed_lock:
            routed = self._routed.get(url)
            if routed is None:
                routed = self._routed[url] = Connection(
                    url, jobstore=self._jobstore, prefetch=self._prefetch,
                    signing_keys=self._signing_keys,
                )  # fmt: skip
            return routed

    def connections(self) -> list[Connection]:
        """This connection and one per routed broker: every broker the configuration names."""
        return [self, *(self.connection_for(q) for q in sorted(self.routes))]

    def topic(self, name: str) -> Topic:
        return Topic(self, name)

    @property
    def replies(self) -> ReplyQueue:
        """This connection's reply queue for ``call``/``gather`` (made on first use)."""
        with self._replies_lock:
            if self._replies is None:
                self._replies = ReplyQueue(self.broker)
            return self._replies

    def schedule(
        self,
        name: str,
        queue: str,
        payload: Any,
        every: Delay | None = None,
        *,
        cron: str | None = None,
        timezone: str | None = None,
        start: datetime | None = None,
        job_name: str = "",
        priority: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> Schedule:
        """Create or replace the recurring job ``name``, run ``every`` interval or at each
        ``cron`` slot in ``timezone`` (see :mod:`queuekit.features.schedules`)."""
        return schedules.add(self.broker, name, queue, payload, every, cron=cron,
                             timezone=timezone, start=start, job_name=job_name,
                             priority=priority, headers=headers)  # fmt: skip

    def unschedule(self, name: str) -> bool:
        """Delete the recurring job ``name``; False when there was none."""
        return self.jobs.remove_schedule(name)

    def schedules(self) -> list[Schedule]:
        return self.jobs.schedules()

    def inbox(self, consumer: str, *, lease: float = INBOX_LEASE) -> Inbox:
        """The processed message ids of ``consumer`` in this job store, to drop duplicates
        by message id (:mod:`queuekit.features.inbox`)."""
        return Inbox(self.jobs, consumer, lease=lease)

    def job(self, job_id: str) -> JobRecord | None:
        """A snapshot of the job record of message ``job_id``; ``None`` if it has none."""
        return self.jobs.get_job(job_id)

    def close(self) -> None:
        try:
            if self._replies is not None:
                self._replies.delete()
        finally:
            with self._routed_lock:
                routed, self._routed = list(self._routed.values()), {}
            with contextlib.ExitStack() as closing:  # each is closed, whatever the others do
                closing.callback(self.broker.close)
                for connection in routed:
                    closing.callback(connection.close)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Connection {self.url.redacted()}>"
