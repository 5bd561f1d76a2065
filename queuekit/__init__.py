"""queuekit: background jobs and messaging, one small interface over many real brokers.

Start with :func:`connect` and :class:`AbstractQueue`; adapters are chosen by URL scheme.
"""

from .client.abstract import AbstractQueue
from .client.connection import Connection, connect
from .client.events import Event, EventManager, bridge
from .client.fluent import PendingJob
from .client.queue import Queue, Topic
from .features.bulk import Bulk
from .features.envelope import Message, Metadata
from .features.hooks import Hooks
from .features.retry import Exponential, Intervals, NoRetry, Repeat, RetryStrategy
from .features.rpc import Reply
from .jobstore.base import FailedMessage
from .jobstore.records import JobRecord
from .spi.capabilities import Capabilities
from .spi.errors import (
    ConfigurationError,
    ConnectionLost,
    MalformedMessage,
    MessageTooLarge,
    MissingDependency,
    PermanentError,
    QueueFull,
    QueuekitError,
    RemoteError,
    ReplyTimeout,
    RetryLater,
    StopWorker,
    TransportClosed,
    TransportError,
    UnknownScheme,
    Unsupported,
)
from .spi.priorities import PriorityRange
from .spi.registry import register_transport
from .spi.transport import Delivery, Outgoing, SendOptions, Transport

__all__ = [
    "AbstractQueue",
    "Bulk",
    "Capabilities",
    "ConfigurationError",
    "Connection",
    "ConnectionLost",
    "Delivery",
    "Event",
    "EventManager",
    "Exponential",
    "FailedMessage",
    "Hooks",
    "Intervals",
    "JobRecord",
    "MalformedMessage",
    "Message",
    "MessageTooLarge",
    "Metadata",
    "MissingDependency",
    "NoRetry",
    "Outgoing",
    "PendingJob",
    "PermanentError",
    "PriorityRange",
    "Queue",
    "QueueFull",
    "QueuekitError",
    "RemoteError",
    "Repeat",
    "Reply",
    "ReplyTimeout",
    "RetryLater",
    "RetryStrategy",
    "SendOptions",
    "StopWorker",
    "Topic",
    "Transport",
    "TransportClosed",
    "TransportError",
    "UnknownScheme",
    "Unsupported",
    "bridge",
    "connect",
    "register_transport",
]
