"""queuekit: background jobs and messaging, one small interface over many real brokers.

Start with :func:`connect` and :class:`AbstractQueue`; adapters are chosen by URL scheme.
"""

from .core.abstract import AbstractQueue
from .core.bulk import Bulk
from .core.capabilities import Capabilities
from .core.connection import Connection, connect
from .core.envelope import Message, Metadata
from .core.errors import (
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
from .core.events import Event, EventManager, bridge
from .core.fluent import PendingJob
from .core.hooks import Hooks
from .core.jobstore import FailedMessage
from .core.priorities import PriorityRange
from .core.queue import Queue, Topic
from .core.records import JobRecord
from .core.registry import register_transport
from .core.retry import Exponential, Intervals, NoRetry, Repeat, RetryStrategy
from .core.rpc import Reply
from .core.transport import Delivery, Outgoing, SendOptions, Transport

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
