"""The AMQP 0-9-1 transport (RabbitMQ): kombu opens connections, py-amqp channels do the work.

Two connections, each made on first use: a publisher (``send``, ``send_many``, ``broadcast``,
declarations, ``depth``/``purge``/``delete``) behind a lock, so any thread may publish; and a
consumer (``receive``/``ack``/``nack``) for the one consumer thread. A receive loop draining
its socket therefore never delays a publish, and a publish waiting for confirms never delays
an ack.

Publishing writes every message of a batch, then waits once for the broker's confirms
(RabbitMQ acks batches with ``multiple``), instead of kombu's ``confirm_publish`` which waits
one round trip per message. See docs/amqp.md for the guarantees and what is lost when.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from amqp import exceptions as amqp_errors
from amqp import spec

from ...core.capabilities import Capabilities
from ...core.errors import ConnectionLost, TransportClosed, TransportError
from ...core.transport import NO_OPTIONS, Delivery, Headers, Outgoing, SendOptions, Transport
from ...core.urls import TransportURL
from . import messages
from .link import (
    CHANNEL_ERRORS,
    CONNECTION_ERRORS,
    RECOVERABLE,
    Link,
    backoff,
    map_channel_error,
)
from .link import sleep_until as _sleep_until
from .messages import Publication, as_bytes, priority_level, user_headers
from .settings import Settings
from .topology import SUBSCRIPTION_PREFIX, Declarations, declare_queue, declare_subscription

log = logging.getLogger("queuekit.amqp")

#: Longest a blocked ``receive`` waits on the socket before checking for ``close()``.
_SLICE = 0.2
#: Drain confirms every this many messages of a batch, so acks never pile up unread.
_POLL_EVERY = 512

T = TypeVar("T")


@dataclass(slots=True)
class _Handle:
    generation: int
    tag: int
    settled: bool = False


class AMQPTransport(Transport):
    """``amqp://user:pass@host:5672[,host2:5672]/vhost?options`` (``amqps://`` for TLS)."""

    name = "amqp"

    def __init__(self, url: TransportURL, *, prefetch: int = 16) -> None:
        super().__init__(url, prefetch=prefetch)
        self.settings = settings = Settings.from_url(url)
        self.capabilities = Capabilities(
            durable=True,
            redelivery=True,
            nack_requeue=True,
            fifo=True,
            competing_consumers=True,
            fanout=True,
            topics=True,
            delay=settings.delay,
            priority=settings.max_priority > 0,
            inspect=True,
            max_message_size=settings.max_message_size,
            reasons={
                "dedup": "RabbitMQ keeps no dedup keys; the core's job store does",
                "priority_range": "a consumer gets the head of a queue; RabbitMQ cannot "
                "select by priority",
                **({"delay": "turned off by ?delay=0"} if not settings.delay else {}),
                **(
                    {"priority": "turned off by ?max_priority=0"}
                    if not settings.max_priority
                    else {}
                ),
            },
        )
        self._closing = False
        # publisher side, guarded by _pub_lock
        self._pub_lock = threading.RLock()
        self._publisher = Link(settings, "publisher", on_channel=self._publisher_channel)
        self._seq = 0
        self._unconfirmed: dict[int, Publication] = {}
        self._nacked: list[Publication] = []
        self._returned: list[Publication] = []
        self._declarations = Declarations(settings)
        self._written = 0
        self._pub_failing_since: float | None = None
        self._pub_attempt = 0
        # consumer side, guarded by _con_lock
        self._con_lock = threading.RLock()
        self._consumer = Link(settings, "consumer", on_channel=self._consumer_channel)
        self._consumers: dict[str, str] = {}
        self._buffers: dict[str, deque[Delivery]] = {}
        self._con_failing_since: float | None = None
        self._con_attempt = 0

    # -- publishing -------------------------------------------------------------------

    def send(
        self, queue: str, body: bytes, headers: Headers, *, options: SendOptions = NO_OPTIONS
    ) -> None:
        item = self._item(queue, body, headers, options)
        self._publish(queue, [item])

    def send_many(self, queue: str, messages: Sequence[Outgoing]) -> None:
        items = [self._item(queue, m.body, m.headers, m.options) for m in messages]
        if items:
            self._publish(queue, items)

    def broadcast(self, topic: str, body: bytes, headers: Headers) -> None:
        self._publish(None, [messages.for_topic(topic, body, headers, self.settings)])

    def _item(self, queue: str, body: bytes, headers: Headers, options: SendOptions) -> Publication:
        self.require(options)
        return messages.for_queue(queue, body, headers, options, self.settings)

    def _publish(self, queue: str | None, items: list[Publication]) -> None:
        """Publish ``items`` and wait for their confirms; reconnect and resend what the broker
        did not confirm, until ``reconnect_timeout`` runs out (then :class:`ConnectionLost`)."""
        pending, returns = items, 0
        while True:
            with self._pub_lock:
                self._check_open()
                try:
                    channel = self._publisher.channel()
                    self._declarations.prepare(channel, queue, pending)
                    pending = self._publish_on(channel, pending)
                    self._pub_failing_since, self._pub_attempt = None, 0
                except CHANNEL_ERRORS as exc:
                    self._publisher.reset_channel()
                    raise map_channel_error(exc, f"amqp publish to {queue!r}") from None
                except RECOVERABLE as exc:
                    pending = self._after_publisher_failure(exc, pending)
                else:
                    if not pending:
                        return
                    # returned as unroutable: the queue vanished (deleted elsewhere); redeclare
                    returns += 1
                    if returns > 2:
                        raise TransportError(f"amqp: messages for {queue!r} cannot be routed")
                    self._declarations.forget_queues()
                    continue
            self._wait_for_broker("publish")

    def _publish_on(self, channel: Any, items: list[Publication]) -> list[Publication]:
        """Write every item, then wait for all confirms; return the items sent back as
        unroutable. On a connection failure ``self._unconfirmed`` and ``self._written`` say
        what still needs sending."""
        confirm = self.settings.confirm
        unconfirmed = self._unconfirmed
        unconfirmed.clear()
        self._returned.clear()
        self._nacked.clear()
        self._written = 0
        send = channel.send_method
        for count, item in enumerate(items, 1):
            send(
                spec.Basic.Publish,
                "Bssbb",
                (0, item.exchange, item.routing_key, item.mandatory, False),
                item.message,
            )
            self._written = count
            if confirm:
                self._seq += 1
                unconfirmed[self._seq] = item
                if count % _POLL_EVERY == 0:
                    self._publisher.drain(0)
        if confirm:
            deadline = time.monotonic() + self.settings.confirm_timeout
            while unconfirmed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConnectionLost(
                        f"amqp: no publisher confirm within {self.settings.confirm_timeout:g} s"
                    )
                self._publisher.drain(remaining)
        self._written = 0
        if self._nacked:
            raise TransportError(f"amqp: the broker refused {len(self._nacked)} message(s)")
        return list(self._returned)

    def _after_publisher_failure(
        self, exc: BaseException, pending: list[Publication]
    ) -> list[Publication]:
        self._publisher.drop()
        left = [*self._unconfirmed.values(), *pending[self._written :]]
        self._unconfirmed.clear()
        self._written = 0
        if self._pub_failing_since is None:
            self._pub_failing_since = time.monotonic()
            log.warning("amqp publisher connection lost (%s); reconnecting", exc)
        return left

    def _publisher_channel(self, channel: Any) -> None:
        """Set up a fresh publisher channel: confirms on, and forget what it declared."""
        self._seq = 0
        self._declarations.reset()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.events["basic_return"].add(self._on_return)
        if self.settings.confirm:
            channel.confirm_select()

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle_confirms(tag, multiple)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._nacked.extend(self._settle_confirms(tag, multiple))

    def _settle_confirms(self, tag: int, multiple: bool) -> list[Publication]:
        unconfirmed = self._unconfirmed
        if not multiple:
            item = unconfirmed.pop(tag, None)
            return [item] if item is not None else []
        settled = []
        while unconfirmed:
            first = next(iter(unconfirmed))
            if first > tag:
                break
            settled.append(unconfirmed.pop(first))
        return settled

    def _on_return(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        self._returned.append(Publication(exchange, routing_key, message, True))

    # -- consuming --------------------------------------------------------------------

    def receive(self, queue: str, timeout: float) -> Delivery | None:
        """Streaming (``prefetch > 1``): one consumer per queue keeps up to ``prefetch``
        deliveries in flight. Strict (``prefetch <= 1``): ``basic.get``, and when the queue is
        empty a consumer that lives only until its one delivery, so this worker never holds a
        message it did not ask for (``depth``/``purge`` elsewhere see every waiting one)."""
        deadline = time.monotonic() + max(0.0, timeout)
        strict = self.prefetch <= 1
        with self._con_lock:
            self._check_open()
            while True:
                buffer = self._buffers.get(queue)
                if buffer:
                    return buffer.popleft()
                if self._closing:
                    return None
                try:
                    self._ensure_consumer(queue, start=not strict)
                    if strict:
                        got = self._pull(queue, deadline)
                        self._con_failing_since, self._con_attempt = None, 0
                        return got
                    if not self._buffers[queue]:
                        slice_ = max(0.0, min(deadline - time.monotonic(), _SLICE))
                        self._consumer.drain(slice_)
                    self._con_failing_since, self._con_attempt = None, 0
                except CHANNEL_ERRORS as exc:
                    self._consumer.reset_channel()
                    raise map_channel_error(exc, f"amqp receive from {queue!r}") from None
                except RECOVERABLE as exc:
                    self._after_consumer_failure(exc, deadline)
                if not self._buffers.get(queue) and time.monotonic() >= deadline:
                    return None

    def _ensure_consumer(self, queue: str, *, start: bool) -> None:
        """Declare ``queue`` once per connection; with ``start``, consume it into its buffer."""
        if queue in self._consumers:
            return
        channel = self._consumer.channel()
        if not queue.startswith(SUBSCRIPTION_PREFIX):
            declare_queue(channel, queue, self.settings)
        self._buffers.setdefault(queue, deque())
        self._consumers[queue] = self._consume(channel, queue) if start else ""

    def _consume(self, channel: Any, queue: str) -> str:
        buffer = self._buffers[queue]
        generation = self._consumer.generation
        headers_of = user_headers

        def on_message(message: Any) -> None:
            info = message.delivery_info
            body = message.body
            buffer.append(
                Delivery(
                    queue=queue,
                    body=body if type(body) is bytes else as_bytes(body),
                    headers=headers_of(message.properties.get("application_headers")),
                    redelivered=bool(info["redelivered"]),
                    handle=_Handle(generation, info["delivery_tag"]),
                )
            )

        def on_cancel(tag: str) -> None:  # the broker ended it (queue deleted elsewhere)
            if self._consumers.get(queue) == tag:
                del self._consumers[queue]

        tag: str = channel.basic_consume(queue, callback=on_message, on_cancel=on_cancel)
        return tag

    def _pull(self, queue: str, deadline: float) -> Delivery | None:
        """Strict mode: take one waiting message, or wait for one with a one-shot consumer."""
        channel = self._consumer.channel()
        message = channel.basic_get(queue)
        if message is not None:
            self._buffers[queue].append(
                Delivery(
                    queue=queue,
                    body=as_bytes(message.body),
                    headers=user_headers(message.properties.get("application_headers")),
                    redelivered=bool(message.delivery_info["redelivered"]),
                    handle=_Handle(
                        self._consumer.generation, message.delivery_info["delivery_tag"]
                    ),
                )
            )
        else:
            tag = self._consume(channel, queue)
            buffer = self._buffers[queue]
            while not buffer and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._consumer.drain(min(remaining, _SLICE))
            channel.basic_cancel(tag)  # a delivery racing the cancel lands in the buffer too
        buffer = self._buffers[queue]
        return buffer.popleft() if buffer else None

    def _consumer_channel(self, channel: Any) -> None:
        """A fresh consumer channel: earlier deliveries are void (the broker requeued them)."""
        self._consumers.clear()
        for buffer in self._buffers.values():
            buffer.clear()
        channel.basic_qos(0, max(1, self.prefetch), False)

    def _after_consumer_failure(self, exc: BaseException, deadline: float) -> None:
        self._consumer.drop()
        self._consumers.clear()
        for buffer in self._buffers.values():
            buffer.clear()
        now = time.monotonic()
        if self._con_failing_since is None:
            self._con_failing_since = now
            log.warning("amqp consumer connection lost (%s); reconnecting", exc)
        elif now - self._con_failing_since > self.settings.reconnect_timeout:
            self._con_failing_since = None
            raise ConnectionLost(f"amqp: broker unreachable for consuming: {exc}") from None
        _sleep_until(deadline, backoff(self._con_attempt))
        self._con_attempt += 1

    def ack(self, delivery: Delivery) -> None:
        self._settle(delivery, "ack", lambda channel, tag: channel.basic_ack(tag))

    def nack(self, delivery: Delivery, *, requeue: bool) -> None:
        self._settle(delivery, "nack", lambda ch, tag: ch.basic_reject(tag, requeue=requeue))

    def _settle(self, delivery: Delivery, what: str, action: Callable[[Any, int], None]) -> None:
        handle = delivery.handle
        if not isinstance(handle, _Handle):
            raise TransportError(f"amqp {what}: not a delivery of this transport")
        with self._con_lock:
            self._check_open()
            if handle.settled:
                return
            handle.settled = True
            channel = self._consumer.current
            if channel is None or handle.generation != self._consumer.generation:
                log.warning(
                    "amqp %s of a delivery from a lost connection: the broker redelivers it", what
                )
                return
            try:
                action(channel, handle.tag)
            except CHANNEL_ERRORS as exc:
                self._consumer.reset_channel()
                raise map_channel_error(exc, f"amqp {what}") from None
            except CONNECTION_ERRORS as exc:
                self._consumer.drop()
                self._consumers.clear()
                log.warning("amqp %s lost with the connection (%s): redelivered later", what, exc)

    # -- publish/subscribe ------------------------------------------------------------

    def subscribe(self, pattern: str) -> str:
        name = f"{SUBSCRIPTION_PREFIX}{uuid.uuid4().hex}"
        settings = self.settings
        self._admin(
            "subscribe", lambda channel: declare_subscription(channel, name, pattern, settings)
        )
        return name

    def unsubscribe(self, subscription: str) -> None:
        self.delete(subscription)

    # -- inspection -------------------------------------------------------------------

    def depth(self, queue: str) -> int:
        """Messages waiting in the broker's queue plus those prefetched here and not yet
        handed out by ``receive`` (other consumers' prefetched messages are not counted)."""
        result = self._admin("depth", lambda ch: ch.queue_declare(queue, passive=True), None)
        with self._con_lock:
            self._read_prefetched()
            buffered = len(self._buffers.get(queue, ()))
        return buffered + (0 if result is None else int(result.message_count))

    def purge(self, queue: str) -> int:
        """Drop what waits in the broker's queue, then what this consumer prefetched of it
        (in that order, so the broker sends nothing new in between)."""
        dropped = int(self._admin("purge", lambda ch: ch.queue_purge(queue), 0) or 0)
        with self._con_lock:
            self._read_prefetched()
            buffer = self._buffers.get(queue)
            channel = self._consumer.current
            while buffer and channel is not None:
                delivery = buffer.popleft()
                delivery.handle.settled = True
                try:
                    channel.basic_reject(delivery.handle.tag, requeue=False)
                except (*CONNECTION_ERRORS, *CHANNEL_ERRORS):
                    self._consumer.drop()  # un-acked ones go back to the queue
                    self._consumers.clear()
                    break
                dropped += 1
        return dropped

    def _read_prefetched(self) -> None:
        """Move deliveries already sent to this consumer from the socket into the buffers."""
        if self._consumer.current is None or self._closing:
            return
        try:
            while self._consumer.drain(0):
                pass
        except RECOVERABLE:
            self._consumer.drop()  # their deliveries go back to the broker's queues
            self._consumers.clear()
            for buffer in self._buffers.values():
                buffer.clear()

    def delete(self, queue: str) -> None:
        with self._con_lock:
            self._check_open()
            tag = self._consumers.pop(queue, None)
            buffered = self._buffers.pop(queue, deque())
            channel = self._consumer.current
            if tag and channel is not None:
                try:
                    channel.basic_cancel(tag)
                    for delivery in buffered:
                        delivery.handle.settled = True
                        channel.basic_reject(delivery.handle.tag, requeue=True)
                except (*CONNECTION_ERRORS, *CHANNEL_ERRORS):
                    self._consumer.drop()
                    self._consumers.clear()
        self._admin("delete", lambda channel: channel.queue_delete(queue), None)
        with self._pub_lock:
            self._declarations.forget(queue)

    def _admin(
        self, what: str, operation: Callable[[Any], T], missing: T | None = None
    ) -> T | None:
        """Run ``operation`` on the publisher channel, reconnecting like ``_publish``;
        ``missing`` is the answer when the broker says the queue does not exist."""
        while True:
            with self._pub_lock:
                self._check_open()
                try:
                    result = operation(self._publisher.channel())
                    self._pub_failing_since, self._pub_attempt = None, 0
                    return result
                except amqp_errors.NotFound:
                    self._publisher.reset_channel()
                    return missing
                except CHANNEL_ERRORS as exc:
                    self._publisher.reset_channel()
                    raise map_channel_error(exc, f"amqp {what}") from None
                except RECOVERABLE as exc:
                    self._after_publisher_failure(exc, [])
            self._wait_for_broker(what)

    def _wait_for_broker(self, what: str) -> None:
        """Back off before the next publisher reconnect, or give up past the timeout."""
        since = self._pub_failing_since or time.monotonic()
        if time.monotonic() - since > self.settings.reconnect_timeout:
            self._pub_failing_since, self._pub_attempt = None, 0
            raise ConnectionLost(
                f"amqp {what}: no broker reachable for {self.settings.reconnect_timeout:g} s"
            )
        time.sleep(backoff(self._pub_attempt))
        self._pub_attempt += 1

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        """Close both connections; un-acked deliveries go back to their queues."""
        if self._closing:
            return
        self._closing = True  # a receive blocked in another thread returns within _SLICE
        with self._con_lock:
            self._consumer.close()
            self._consumers.clear()
            self._buffers.clear()
        with self._pub_lock:
            self._publisher.close()

    def _check_open(self) -> None:
        if self._closing:
            raise TransportClosed(f"{self.url.redacted()} is closed")


__all__ = ["AMQPTransport", "priority_level"]
