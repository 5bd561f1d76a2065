"""Connections, queues and topics: the publishing side of the core.

``connect(url)`` opens a transport; ``Connection.queue(name)`` gives a :class:`Queue` that
wraps payloads in envelopes and applies the publishing policies: a delay becomes the
broker's own ``not_before`` where the adapter declares ``delay``, and otherwise waits in the
job store's durable delayed store until a worker's scheduler forwards it. Other options the
adapter cannot honour raise :class:`Unsupported`, never silently do nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import resolve_jobstore, resolve_url
from .delays import Delay, due_time
from .envelope import Message, Metadata, encode
from .errors import MessageTooLarge, QueuekitError, Unsupported
from .jobstore import FailedMessage, JobStore
from .registry import open_transport
from .retry import RetryStrategy
from .transport import Outgoing, SendOptions, Transport
from .urls import TransportURL

if TYPE_CHECKING:
    from .worker import Handler

MAX_PRIORITY = 255
log = logging.getLogger("queuekit")


def connect(
    url: str | None = None, *, jobstore: str | None = None, prefetch: int = 16
) -> Connection:
    """Open a connection to ``url`` (or the configured one; see :mod:`queuekit.core.config`)."""
    return Connection(resolve_url(url), jobstore=jobstore, prefetch=prefetch)


def default_jobstore(url: TransportURL) -> str:
    """Where the job store lives when none is configured."""
    if url.scheme == "sqlite":
        return url.render(reveal=True).split("?", 1)[0]  # the same file as the queues
    if url.scheme == "memory":
        return "sqlite:///:memory:"
    return "sqlite:///queuekit-jobs.db"


class Connection:
    """A transport plus the job store beside it. Thread-safe; close it when done."""

    def __init__(self, url: str, *, jobstore: str | None = None, prefetch: int = 16) -> None:
        self.url = TransportURL.parse(url)
        self._prefetch = prefetch
        self.transport: Transport = open_transport(self.url, prefetch=prefetch)
        self.jobs = JobStore(resolve_jobstore(jobstore) or default_jobstore(self.url))
        self.failed = FailedStore(self)

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

    def close(self) -> None:
        try:
            self.transport.close()
        finally:
            self.jobs.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Connection {self.url.redacted()}>"


@dataclass(frozen=True)
class _Prepared:
    message: Message
    outgoing: Outgoing
    due: float | None


class Queue:
    """A named queue on a connection: ``publish`` here, ``dispatch`` to work it off."""

    def __init__(self, connection: Connection, name: str) -> None:
        self.connection, self.name = connection, name

    @property
    def transport(self) -> Transport:
        return self.connection.transport

    def publish(
        self,
        payload: Any,
        *,
        name: str = "",
        delay: Delay | None = None,
        priority: int | None = None,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        retry: RetryStrategy | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
    ) -> str:
        """Send one message; return its id once the broker (or the delayed store) holds it."""
        prepared = self._prepare(
            payload, Metadata(name=name, key=key, headers=dict(headers or {}),
                              correlation_id=correlation_id, reply_to=reply_to,
                              retry=retry.to_json() if retry else None),
            delay, priority,
        )  # fmt: skip
        self._send([prepared.outgoing], prepared.due)
        return prepared.message.id

    def publish_many(
        self,
        payloads: Iterable[Any],
        *,
        name: str = "",
        delay: Delay | None = None,
        priority: int | None = None,
        headers: dict[str, str] | None = None,
        retry: RetryStrategy | None = None,
    ) -> list[str]:
        """Send many messages with the same options in as few round trips as the broker allows."""
        due = None if delay is None else due_time(delay)
        if due is not None and due <= time.time():
            due = None
        self._check_priority(priority)
        caps = self.transport.capabilities
        options = SendOptions(not_before=due if caps.delay else None, priority=priority)
        retry_json = retry.to_json() if retry else None
        ids: list[str] = []
        outgoing: list[Outgoing] = []
        for payload in payloads:  # the loop is lean on purpose: bulk publishing is hot
            meta = Metadata(name=name, not_before=due, priority=priority,
                            headers=dict(headers) if headers else {}, retry=retry_json)  # fmt: skip
            body = encode(Message(payload, meta))
            if caps.max_message_size is not None and len(body) > caps.max_message_size:
                raise MessageTooLarge(len(body), caps.max_message_size, self.transport.name)
            ids.append(meta.id)
            outgoing.append(Outgoing(body, {}, options))
        if outgoing:
            self._send(outgoing, due)
        return ids

    def resend(self, message: Message, *, delay: float | None = None) -> None:
        """Publish ``message`` again as it is (same id), e.g. for a retry."""
        prepared = self._prepare(
            message.payload, message.metadata, delay, message.metadata.priority
        )
        self._send([prepared.outgoing], prepared.due)

    def dispatch(
        self,
        work: Callable[[Message], object] | Handler,
        *,
        validate: Callable[[Message], bool] | None = None,
        retry: RetryStrategy | None = None,
        max_messages: int | None = None,
        max_seconds: float | None = None,
        max_memory: int | None = None,
        handle_signals: bool = True,
    ) -> int:
        """Work this queue off until stopped; return how many messages were processed.

        ``work`` is a callable or an object with ``work``/``validate`` (an AbstractQueue).
        SIGTERM, SIGINT and SIGHUP finish the message in hand, settle it, and return; the
        limits end the loop the same way. See :class:`queuekit.core.worker.Worker`.
        """
        from .worker import FunctionHandler, Limits, Worker

        handler = work if not callable(work) else FunctionHandler(work, validate, retry)
        limits = Limits(max_messages=max_messages, max_seconds=max_seconds, max_memory=max_memory)
        return Worker(self, handler, limits=limits, handle_signals=handle_signals).run()

    def depth(self) -> int:
        return self.transport.depth(self.name)

    def purge(self) -> int:
        return self.transport.purge(self.name)

    # -- internals -----------------------------------------------------------------------

    def _prepare(
        self,
        payload: Any,
        metadata: Metadata,
        delay: Delay | None,
        priority: int | None,
        *,
        dedup: bool = True,
    ) -> _Prepared:
        caps = self.transport.capabilities
        due = None if delay is None else due_time(delay)
        if due is not None and due <= time.time():
            due = None
        self._check_priority(priority)
        if dedup and metadata.key is not None and not caps.dedup:
            raise Unsupported("dedup keys", self.transport.name, "use sqlite:// or gearman://")
        metadata.not_before, metadata.priority = due, priority
        message = Message(payload, metadata)
        body = encode(message)
        limit = caps.max_message_size
        if limit is not None and len(body) > limit:
            raise MessageTooLarge(len(body), limit, self.transport.name)
        options = SendOptions(
            not_before=due if caps.delay else None,
            priority=priority,
            dedup_key=metadata.key if dedup else None,
        )
        return _Prepared(message, Outgoing(body, {}, options), due)

    def _check_priority(self, priority: int | None) -> None:
        if priority is None:
            return
        if not 0 <= priority <= MAX_PRIORITY:
            raise ValueError(f"priority must be 0-{MAX_PRIORITY}, not {priority}")
        if not self.transport.capabilities.priority:
            alternative = "use sqlite://, amqp://, stomp:// or gearman://"
            raise Unsupported("priority", self.transport.name, alternative)

    def _send(self, outgoing: Sequence[Outgoing], due: float | None) -> None:
        if due is not None and not self.transport.capabilities.delay:
            self.connection.jobs.add_delayed(self.name, due, outgoing)
        elif len(outgoing) == 1:
            item = outgoing[0]
            self.transport.send(self.name, item.body, item.headers, options=item.options)
        else:
            self.transport.send_many(self.name, outgoing)

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} on {self.connection.url.redacted()}>"


class Topic:
    """Publish once, every subscriber receives it (adapters declaring ``fanout``)."""

    def __init__(self, connection: Connection, name: str) -> None:
        self.connection, self.name = connection, name

    def publish(
        self, payload: Any, *, name: str = "", headers: dict[str, str] | None = None
    ) -> str:
        message = Message(payload, Metadata(name=name, headers=dict(headers or {})))
        self.connection.transport.broadcast(self.name, encode(message), {})
        return message.id


class FailedStore:
    """The dead letters of a connection's job store, and putting them back to work."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def list(self, queue: str | None = None, *, limit: int = 1000) -> list[FailedMessage]:
        return self._connection.jobs.failed(queue, limit=limit)

    def get(self, failed_id: int) -> FailedMessage | None:
        return self._connection.jobs.get_failed(failed_id)

    def retry(self, failed_id: int) -> bool:
        """Put a dead letter back on its queue with attempts reset; ``False`` if unknown.

        A body that never decoded goes back as it was, for a fixed worker to judge.
        """
        from .envelope import decode
        from .errors import MalformedMessage

        entry = self._connection.jobs.get_failed(failed_id)
        if entry is None:
            return False
        try:
            message = decode(entry.body)
        except MalformedMessage:
            self._connection.transport.send(entry.queue, entry.body, entry.headers)
        else:
            message.metadata.attempts = 0
            self._connection.queue(entry.queue).resend(message)
        self._connection.jobs.remove_failed(failed_id)
        return True

    def purge(self, queue: str | None = None) -> int:
        return self._connection.jobs.purge_failed(queue)
