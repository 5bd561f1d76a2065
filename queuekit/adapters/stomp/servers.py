"""What each STOMP server does natively, read from the CONNECTED frame's ``server`` header.

STOMP 1.2 fixes the frames but leaves the semantics that matter to a job queue to each
server: how prefetch is asked for, whether a delay header is honoured, what NACK does, how
topic wildcards are spelt. A :class:`ServerProfile` holds those differences so the
transport never assumes one server's behaviour of another.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...spi.capabilities import Capabilities
from ...spi.priorities import PriorityBands
from ...spi.urls import TransportURL

#: Bytes of one message body, below both servers' own limits (RabbitMQ refuses bodies over
#: 128 MiB, ActiveMQ's STOMP connector frames over 100 MiB) and small enough that stomp.py,
#: which re-scans its receive buffer for binary bodies, still reads it in reasonable time.
MAX_MESSAGE_SIZE = 16 * 1024 * 1024

#: Server priorities are 0-9 (ActiveMQ's JMS scale; RabbitMQ queues get x-max-priority 9).
PRIORITY_LEVELS = 10


def map_priority(priority: int) -> int:
    """queuekit's 0-255 onto the servers' 0-9, keeping order (255 -> 9, 0 -> 0)."""
    return max(0, min(PRIORITY_LEVELS - 1, round(priority * (PRIORITY_LEVELS - 1) / 255)))


@dataclass(frozen=True)
class ServerProfile:
    """One STOMP server product's native features, as this adapter uses them."""

    product: str
    #: SUBSCRIBE header that bounds un-acked messages in flight, or None.
    prefetch_header: str | None
    #: SEND header giving a delay in milliseconds, or None when the server has no scheduler.
    delay_header: str | None
    #: SEND/SUBSCRIBE headers that declare a /queue/ (RabbitMQ's queue arguments).
    queue_arguments: tuple[tuple[str, str], ...]
    #: NACK with ``requeue:true`` puts the message back (RabbitMQ). When False, a requeue is
    #: a transactional re-send plus ACK (ActiveMQ's NACK moves the message to its DLQ).
    native_requeue: bool
    #: ``#`` (any words) is spelt ``>`` and only allowed last (ActiveMQ); else AMQP syntax.
    activemq_wildcards: bool
    capabilities: Capabilities


def profile_for(server: str, url: TransportURL) -> ServerProfile:
    """The profile for the CONNECTED frame's ``server`` header (e.g. ``RabbitMQ/3.10.8``)."""
    product = server.split("/", 1)[0].strip().lower()
    priority = url.flag("priority", True)
    bands = PriorityBands.from_url(url) if priority else PriorityBands(())
    if product == "rabbitmq":
        return _rabbitmq(priority, bands)
    if product == "activemq":
        return _activemq(priority, bands, url.flag("scheduler", True))
    return _generic(server or "unknown")


_NO_DEDUP = "STOMP has no deduplication; the core's job store keeps dedup keys"
_NO_INSPECT = "STOMP cannot count or purge a queue"


def _rabbitmq(priority: bool, bands: PriorityBands) -> ServerProfile:
    reasons = {
        "delay": "RabbitMQ's STOMP ignores AMQ_SCHEDULED_DELAY; the core's delayed store serves",
        "dedup": _NO_DEDUP,
        "inspect": _NO_INSPECT,
    }
    if not priority:
        reasons["priority"] = "disabled by ?priority=0 (no x-max-priority on queues)"
        reasons["priority_range"] = "disabled by ?priority=0"
    return ServerProfile(
        product="RabbitMQ",
        prefetch_header="prefetch-count",
        delay_header=None,
        queue_arguments=(("x-max-priority", str(PRIORITY_LEVELS - 1)),) if priority else (),
        native_requeue=True,
        activemq_wildcards=False,
        capabilities=Capabilities(
            durable=True,
            redelivery=True,
            nack_requeue=True,
            fifo=True,
            competing_consumers=True,
            fanout=True,
            topics=True,
            priority=priority,
            priority_range=priority,
            priority_bands=bands.starts,
            max_message_size=MAX_MESSAGE_SIZE,
            reasons=reasons,
        ),
    )


def _activemq(priority: bool, bands: PriorityBands, scheduler: bool) -> ServerProfile:
    reasons = {"dedup": _NO_DEDUP, "inspect": _NO_INSPECT}
    if not priority:
        reasons["priority"] = "disabled by ?priority=0"
        reasons["priority_range"] = "disabled by ?priority=0"
    if not scheduler:
        reasons["delay"] = "disabled by ?scheduler=0 (broker without schedulerSupport)"
    return ServerProfile(
        product="ActiveMQ",
        prefetch_header="activemq.prefetchSize",
        delay_header="AMQ_SCHEDULED_DELAY" if scheduler else None,
        queue_arguments=(),
        native_requeue=False,
        activemq_wildcards=True,
        capabilities=Capabilities(
            durable=True,
            redelivery=True,
            nack_requeue=True,
            fifo=True,
            competing_consumers=True,
            fanout=True,
            topics=True,
            delay=scheduler,
            priority=priority,
            priority_range=priority,
            priority_bands=bands.starts,
            max_message_size=MAX_MESSAGE_SIZE,
            reasons=reasons,
        ),
    )


def _generic(server: str) -> ServerProfile:
    unknown = f"not known for STOMP server {server!r}"
    return ServerProfile(
        product=server,
        prefetch_header=None,
        delay_header=None,
        queue_arguments=(),
        native_requeue=True,
        activemq_wildcards=False,
        capabilities=Capabilities(
            competing_consumers=True,
            fanout=True,
            redelivery=True,
            reasons={
                name: unknown
                for name in (
                    "durable",
                    "nack_requeue",
                    "fifo",
                    "topics",
                    "delay",
                    "priority",
                    "priority_range",
                )
            }
            | {"dedup": _NO_DEDUP, "inspect": _NO_INSPECT},
        ),
    )


def topic_destinations(profile: ServerProfile, pattern: str) -> tuple[str, bool]:
    """The SUBSCRIBE destination for a queuekit pattern, and whether to filter locally.

    RabbitMQ binds ``/topic/<pattern>`` to amq.topic, so ``*`` and ``#`` work as they are.
    ActiveMQ spells ``#`` as ``>`` (zero or more words, only as the last word): a ``#``
    elsewhere subscribes to the broader prefix and the adapter filters with
    :func:`queuekit.spi.topics.topic_matches`.
    """
    if not profile.activemq_wildcards or "#" not in pattern.split("."):
        return "/topic/" + pattern, False
    words = pattern.split(".")
    first = words.index("#")
    if first == len(words) - 1:
        return "/topic/" + ".".join([*words[:-1], ">"]), False
    return "/topic/" + ".".join([*words[:first], ">"]), True
