"""queuekit: background jobs and messaging, one small interface over many real brokers.

Start with :func:`connect` and :class:`AbstractQueue`; adapters are chosen by URL scheme.
This module exports what an application uses; adapter authors import :mod:`queuekit.spi`.
The layers beneath are drawn in docs/architecture.md.
"""

from importlib.metadata import PackageNotFoundError, version

from .client.abstract import AbstractQueue
from .client.aio import AsyncQueue
from .client.connection import Connection, connect
from .client.events import Event, EventManager, bridge
from .client.fluent import PendingJob
from .client.functions import JobFunction, job
from .client.processes import ProcessManager
from .client.queue import Queue, Topic
from .features.bulk import Bulk
from .features.envelope import Message, Metadata
from .features.hooks import Hooks
from .features.inbox import Inbox
from .features.outbox import outbox
from .features.retry import Exponential, Intervals, NoRetry, Repeat, RetryStrategy
from .features.rpc import Reply
from .jobstore.base import FailedMessage, JobStoreError, Schedule
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

try:  # the installed distribution's version: pyproject.toml is the one place it is written
    __version__ = version("queuekit")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AbstractQueue",
    "AsyncQueue",
    "Bulk",
    "Capabilities",
    "ConfigurationError",
    "Connection",
    "ConnectionLost",
    "Event",
    "EventManager",
    "Exponential",
    "FailedMessage",
    "Hooks",
    "Inbox",
    "Intervals",
    "JobFunction",
    "JobRecord",
    "JobStoreError",
    "MalformedMessage",
    "Message",
    "MessageTooLarge",
    "Metadata",
    "MissingDependency",
    "NoRetry",
    "PendingJob",
    "PermanentError",
    "PriorityRange",
    "ProcessManager",
    "Queue",
    "QueueFull",
    "QueuekitError",
    "RemoteError",
    "Repeat",
    "Reply",
    "ReplyTimeout",
    "RetryLater",
    "RetryStrategy",
    "Schedule",
    "StopWorker",
    "Topic",
    "TransportClosed",
    "TransportError",
    "UnknownScheme",
    "Unsupported",
    "bridge",
    "connect",
    "job",
    "outbox",
]
