"""The consumer connection: deliveries into local buffers, handed out by ``receive``, settled.

One consumer thread uses it (``close`` may come from any thread); its own connection means a
receive draining the socket never delays a publish, and a publish waiting for confirms never
delays an ack. Streaming (``prefetch > 1``): one ``basic.consume`` per queue keeps up to
``prefetch`` deliveries in flight, un-acked, buffered here. Strict (``prefetch <= 1``):
``basic.get``, and on an empty queue a consumer that lives only until its one delivery.

A work queue is one broker queue per priority band (``Settings.bands``): ``receive`` is
given the band queues to take from, highest band first, and hands out what is buffered of
the highest band first. Each band's consumer has its own prefetch, so a full lower band never
holds back a higher one; a worker thus holds at most ``prefetch`` deliveries per band.

A delivery belongs to the connection it came on: after a reconnect the broker has requeued
it, so the buffers are emptied and settling it is dropped with a warning (it comes again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...spi.errors import ConnectionLost, TransportError
from ...spi.transport import Delivery, Transport
from .link import (
    CHANNEL_ERRORS,
    CONNECTION_ERRORS,
    RECOVERABLE,
    Link,
    backoff,
    map_channel_error,
    sleep_until,
)
from .messages import as_bytes, delivery_count, user_headers
from .settings import Settings
from .topology import SUBSCRIPTION_PREFIX, declare_queue

log = logging.getLogger("queuekit.amqp")

#: Longest a blocked ``receive`` waits on the socket before checking for ``close()``.
_SLICE = 0.2


@dataclass(slots=True)
class _Handle:
    generation: int
    tag: int
    settled: bool = False


class Consumer:
    """The consumer's connection and channel, its consumers and their buffers.

    ``receive``, ``ack`` and ``nack`` come from one thread at a time; the rest may come from
    any thread (a lock guards all). Once its transport (``owner``) is closed a blocked
    ``receive`` returns None within ``_SLICE`` and every call raises :class:`TransportClosed`.
    """

    def __init__(self, settings: Settings, prefetch: int, owner: Transport) -> None:
        self.settings = settings
        self.prefetch = prefetch
        self._owner = owner
        self._lock = threading.RLock()
        self._link = Link(settings, "consumer", on_channel=self._on_channel)
        #: By broker queue: the tag of its ``basic.consume`` ("" while strict mode reads it).
        self.consumers: dict[str, str] = {}
        self._buffers: dict[str, deque[Delivery]] = {}
        self._failing_since: float | None = None
        self._attempt = 0

    def receive(self, queue: str, sources: list[str], timeout: float) -> Delivery | None:
        """One delivery of ``queue`` from its broker queues ``sources``, highest band first."""
        deadline = time.monotonic() + max(0.0, timeout)
        strict = self.prefetch <= 1
        with self._lock:
            self._owner.check_open()
            while True:
                got = self._buffered(sources)
                if got is not None:
                    return got
                if self._owner.closed:
                    return None
                try:
                    for source in sources:
                        self._ensure_consumer(queue, source, start=not strict)
                    if strict:
                        got = self._pull(queue, sources, deadline)
                        self._failing_since, self._attempt = None, 0
                        return got
                    if not any(self._buffers[source] for source in sources):
                        slice_ = max(0.0, min(deadline - time.monotonic(), _SLICE))
                        self._link.drain(slice_)
                    self._failing_since, self._attempt = None, 0
                except CHANNEL_ERRORS as exc:
                    self._link.reset_channel()
                    raise map_channel_error(exc, f"amqp receive from {queue!r}") from None
                except RECOVERABLE as exc:
                    self._after_failure(exc, deadline)
                if time.monotonic() >= deadline and not any(
                    self._buffers.get(source) for source in sources
                ):
                    return None

    def _buffered(self, sources: list[str]) -> Delivery | None:
        """The first buffered delivery of the highest band that has one."""
        for source in sources:
            buffer = self._buffers.get(source)
            if buffer:
                return buffer.popleft()
        return None

    def _ensure_consumer(self, queue: str, source: str, *, start: bool) -> None:
        """Declare ``source`` (a broker queue of ``queue``) once per connection; with
        ``start``, consume it into its buffer."""
        if source in self.consumers:
            return
        channel = self._link.channel()
        if not source.startswith(SUBSCRIPTION_PREFIX):
            declare_queue(channel, source, self.settings)
        self._buffers.setdefault(source, deque())
        self.consumers[source] = self._consume(channel, queue, source) if start else ""

    def _consume(self, channel: Any, queue: str, source: str) -> str:
        buffer = self._buffers[source]
        generation = self._link.generation
        headers_of = user_headers
        quorum = self.settings.quorum

        def on_message(message: Any) -> None:
            info = message.delivery_info
            body = message.body
            raw = message.properties.get("application_headers")
            buffer.append(
                Delivery(
                    queue=queue,
                    body=body if type(body) is bytes else as_bytes(body),
                    headers=headers_of(raw),
                    redelivered=bool(info["redelivered"]),
                    delivery_count=delivery_count(raw, quorum) if quorum else None,
                    handle=_Handle(generation, info["delivery_tag"]),
                )
            )

        def on_cancel(tag: str) -> None:  # the broker ended it (queue deleted elsewhere)
            if self.consumers.get(source) == tag:
                del self.consumers[source]

        tag: str = channel.basic_consume(source, callback=on_message, on_cancel=on_cancel)
        return tag

    def _pull(self, queue: str, sources: list[str], deadline: float) -> Delivery | None:
        """Strict mode: take one waiting message, highest band first, or wait for one with
        one-shot consumers (one per band: a delivery racing the cancels stays buffered)."""
        channel = self._link.channel()
        for source in sources:
            message = channel.basic_get(source)
            if message is not None:
                raw = message.properties.get("application_headers")
                return Delivery(
                    queue=queue,
                    body=as_bytes(message.body),
                    headers=user_headers(raw),
                    redelivered=bool(message.delivery_info["redelivered"]),
                    delivery_count=delivery_count(raw, self.settings.quorum),
                    handle=_Handle(self._link.generation, message.delivery_info["delivery_tag"]),
                )
        tags = [self._consume(channel, queue, source) for source in sources]
        while not self._owner.closed and not any(self._buffers[source] for source in sources):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._link.drain(min(remaining, _SLICE))
        for tag in tags:
            channel.basic_cancel(tag)
        return self._buffered(sources)

    def _on_channel(self, channel: Any) -> None:
        """A fresh channel: earlier deliveries are void (the broker requeued them)."""
        self.consumers.clear()
        for buffer in self._buffers.values():
            buffer.clear()
        channel.basic_qos(0, max(1, self.prefetch), False)

    def _after_failure(self, exc: BaseException, deadline: float) -> None:
        self._drop_connection()
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            log.warning("amqp consumer connection lost (%s); reconnecting", exc)
        elif now - self._failing_since > self.settings.reconnect_timeout:
            self._failing_since = None
            raise ConnectionLost(f"amqp: broker unreachable for consuming: {exc}") from None
        sleep_until(deadline, backoff(self._attempt))
        self._attempt += 1

    def _drop_connection(self) -> None:
        """Abandon the connection and everything delivered on it (the broker requeues it)."""
        self._link.drop()
        self.consumers.clear()
        for buffer in self._buffers.values():
            buffer.clear()

    # -- settling -----------------------------------------------------------------------

    def ack(self, delivery: Delivery) -> None:
        self._settle(delivery, "ack", lambda channel, tag: channel.basic_ack(tag))

    def nack(self, delivery: Delivery, *, requeue: bool) -> None:
        self._settle(delivery, "nack", lambda ch, tag: ch.basic_reject(tag, requeue=requeue))

    def _settle(self, delivery: Delivery, what: str, action: Callable[[Any, int], None]) -> None:
        handle = delivery.handle
        if not isinstance(handle, _Handle):
            raise TransportError(f"amqp {what}: not a delivery of this transport")
        with self._lock:
            self._owner.check_open()
            if handle.settled:
                return
            handle.settled = True
            channel = self._link.current
            if channel is None or handle.generation != self._link.generation:
                log.warning(
                    "amqp %s of a delivery from a lost connection: the broker redelivers it", what
                )
                return
            try:
                action(channel, handle.tag)
            except CHANNEL_ERRORS as exc:
                self._link.reset_channel()
                raise map_channel_error(exc, f"amqp {what}") from None
            except CONNECTION_ERRORS as exc:
                self._drop_connection()  # its prefetched deliveries are stale too
                log.warning("amqp %s lost with the connection (%s): redelivered later", what, exc)

    # -- what this consumer holds of a queue, for depth, purge and delete ------------------

    def reject_prefetched(self, sources: list[str]) -> int:
        """Drop the deliveries of ``sources`` not yet handed out; how many were dropped."""
        dropped = 0
        with self._lock:
            self._read_prefetched()
            for source in sources:
                buffer = self._buffers.get(source)
                channel = self._link.current
                while buffer and channel is not None:
                    delivery = buffer.popleft()
                    delivery.handle.settled = True
                    try:
                        channel.basic_reject(delivery.handle.tag, requeue=False)
                    except (*CONNECTION_ERRORS, *CHANNEL_ERRORS):
                        self._drop_connection()  # un-acked ones go back to the queue
                        return dropped
                    dropped += 1
        return dropped

    def _read_prefetched(self) -> None:
        """Move deliveries already sent to this consumer from the socket into the buffers."""
        if self._link.current is None or self._owner.closed:
            return
        try:
            while self._link.drain(0):
                pass
        except RECOVERABLE:
            self._drop_connection()  # their deliveries go back to the broker's queues

    def stop(self, sources: list[str]) -> None:
        """Stop consuming the broker queues ``sources``; give back what was prefetched."""
        with self._lock:
            self._owner.check_open()
            for source in sources:
                tag = self.consumers.pop(source, None)
                buffered = self._buffers.pop(source, deque())
                channel = self._link.current
                if tag and channel is not None:
                    try:
                        channel.basic_cancel(tag)
                        for delivery in buffered:
                            delivery.handle.settled = True
                            channel.basic_reject(delivery.handle.tag, requeue=True)
                    except (*CONNECTION_ERRORS, *CHANNEL_ERRORS):
                        self._drop_connection()
                        return

    def close(self) -> None:
        """Close the connection; un-acked deliveries go back to their queues."""
        with self._lock:
            self._link.close()
            self.consumers.clear()
            self._buffers.clear()
