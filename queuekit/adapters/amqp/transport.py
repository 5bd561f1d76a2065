"""The AMQP 0-9-1 transport (RabbitMQ): the contract, wired to a publisher and a consumer.

Two connections, each made on first use: the ``Publisher`` (``send``, ``send_many``,
``broadcast``, declarations, ``depth``/``purge``/``delete``) behind a lock, so any thread may
publish; and the ``Consumer`` (``receive``/``ack``/``nack``) for the one consumer thread. A
receive loop draining its socket therefore never delays a publish, and a publish waiting for
confirms never delays an ack. A work queue is one broker queue per priority band
(``?priority_bands=``), which serves priority ranges. See docs/amqp.md for the guarantees
and what is lost when.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from functools import partial
from typing import Any

from ...spi.capabilities import Capabilities
from ...spi.priorities import PriorityRange
from ...spi.transport import NO_OPTIONS, Delivery, Headers, Outgoing, SendOptions, Transport
from ...spi.urls import TransportURL
from . import messages
from .consuming import Consumer
from .messages import Publication
from .publishing import Publisher
from .settings import Settings
from .topology import SUBSCRIPTION_PREFIX, declare_subscription


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
            priority_range=settings.max_priority > 0 or settings.quorum,
            priority_bands=settings.bands.starts,
            inspect=True,
            max_message_size=settings.max_message_size,
            reasons={
                "dedup": "RabbitMQ keeps no dedup keys; the core's job store does",
                **_reasons(settings),
            },
        )
        self._publisher = Publisher(settings, self)
        self._consumer = Consumer(settings, prefetch, self)
        #: The broker queues a receive reads, by queue (and range): worked out once.
        self._sources_of: dict[tuple[str, PriorityRange | None], list[str]] = {}

    # -- publishing -------------------------------------------------------------------

    def send(
        self, queue: str, body: bytes, headers: Headers, *, options: SendOptions = NO_OPTIONS
    ) -> None:
        item = self._publication(queue, body, headers, options)
        self._publisher.publish(queue, [item])

    def send_many(self, queue: str, messages: Sequence[Outgoing]) -> None:
        items = [self._publication(queue, m.body, m.headers, m.options) for m in messages]
        if items:
            self._publisher.publish(queue, items)

    def _publication(
        self, queue: str, body: bytes, headers: Headers, options: SendOptions
    ) -> Publication:
        self.check_outgoing(body, options)
        return messages.for_queue(queue, body, headers, options, self.settings)

    # -- consuming --------------------------------------------------------------------

    def receive(self, queue: str, timeout: float) -> Delivery | None:
        """Streaming (``prefetch > 1``): one consumer per queue keeps up to ``prefetch``
        deliveries in flight. Strict (``prefetch <= 1``): ``basic.get``, and when the queue is
        empty a consumer that lives only until its one delivery, so this worker never holds a
        message it did not ask for (``depth``/``purge`` elsewhere see every waiting one).
        Every band's queue is consumed, highest band first."""
        return self._consumer.receive(queue, self._sources(queue), timeout)

    def receive_priorities(
        self, queue: str, timeout: float, priorities: PriorityRange
    ) -> Delivery | None:
        """``receive`` from the queues of the bands ``priorities`` covers, highest first; a
        range that cuts a band is :class:`Unsupported` (naming ``?priority_bands=``)."""
        sources = self._sources_of.get((queue, priorities))
        if sources is None:
            bands = self.settings.bands
            starts = bands.starts_within(priorities, self.name)
            sources = self._sources_of[queue, priorities] = [
                bands.queue_for(queue, start) for start in starts
            ]
        return self._consumer.receive(queue, sources, timeout)

    def _sources(self, queue: str) -> list[str]:
        """The broker queues that hold ``queue``'s messages, highest band first."""
        sources = self._sources_of.get((queue, None))
        if sources is None:
            plain = queue.startswith(SUBSCRIPTION_PREFIX)
            sources = [queue] if plain else self.settings.bands.queues(queue)
            self._sources_of[queue, None] = sources
        return sources

    def ack(self, delivery: Delivery) -> None:
        self._consumer.ack(delivery)

    def nack(self, delivery: Delivery, *, requeue: bool) -> None:
        self._consumer.nack(delivery, requeue=requeue)

    # -- publish/subscribe ------------------------------------------------------------

    def broadcast(self, topic: str, body: bytes, headers: Headers) -> None:
        self.check_outgoing(body)
        self._publisher.publish(None, [messages.for_topic(topic, body, headers, self.settings)])

    def subscribe(self, pattern: str) -> str:
        name = f"{SUBSCRIPTION_PREFIX}{uuid.uuid4().hex}"
        settings = self.settings
        self._publisher.admin(
            "subscribe", lambda channel: declare_subscription(channel, name, pattern, settings)
        )
        return name

    def unsubscribe(self, subscription: str) -> None:
        self.delete(subscription)

    # -- inspection -------------------------------------------------------------------

    def depth(self, queue: str) -> int:
        """Ready messages (``Transport.depth``): those waiting in the broker's queues (every
        band's). RabbitMQ counts a message a consumer prefetched as un-acked, in flight, and
        so does this (this transport's own buffer included); delayed messages wait in the
        shared delay cascade, not counted. A band's queue that was never declared counts 0.
        With no broker reachable it gives up after ``inspect_timeout`` s (default 5), so
        ``worker status`` and the dashboard say so instead of waiting ``reconnect_timeout``."""
        waiting = 0
        patience = self.settings.inspect_timeout
        for source in self._sources(queue):
            result = self._publisher.admin("depth", partial(_waiting, source), None,
                                           patience=patience)  # fmt: skip
            waiting += result or 0
        return waiting

    def purge(self, queue: str) -> int:
        """Drop what waits in the broker's queue, then what this consumer prefetched of it
        (in that order, so the broker sends nothing new in between), for every band."""
        sources = self._sources(queue)
        dropped = 0
        for source in sources:
            dropped += self._publisher.admin("purge", partial(_purge, source), 0) or 0
        return dropped + self._consumer.reject_prefetched(sources)

    def delete(self, queue: str) -> None:
        """Delete every band's queue of ``queue``."""
        sources = self._sources(queue)
        for key in [key for key in self._sources_of if key[0] == queue]:
            del self._sources_of[key]
        self._consumer.stop(sources)
        for source in sources:
            self._publisher.admin("delete", partial(_delete, source), None)
        self._publisher.forget(sources)

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        """Close both connections; un-acked deliveries go back to their queues."""
        if self.closed:
            return
        # a receive blocked in another thread sees this and returns within a drain slice
        self.closed = True
        self._consumer.close()
        self._publisher.close()


def _reasons(settings: Settings) -> dict[str, str]:
    """Why ``delay``, ``priority`` and ``priority_range`` are not declared, where not."""
    if settings.quorum:
        return {
            "delay": "quorum queues: the delay cascade is classic queues on one node; the"
            " core's delayed store keeps delays",
            "priority": "RabbitMQ 3.x quorum queues ignore priorities (4.x: two levels);"
            " priority bands still serve ranges",
        }
    reasons = {"delay": "turned off by ?delay=0"} if not settings.delay else {}
    if not settings.max_priority:
        reasons["priority"] = reasons["priority_range"] = "turned off by ?max_priority=0"
    return reasons


def _waiting(queue: str, channel: Any) -> int:
    return int(channel.queue_declare(queue, passive=True).message_count)


def _purge(queue: str, channel: Any) -> int:
    return int(channel.queue_purge(queue) or 0)


def _delete(queue: str, channel: Any) -> None:
    channel.queue_delete(queue)


__all__ = ["AMQPTransport"]
