"""What the adapter declares on the broker, and what the publisher channel declared already.

Work queues are durable classic queues, with ``x-max-priority`` when priorities are on, or
quorum queues (``?queue_type=quorum``: replicated over a cluster's nodes, no priorities, no
delivery limit so the broker never drops a message the core did not settle). A queue made
with other arguments or of the other type is a PRECONDITION_FAILED, never a silent change.
Broadcasts go through one durable topic exchange; a subscription is a durable queue (of the
same type) bound to it by a pattern, which RabbitMQ deletes after ``subscription_ttl``
without a consumer. Declaring is idempotent but costs a round trip, so the publisher
declares each queue once per channel (``Declarations``). The delay cascade's own
exchanges and queues are in ``delays``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import delays
from .messages import Publication
from .settings import Settings

#: Queues made by ``subscribe``; the consumer reads them without declaring them.
SUBSCRIPTION_PREFIX = "queuekit.sub."


def declare_queue(channel: Any, queue: str, settings: Settings) -> None:
    channel.queue_declare(queue, durable=True, auto_delete=False, arguments=_arguments(settings))


def _arguments(settings: Settings) -> dict[str, Any]:
    if settings.quorum:
        return {"x-queue-type": "quorum"}
    mp = settings.max_priority
    return {"x-max-priority": mp} if mp else {}


def declare_topic_exchange(channel: Any, settings: Settings) -> None:
    channel.exchange_declare(settings.exchange, "topic", durable=True, auto_delete=False)


def declare_subscription(channel: Any, name: str, pattern: str, settings: Settings) -> None:
    """A subscription queue ``name`` collecting what is broadcast to topics ``pattern`` matches."""
    ttl = int(settings.subscription_ttl * 1000)
    declare_topic_exchange(channel, settings)
    arguments = {"x-expires": ttl, **({"x-queue-type": "quorum"} if settings.quorum else {})}
    channel.queue_declare(name, durable=True, auto_delete=False, arguments=arguments)
    channel.queue_bind(name, settings.exchange, pattern)


class Declarations:
    """What the current publisher channel has declared, so each is declared once per channel.

    Not thread-safe: the publisher's lock guards it.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._declared: set[str] = set()
        self._delay_ready = False
        self._exchange_ready = False

    def reset(self) -> None:
        """A new channel: it has declared nothing yet."""
        self._declared.clear()
        self._delay_ready = self._exchange_ready = False

    def prepare(self, channel: Any, items: Iterable[Publication]) -> None:
        """Declare what ``items`` need: the topic exchange for a broadcast, else the work
        queue each goes to (its band's: only bands a message was sent to exist), and the
        delay cascade bound to that queue when an item goes through it."""
        for item in items:
            queue = item.destination
            if queue is None:
                if not self._exchange_ready:
                    declare_topic_exchange(channel, self._settings)
                    self._exchange_ready = True
                continue
            if queue not in self._declared:
                declare_queue(channel, queue, self._settings)
                self._declared.add(queue)
            if item.exchange:
                if not self._delay_ready:
                    delays.declare_topology(channel)
                    self._delay_ready = True
                bound = _delay_binding(queue)
                if bound not in self._declared:
                    delays.bind_destination(channel, queue)
                    self._declared.add(bound)

    def forget_queues(self) -> None:
        """Declare queues (and their delay bindings) again: one was deleted elsewhere."""
        self._declared.clear()

    def forget(self, queue: str) -> None:
        """``queue`` was deleted: declare it again before its next message."""
        self._declared.discard(queue)
        self._declared.discard(_delay_binding(queue))


def _delay_binding(queue: str) -> str:
    return f"\0delay\0{queue}"
