"""The AMQP 0-9-1 transport (RabbitMQ): the contract, wired to a publisher and a consumer.

Two connections, each made on first use: the ``Publisher`` (``send``, ``send_many``,
``broadcast``, declarations, ``depth``/``purge``/``delete``) behind a lock, so any thread may
publish; and the ``Consumer`` (``receive``/``ack``/``nack``) for the one consumer thread. A
receive loop draining its socket therefore never delays a publish, and a publish waiting for
confirms never delays an ack. See docs/amqp.md for the guarantees and what is lost when.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from ...spi.capabilities import Capabilities
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
        self._publisher = Publisher(settings, url.redacted())
        self._consumer = Consumer(settings, prefetch, url.redacted())

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
        self.require(options)
        return messages.for_queue(queue, body, headers, options, self.settings)

    # -- consuming --------------------------------------------------------------------

    def receive(self, queue: str, timeout: float) -> Delivery | None:
        """Streaming (``prefetch > 1``): one consumer per queue keeps up to ``prefetch``
        deliveries in flight. Strict (``prefetch <= 1``): ``basic.get``, and when the queue is
        empty a consumer that lives only until its one delivery, so this worker never holds a
        message it did not ask for (``depth``/``purge`` elsewhere see every waiting one)."""
        return self._consumer.receive(queue, timeout)

    def ack(self, delivery: Delivery) -> None:
        self._consumer.ack(delivery)

    def nack(self, delivery: Delivery, *, requeue: bool) -> None:
        self._consumer.nack(delivery, requeue=requeue)

    # -- publish/subscribe ------------------------------------------------------------

    def broadcast(self, topic: str, body: bytes, headers: Headers) -> None:
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
        """Messages waiting in the broker's queue plus those prefetched here and not yet
        handed out by ``receive`` (other consumers' prefetched messages are not counted)."""
        result = self._publisher.admin(
            "depth", lambda channel: channel.queue_declare(queue, passive=True), None
        )
        buffered = self._consumer.prefetched(queue)
        return buffered + (0 if result is None else int(result.message_count))

    def purge(self, queue: str) -> int:
        """Drop what waits in the broker's queue, then what this consumer prefetched of it
        (in that order, so the broker sends nothing new in between)."""
        dropped = int(
            self._publisher.admin("purge", lambda channel: channel.queue_purge(queue), 0) or 0
        )
        return dropped + self._consumer.reject_prefetched(queue)

    def delete(self, queue: str) -> None:
        self._consumer.stop(queue)
        self._publisher.admin("delete", lambda channel: channel.queue_delete(queue), None)
        self._publisher.forget(queue)

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        """Close both connections; un-acked deliveries go back to their queues."""
        if self._consumer.closing:
            return
        # a receive blocked in another thread sees this and returns within a drain slice
        self._consumer.closing = self._publisher.closing = True
        self._consumer.close()
        self._publisher.close()


__all__ = ["AMQPTransport"]
