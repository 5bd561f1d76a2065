"""Durable delays on plain RabbitMQ, with no plugin: a cascade of per-bit TTL queues.

A delay of ``d`` whole seconds (``0 < d < 2**28``, about 8.5 years) is written in binary as
the routing key: 28 words ``"0"``/``"1"``, most significant bit first. Level ``n`` is a
durable topic exchange ``queuekit.delay.NN`` and a durable queue of the same name whose
``x-message-ttl`` is ``2**n`` seconds. The exchange routes on word ``27 - n`` of the key:

- ``1`` goes to its queue; when the TTL expires RabbitMQ dead-letters the message (routing
  key unchanged) to the exchange of level ``n - 1``;
- ``0`` goes straight on to the exchange of level ``n - 1`` (an exchange-to-exchange binding).

Below level 0 sits ``queuekit.delay.deliver``, a headers exchange: each destination queue is
bound there on the header ``queuekit-delay-queue = <queue name>`` (exact match, so queue names
may hold dots or ``#``). A message therefore waits exactly the sum of the bits set.

Why it holds: every queue of a level has one TTL, so messages expire in arrival order and a
short delay never waits behind a long one (RabbitMQ only expires messages at a queue's head).
Queues and exchanges are durable and messages persistent, so waiting messages survive a broker
restart; the TTL clock keeps running over the restart. Granularity is one second; delays are
rounded up, never down, so a message is never early.
"""

from __future__ import annotations

import math
from typing import Any

LEVELS = 28
MAX_DELAY = 2**LEVELS - 1
PREFIX = "queuekit.delay"
DELIVER_EXCHANGE = f"{PREFIX}.deliver"
#: Names the destination queue on a delayed message; the adapter strips it on receive.
DESTINATION_HEADER = "queuekit-delay-queue"


def level_name(level: int) -> str:
    return f"{PREFIX}.{level:02d}"


def _next_exchange(level: int) -> str:
    return level_name(level - 1) if level > 0 else DELIVER_EXCHANGE


def _pattern(level: int, bit: str) -> str:
    return "*." * (LEVELS - 1 - level) + bit + ".#"


def seconds_until(not_before: float, now: float) -> int:
    """Whole seconds to wait, rounded up; 0 when already due."""
    return max(0, math.ceil(not_before - now - 1e-6))


def route(delay: int) -> tuple[str, str]:
    """The exchange to publish to and the routing key for ``delay`` seconds (``> 0``).

    Publishing at the level of the highest bit set skips the levels above it.
    """
    bits = format(delay, f"0{LEVELS}b")
    return level_name(delay.bit_length() - 1), ".".join(bits)


def declare_topology(channel: Any) -> None:
    """Declare every level (idempotent: same names, same arguments each time)."""
    channel.exchange_declare(DELIVER_EXCHANGE, "headers", durable=True, auto_delete=False)
    for level in range(LEVELS):
        name = level_name(level)
        channel.exchange_declare(name, "topic", durable=True, auto_delete=False)
        channel.queue_declare(
            name,
            durable=True,
            auto_delete=False,
            arguments={
                "x-message-ttl": 2**level * 1000,
                "x-dead-letter-exchange": _next_exchange(level),
                "x-queue-mode": "lazy",
            },
        )
    for level in range(LEVELS):
        name = level_name(level)
        channel.queue_bind(name, name, _pattern(level, "1"))
        channel.exchange_bind(_next_exchange(level), name, _pattern(level, "0"))


def bind_destination(channel: Any, queue: str) -> None:
    """Let delayed messages for ``queue`` reach it (idempotent)."""
    channel.queue_bind(
        queue, DELIVER_EXCHANGE, "", arguments={"x-match": "all", DESTINATION_HEADER: queue}
    )
