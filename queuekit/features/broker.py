"""The broker as the core sees it: where an encoded message goes, for every part of queuekit.

A :class:`Broker` is the transport (reopened after a lost connection) and the job store
beside it. Everything that sends a message goes through it, so the rules live in one place:

- a delay becomes the broker's own ``not_before`` where the adapter declares ``delay``, and
  otherwise the message waits in the job store's durable delayed store until a worker
  forwards it;
- a priority out of range, or on a broker that cannot honour it, is refused
  (:class:`Unsupported` names the capability), never ignored;
- a body above :attr:`Broker.max_body` (the adapter's ``max_message_size``, else the URL's
  ``max_message_size`` option, else :data:`DEFAULT_MAX_BODY`) is refused before anything
  is sent, and a worker refuses a delivery above it before reading it;
- with signing keys, every body is signed for its queue (:mod:`.signing`);
- a dedup key the broker cannot keep is held in the job store (:mod:`.keys`), a serial group
  lines up there (:mod:`.groups`), and a job record is written before the send and taken
  back if the send fails; such a message carries the job store's identity (:mod:`.storeid`).

The client's ``Queue.publish``, the worker's retries, serial-group heads, the failed store's
retries and recurring runs all use it; none of them reaches into another's internals.
Thread-safe as far as the transport and the job store are (both are, by their contracts).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any

from ..jobstore.base import JobStore
from ..jobstore.records import QUEUED, WAITING, JobUpdate, record_payload
from ..spi.errors import MessageTooLarge, QueuekitError, Unsupported
from ..spi.priorities import MAX_PRIORITY
from ..spi.registry import open_transport
from ..spi.transport import Delivery, Outgoing, SendOptions, Transport
from ..spi.urls import TransportURL
from . import groups, keys, storeid
from .delays import Delay, due_time
from .envelope import Message, Metadata, encode
from .signing import Signer

log = logging.getLogger("queuekit")

#: The largest body sent or read where the adapter declares no ``max_message_size``
#: (sqlite, memory, gearman) and the URL sets none (``?max_message_size=BYTES``).
DEFAULT_MAX_BODY = 64 * 1024 * 1024


@dataclass(frozen=True)
class Prepared:
    """A message encoded and checked for its queue, ready to send."""

    message: Message
    outgoing: Outgoing
    due: float | None
    keyed: bool = False  # its dedup key is held in the job store


class PublishObserver:
    """Told of each publish by the client (``Queue.publish``, ``publish_many``, the fluent
    form), for metrics and tracing on the producer side. Resends of messages already
    published (retries, dead letters put back, serial-group heads) are not publishes."""

    def publishing(
        self, queue: str, headers: dict[str, str], count: int, system: str
    ) -> AbstractContextManager[None]:
        """Enclose the publish of ``count`` messages to ``queue`` on a broker of adapter
        ``system`` (``sqlite``, ``amqp``, ...): entered before they are
        encoded, so it may add ``headers`` (a trace context) that every one of them then
        carries; left when the broker (or the delayed store) holds them, or with the
        exception that the publish raised. Thread-safe."""
        return contextlib.nullcontext()


#: The observers of every publish in this process (metrics, tracing): process-wide, like
#: the registries they report to. Empty unless enabled, so a publish pays one check.
_publish_observers: list[PublishObserver] = []


def observe_publishing(observer: PublishObserver) -> None:
    """Tell ``observer`` of every publish in this process from now on (once per observer)."""
    if observer not in _publish_observers:
        _publish_observers.append(observer)


@contextlib.contextmanager
def _observed(queue: str, headers: dict[str, str], count: int, system: str) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for observer in _publish_observers:
            stack.enter_context(observer.publishing(queue, headers, count, system))
        yield


def publishing(
    broker: Broker, queue: str, headers: dict[str, str], count: int
) -> AbstractContextManager[None]:
    """What the client wraps each publish in (see :class:`PublishObserver`)."""
    if not _publish_observers:
        return contextlib.nullcontext()
    return _observed(queue, headers, count, broker.transport.name)


class Broker:
    """The transport and the job store of one connection; see the module docstring."""

    def __init__(
        self,
        url: TransportURL,
        jobs: JobStore,
        *,
        prefetch: int = 16,
        per_host: bool = False,
        signer: Signer | None = None,
    ) -> None:
        self.url, self.jobs = url, jobs
        #: Signs every body this broker encodes; the worker verifies with it too.
        self.signer = signer
        self._default_max_body = url.integer("max_message_size", DEFAULT_MAX_BODY)
        #: ``jobs`` is this host's default store for the broker, not a configured one.
        self.per_host = per_host
        self._prefetch = prefetch
        self.transport: Transport = open_transport(url, prefetch=prefetch)
        #: Per-thread open ``bulk()`` buffers (:mod:`.bulk`), by queue name.
        self.bulk_buffers = threading.local()

    def reconnect(self) -> None:
        """Replace the transport with a freshly opened one (after ``ConnectionLost``).

        The new transport is opened first, so a failed attempt leaves things as they were;
        deliveries not yet settled on the old one are the broker's to redeliver.
        """
        old, self.transport = self.transport, open_transport(self.url, prefetch=self._prefetch)
        try:
            old.close()
        except QueuekitError as exc:
            log.debug("closing the lost transport failed: %s", exc)

    def jobstore_warning(self) -> str | None:
        """Why other hosts cannot share this job store, or ``None`` (:mod:`.storeid`)."""
        return storeid.host_warning(self.url, self.jobs, per_host=self.per_host)

    def close(self) -> None:
        try:
            self.transport.close()
        finally:
            self.jobs.close()

    # -- checks and encoding -------------------------------------------------------------

    def check_priority(self, priority: int | None) -> None:
        """Refuse a priority out of range, or one this broker cannot honour."""
        if priority is None:
            return
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ValueError(f"priority must be an int 0-{MAX_PRIORITY}, not {priority!r}")
        if not 0 <= priority <= MAX_PRIORITY:
            raise ValueError(f"priority must be 0-{MAX_PRIORITY}, not {priority}")
        if not self.transport.capabilities.takes_priority:
            raise Unsupported("priority", self.transport.name, needs("priority"))

    @property
    def max_body(self) -> int:
        """The largest body this broker sends or a worker reads (the module docstring)."""
        declared = self.transport.capabilities.max_message_size
        return self._default_max_body if declared is None else declared

    def encode(self, message: Message, queue: str) -> bytes:
        """The body of ``message`` for ``queue`` (signed when keys are set), refused when
        the broker could not take it."""
        body = encode(message)
        if self.signer is not None:
            body = self.signer.sign(queue, body)
        limit = self.max_body
        if len(body) > limit:
            raise MessageTooLarge(len(body), limit, self.transport.name)
        return body

    def send_options(
        self, due: float | None, priority: int | None, key: str | None = None
    ) -> SendOptions:
        """What the adapter is told natively; the rest the core emulates or refused."""
        caps = self.transport.capabilities
        return SendOptions(
            not_before=due if caps.delay else None,
            priority=priority,
            dedup_key=key if caps.dedup else None,
        )

    def prepare(
        self,
        queue: str,
        payload: Any,
        metadata: Metadata,
        delay: Delay | None,
        priority: int | None,
        *,
        fresh: bool = True,
    ) -> Prepared:
        """Encode and check a message for ``queue``. ``fresh=False`` (a resend of a message already
        published) skips its key and its group: the original holds both."""
        caps = self.transport.capabilities
        due = future(delay)
        self.check_priority(priority)
        keyed = fresh and keys.held_in_store(metadata, caps)
        if keyed:
            keys.check(metadata, caps, self.transport.name)
        if fresh and metadata.group is not None and not caps.redelivery:
            raise Unsupported(
                "serial groups", self.transport.name,
                f"a message lost with its worker would stop its group for ever; "
                f"{needs('redelivery')}",
            )  # fmt: skip
        if fresh and storeid.needs_store(metadata, keyed=keyed):
            storeid.stamp(metadata, self.jobs)
        metadata.not_before, metadata.priority = due, priority
        message = Message(payload, metadata)
        body = self.encode(message, queue)
        options = self.send_options(due, priority, metadata.key if fresh else None)
        headers = {} if metadata.group is None else groups.headers_for(metadata.group, metadata.id)
        return Prepared(message, Outgoing(body, headers, options), due, keyed)

    # -- sending -------------------------------------------------------------------------

    def send_prepared(self, queue: str, batch: Sequence[Prepared]) -> None:
        """Send prepared messages with their own options, dropping duplicates whose key the
        job store holds (see :mod:`.keys`)."""
        keyed = [p for p in batch if p.keyed]
        if not keyed:
            self._send_routed(queue, batch)
            return
        held = keys.hold(self.jobs, queue, [p.message.metadata for p in keyed])
        holders = [p.message.metadata for p in keyed if p.message.id in held]
        try:
            self._send_routed(queue, [p for p in batch if not p.keyed or p.message.id in held])
        except BaseException:
            keys.abandon(self.jobs, queue, holders)
            raise
        keys.confirm(self.jobs, queue, holders)

    def _send_routed(self, queue: str, batch: Sequence[Prepared]) -> None:
        """One ``send_many`` for what the broker takes now, one delayed-store write per due
        time, serial groups lined up in the job store; records written first."""
        emulated = not self.transport.capabilities.delay
        now: list[Outgoing] = []
        later: dict[float, list[Outgoing]] = {}
        grouped: dict[str, list[tuple[str, Outgoing, float | None]]] = {}
        for item in batch:
            group = item.message.metadata.group
            if group is not None:
                grouped.setdefault(group, []).append((item.message.id, item.outgoing, item.due))
            elif emulated and item.due is not None:
                later.setdefault(item.due, []).append(item.outgoing)
            else:
                now.append(item.outgoing)

        def send() -> None:
            if now:
                self.send(queue, now, None)
            for due, outgoing in later.items():
                self.send(queue, outgoing, due)
            if grouped:
                groups.line_up(self, queue, grouped)

        updates = [
            JobUpdate(p.message.id, queue, p.message.metadata.name or None,
                      QUEUED if p.due is None else WAITING,
                      created_at=p.message.metadata.created_at, key=p.message.metadata.key,
                      payload=record_payload(p.message.payload))
            for p in batch if p.message.metadata.record
        ]  # fmt: skip
        if updates:
            self.send_recorded(updates, send)
        else:
            send()

    def send_recorded(self, updates: list[JobUpdate], send: Callable[[], None]) -> None:
        """Write the records first (a fast worker's ``running`` must not be overwritten by
        ``queued``), send, and take the records back if the send failed."""
        self.jobs.write_jobs(updates)
        try:
            send()
        except BaseException:
            self.jobs.delete_jobs([u.id for u in updates])
            raise

    def send(self, queue: str, outgoing: Sequence[Outgoing], due: float | None) -> None:
        """Hand encoded messages to the broker, or to the delayed store when they are due
        later and the broker cannot wait."""
        if due is not None and not self.transport.capabilities.delay:
            self.jobs.add_delayed(queue, due, outgoing)
        elif len(outgoing) == 1:
            item = outgoing[0]
            self.transport.send(queue, item.body, item.headers, options=item.options)
        else:
            self.transport.send_many(queue, outgoing)

    def forward(self, queue: str, outgoing: Outgoing, due: float | None) -> None:
        """Send an already encoded message, due at ``due`` (the broker's delay or the
        delayed store), e.g. the next message of a serial group."""
        if due is not None and due <= time.time():
            due = None
        if due is not None and self.transport.capabilities.delay:
            outgoing = replace(outgoing, options=replace(outgoing.options, not_before=due))
        self.send(queue, [outgoing], due)

    def resend(self, queue: str, message: Message, *, delay: float | None = None) -> None:
        """Publish ``message`` again as it is (same id), e.g. a dead letter put back.

        The copy keeps its place: it carries no dedup key (the original still holds it
        until it is settled after this send, and a broker deduplicating on it would drop
        the copy) and does not line up in its group again (the group waits for it).
        """
        meta = message.metadata
        prepared = self.prepare(queue, message.payload, meta, delay, meta.priority, fresh=False)
        self.send(queue, [prepared.outgoing], prepared.due)

    def requeue(
        self, queue: str, delivery: Delivery, message: Message, *, delay: float | None
    ) -> None:
        """Put ``delivery`` (of ``queue``) back as ``message``'s next attempt, due after
        ``delay`` seconds.

        Where the broker can wait, the adapter requeues it in place (``Transport.requeue``,
        so a native dedup key stays taken); otherwise it waits in the delayed store and
        the delivery is acked.
        """
        meta = message.metadata
        prepared = self.prepare(queue, message.payload, meta, delay, meta.priority, fresh=False)
        outgoing = prepared.outgoing
        if prepared.due is not None and not self.transport.capabilities.delay:
            self.send(queue, [outgoing], prepared.due)
            self.transport.ack(delivery)
        else:
            self.transport.requeue(delivery, outgoing.body, options=outgoing.options)

    def __repr__(self) -> str:
        return f"<Broker {self.url.redacted()}>"


def future(delay: Delay | None) -> float | None:
    """The Unix time ``delay`` ends, or ``None`` when it is already over (send now)."""
    due = None if delay is None else due_time(delay)
    return None if due is None or due <= time.time() else due


def needs(capability: str) -> str:
    """The hint of an :class:`Unsupported`: what a broker must declare to serve it."""
    return (
        f"use a broker whose adapter declares {capability!r} "
        "(`worker conformance URL` shows what one declares)"
    )
