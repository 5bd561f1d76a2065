"""The adapter SPI: everything an adapter may import, and nothing else of queuekit.

An adapter subclasses :class:`Transport` (the contract is in :mod:`.transport`'s docstring),
declares its :class:`Capabilities`, maps its client library's exceptions onto :mod:`.errors`,
and is registered by URL scheme in the ``queuekit.transports`` entry-point group (or at run
time with :func:`register_transport`). ``queuekit.conformance`` then tells what holds.
"""

from .capabilities import FLAGS, Capabilities
from .errors import (
    ConfigurationError,
    ConnectionLost,
    MalformedMessage,
    MessageTooLarge,
    MissingDependency,
    QueueFull,
    QueuekitError,
    TransportClosed,
    TransportError,
    Unsupported,
)
from .priorities import MAX_PRIORITY, PriorityRange
from .registry import open_transport, register_transport
from .topics import topic_matches
from .transport import (
    NO_OPTIONS,
    Delivery,
    Headers,
    Outgoing,
    QueueStats,
    SendOptions,
    Transport,
)
from .urls import Host, TransportURL, redact

__all__ = [
    "FLAGS",
    "MAX_PRIORITY",
    "NO_OPTIONS",
    "Capabilities",
    "ConfigurationError",
    "ConnectionLost",
    "Delivery",
    "Headers",
    "Host",
    "MalformedMessage",
    "MessageTooLarge",
    "MissingDependency",
    "Outgoing",
    "PriorityRange",
    "QueueFull",
    "QueueStats",
    "QueuekitError",
    "SendOptions",
    "Transport",
    "TransportClosed",
    "TransportError",
    "TransportURL",
    "Unsupported",
    "open_transport",
    "redact",
    "register_transport",
    "topic_matches",
]
