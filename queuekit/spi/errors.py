"""queuekit's own exception tree.

Adapters map their client library's exceptions onto this tree at the boundary, so the
core and applications never catch ``kombu`` or ``stomp`` errors::

    QueuekitError
    ├── ConfigurationError          bad URL, unknown scheme, missing optional dependency
    │   ├── UnknownScheme
    │   └── MissingDependency
    ├── Unsupported                 a capability the adapter does not declare
    ├── MalformedMessage            a body that is not a queuekit envelope
    │   └── UnverifiedMessage       unsigned or forged where signatures are required
    ├── MessageTooLarge             refused at publish, never truncated
    ├── TransportError              the broker or the connection failed
    │   ├── ConnectionLost          recoverable: reconnecting may succeed
    │   ├── QueueFull               the broker would drop messages to take more: refused
    │   └── TransportClosed         the transport was closed; not recoverable
    └── JobControl                  raised *by work()* to steer the worker
        ├── PermanentError          fail now, skip retries
        ├── RetryLater              come back later without counting an attempt
        └── StopWorker              record this message, then end the loop
"""

from __future__ import annotations


class QueuekitError(Exception):
    """Base of every error queuekit raises."""


class ConfigurationError(QueuekitError):
    """The URL, the config file or the environment cannot be used as given."""


class UnknownScheme(ConfigurationError):
    """No transport is registered for a URL scheme."""


class MissingDependency(ConfigurationError):
    """An adapter's optional client library is not installed."""

    def __init__(self, scheme: str, extra: str, cause: str) -> None:
        self.scheme, self.extra = scheme, extra
        super().__init__(
            f"the {scheme}:// transport needs an optional dependency ({cause}): "
            f"install queuekit[{extra}]"
        )


class Unsupported(QueuekitError):
    """A feature was asked of an adapter that does not declare it.

    Raised instead of silently ignoring the request; ``alternative`` names what would serve.
    """

    def __init__(self, feature: str, adapter: str, alternative: str = "") -> None:
        self.feature, self.adapter, self.alternative = feature, adapter, alternative
        text = f"{adapter} does not support {feature}"
        super().__init__(f"{text}; {alternative}" if alternative else text)


class MalformedMessage(QueuekitError):
    """A body that does not decode as an envelope. Carries the raw bytes for the failed store."""

    def __init__(self, reason: str, body: bytes = b"") -> None:
        self.reason, self.body = reason, body
        super().__init__(f"malformed message: {reason}")


class UnverifiedMessage(MalformedMessage):
    """A body whose signature is missing, unknown or wrong where signing keys are set
    (:mod:`queuekit.features.signing`): it goes to the failed store and never runs."""


class MessageTooLarge(QueuekitError):
    """An encoded message exceeds the adapter's ``max_message_size``."""

    def __init__(self, size: int, limit: int, adapter: str) -> None:
        self.size, self.limit = size, limit
        super().__init__(f"message of {size} bytes exceeds {adapter}'s limit of {limit} bytes")


class TransportError(QueuekitError):
    """The broker or the connection to it failed.

    ``recoverable`` says whether reconnecting and retrying the operation may succeed.
    """

    recoverable = False


class ConnectionLost(TransportError):
    """The connection dropped or could not be made; a reconnect may succeed."""

    recoverable = True


class QueueFull(TransportError):
    """The queue holds as much as the broker keeps; publishing more would make it drop
    messages silently (e.g. an XMPP node's ``max_items``), so the adapter refuses instead.
    Consume or purge the queue, or raise the broker's limit."""


class TransportClosed(TransportError):
    """An operation was attempted after ``close()``."""


class JobControl(QueuekitError):
    """Raised from ``work()`` to tell the worker what to do with the message in hand."""


class PermanentError(JobControl):
    """The job can never succeed: record it as failed at once, with no retries."""


class RetryLater(JobControl):
    """Not now: put the message back for later without counting an attempt."""

    def __init__(self, delay: float = 60.0, reason: str = "") -> None:
        self.delay = delay
        super().__init__(reason or f"retry in {delay:g}s")


class StopWorker(JobControl):
    """Record the message as failed, then end the dispatch loop (e.g. a lost database)."""


class ReplyTimeout(QueuekitError):
    """``call()`` got no reply in time (the request may still run: it is not withdrawn)."""


class RemoteError(QueuekitError):
    """The worker failed the request for good; ``reason`` is what the failed store says."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
