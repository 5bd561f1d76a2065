"""queuekit's messages as AMQP messages and back: properties, priority levels, delay routes.

Outbound, a body with headers and options becomes a ``Publication``: a persistent py-amqp
message plus the exchange and routing key it goes to (the work queue of its priority's band,
the delay cascade, which delivers into that queue, or the topic exchange). Inbound, the
user's headers are what is left once the headers of the delay cascade and of RabbitMQ's
dead-lettering are taken out.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import amqp

from ...spi.errors import Unsupported
from ...spi.transport import Headers, SendOptions
from . import delays
from .settings import Settings

#: The adapter's name in the errors raised here (``AMQPTransport.name``).
ADAPTER = "amqp"
#: A quorum queue's count of a message's earlier deliveries (returned ones).
DELIVERY_COUNT_HEADER = "x-delivery-count"
#: Headers the broker adds on dead-lettering (our delay cascade), and the above: not the user's.
_BROKER_HEADERS = ("x-death", "x-first-death-", "x-last-death-", DELIVERY_COUNT_HEADER)


def priority_level(priority: int, max_priority: int) -> int:
    """queuekit's 0-255 onto RabbitMQ's 0..``max_priority``, rounding up: 0 stays the lowest
    level alone, 255 the highest (230-255 at the default of 10); order is kept, and values
    in the same band (25.5 wide at 10 levels) share a level."""
    return -(-max(0, min(255, priority)) * max_priority // 255)


@dataclass(frozen=True, slots=True)
class Publication:
    """One message to publish: where to, and whether an unroutable one must come back."""

    exchange: str
    routing_key: str
    message: Any  # amqp.Message
    mandatory: bool
    #: The work queue it ends in (its band's), declared before publishing; None: a broadcast.
    destination: str | None


def for_queue(
    queue: str, body: bytes, headers: Headers, options: SendOptions, settings: Settings
) -> Publication:
    """``body`` for the work queue of ``queue``'s band for its priority: straight to it, or
    into the delay cascade when not yet due. The caller has checked ``body`` and ``options``
    (``Transport.check_outgoing``)."""
    bands = settings.bands
    queue = bands.queue_for(queue, bands.start_of(options.priority))
    wait = 0
    if options.not_before is not None:
        wait = delays.seconds_until(options.not_before, time.time())
        if wait > delays.MAX_DELAY:
            raise Unsupported(f"a delay over {delays.MAX_DELAY} s (8.5 years)", ADAPTER)
    if wait:
        headers = {**headers, delays.DESTINATION_HEADER: queue}
    message = amqp.Message(body, **_properties(headers, options.priority, settings))
    if wait:
        exchange, key = delays.route(wait)
        return Publication(exchange, key, message, True, queue)
    return Publication("", queue, message, True, queue)


def for_topic(topic: str, body: bytes, headers: Headers, settings: Settings) -> Publication:
    """``body`` for every subscription whose pattern matches ``topic``; none is no error."""
    message = amqp.Message(body, **_properties(headers, None, settings))
    return Publication(settings.exchange, topic, message, False, None)


def _properties(headers: Headers, priority: int | None, settings: Settings) -> dict[str, Any]:
    properties: dict[str, Any] = {"delivery_mode": 2}
    if headers:
        properties["application_headers"] = dict(headers)
    if priority is not None:
        properties["priority"] = priority_level(priority, settings.max_priority)
    return properties


def returned(exchange: str, routing_key: str, message: Any) -> Publication:
    """A message the broker sent back as unroutable, ready to publish again. Only work
    queue messages are mandatory: straight to their queue, or named by the delay header."""
    headers = message.properties.get("application_headers") or {}
    destination = routing_key if not exchange else headers.get(delays.DESTINATION_HEADER)
    return Publication(exchange, routing_key, message, True, destination)


def as_bytes(body: Any) -> bytes:
    return body.encode() if isinstance(body, str) else bytes(body)


def delivery_count(raw: Mapping[str, Any] | None, quorum: bool) -> int | None:
    """How many times a quorum queue has delivered the message, this time included (it
    counts the earlier ones in ``x-delivery-count``); None for classic queues, which only
    say ``redelivered``."""
    if not quorum:
        return None
    earlier = (raw or {}).get(DELIVERY_COUNT_HEADER, 0)
    return int(earlier) + 1


def user_headers(raw: Mapping[str, Any] | None) -> dict[str, str]:
    """The headers the sender set, as strings (py-amqp may hand back bytes; another client
    may have sent any AMQP table value: bytes that are not UTF-8 keep their bytes as
    backslash escapes rather than stop the consumer)."""
    if not raw:
        return {}
    headers = {}
    for key, value in raw.items():
        name = str(key)
        if name == delays.DESTINATION_HEADER or name.startswith(_BROKER_HEADERS):
            continue
        if isinstance(value, bytes | bytearray):
            headers[name] = bytes(value).decode("utf-8", "backslashreplace")
        else:
            headers[name] = str(value)
    return headers
