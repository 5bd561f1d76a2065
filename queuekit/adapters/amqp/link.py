"""One AMQP connection and channel that can be dropped and remade, trying each URL host.

kombu opens the connection (URL pieces, TLS, timeouts); the channel it hands back is py-amqp's,
which the adapter drives directly where kombu would cost a round trip per message.
A ``Link`` is not thread-safe: its owner serialises access with a lock.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from amqp import exceptions as amqp_errors
from kombu import connection as _kombu_connection

from ...spi.errors import ConfigurationError, ConnectionLost, TransportError
from ...spi.tls import refusal
from .settings import Settings

log = logging.getLogger("queuekit.amqp")

#: kombu's connection class (untyped, so held as Any for mypy strict).
KombuConnection: Any = _kombu_connection.Connection

#: Failures of the connection itself: dropping it and reconnecting may cure them.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    amqp_errors.ConnectionError,
    amqp_errors.RecoverableConnectionError,
    OSError,  # socket errors, timeouts on write, EOF from a restarted broker
)
#: Failures the broker reports on one channel (it closes that channel, not the connection).
CHANNEL_ERRORS: tuple[type[BaseException], ...] = (amqp_errors.ChannelError,)
#: RabbitMQ's PRECONDITION_FAILED text when a queue exists with other arguments (its
#: ``x-queue-type`` or ``x-max-priority``: it names the first that differs).
_ARGUMENTS_CLASH = "inequivalent arg '"
#: The oldest RabbitMQ with quorum queues.
QUORUM_SINCE = (3, 8)
#: What a reconnect may fix: the above plus our own ConnectionLost from a failed connect.
RECOVERABLE: tuple[type[BaseException], ...] = (ConnectionLost, *CONNECTION_ERRORS)


def map_channel_error(exc: BaseException, what: str) -> Exception:
    """queuekit's error for a channel-level failure of ``what``."""
    if isinstance(exc, amqp_errors.PreconditionFailed) and _ARGUMENTS_CLASH in str(exc):
        return ConfigurationError(
            f"{what}: the queue exists with other arguments than the URL asks for (RabbitMQ"
            " cannot turn a classic queue into a quorum queue or back, nor change its"
            " ?max_priority=): drain and delete it, or use another queue name"
            f" ({exc})"
        )
    if isinstance(exc, amqp_errors.PreconditionFailed | amqp_errors.AccessRefused):
        return ConfigurationError(f"{what}: {exc}")
    return TransportError(f"{what}: {exc}")


class Link:
    """A connection plus one channel, made on first use and after every drop."""

    def __init__(
        self,
        settings: Settings,
        role: str,
        on_channel: Callable[[Any], None] | None = None,
    ) -> None:
        self.settings = settings
        self.role = role
        self._on_channel = on_channel
        self._connection: Any = None
        self._raw: Any = None  # py-amqp's connection, kept to free its socket whatever happens
        self._channel: Any = None
        self._next_host = 0
        #: Bumped on every new connection; deliveries and confirms of older ones are void.
        self.generation = 0

    @property
    def current(self) -> Any:
        """The channel if one is open now, else None (never connects)."""
        return self._channel

    def channel(self) -> Any:
        """The open channel, connecting (trying each host once, in turn) if needed."""
        if self._channel is not None and self._channel.is_open:
            return self._channel
        if self._connection is not None and self._connection.connected:
            self._open_channel()
            return self._channel
        self.drop()
        self._connect()
        return self._channel

    def _connect(self) -> None:
        hosts = self.settings.hosts
        errors = []
        for attempt in range(len(hosts)):
            index = (self._next_host + attempt) % len(hosts)
            host = hosts[index]
            connection = KombuConnection(**self.settings.kombu_kwargs(host))
            try:
                # One attempt: kombu's connect() retries once after 2 s, which every
                # reconnect loop (and a publish timeout of a few seconds) would pay.
                connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
                self._connection, self._raw = connection, connection.connection
                self._check_server(host)
                self._open_channel()
            except amqp_errors.AccessRefused as exc:
                _quiet_release(connection, self._raw)
                self._connection = self._raw = self._channel = None
                raise ConfigurationError(f"amqp {host}: access refused: {exc}") from None
            except ConfigurationError:
                _quiet_release(connection, self._raw)
                self._connection = self._raw = self._channel = None
                raise
            except (*CONNECTION_ERRORS, *CHANNEL_ERRORS) as exc:
                _quiet_release(connection, self._raw)
                self._connection = self._raw = self._channel = None
                tls = self.settings.tls  # a certificate problem: no reconnect will cure it
                if tls is not None and (refused := refusal(exc, f"amqps {host}", tls)):
                    raise refused from None
                errors.append(f"{host}: {exc}")
                continue
            self._next_host = index
            self.generation += 1
            if self.generation > 1 or index:
                log.info("amqp %s connection made to %s", self.role, host)
            return
        raise ConnectionLost(f"amqp: no broker answered ({'; '.join(errors)})")

    def _check_server(self, host: object) -> None:
        """Refuse a broker too old for what the URL asks (quorum queues need 3.8)."""
        version = server_version(self._raw.server_properties)
        if self.settings.quorum and version is not None and version < QUORUM_SINCE:
            shown = ".".join(map(str, version))
            raise ConfigurationError(f"amqp {host}: RabbitMQ {shown} has no quorum queues (3.8+)")

    def _open_channel(self) -> None:
        assert self._connection is not None
        channel = self._connection.channel()
        if self._on_channel is not None:
            self._on_channel(channel)
        self._channel = channel

    def reset_channel(self) -> None:
        """Forget the channel after a channel error (the broker closed it); keep the socket."""
        channel, self._channel = self._channel, None
        if channel is not None and channel.is_open:
            try:
                channel.close()
            except (*CONNECTION_ERRORS, *CHANNEL_ERRORS):
                pass
        if self._connection is not None:
            self.generation += 1

    def drain(self, timeout: float) -> bool:
        """Process incoming frames for up to ``timeout`` s; False when nothing came."""
        assert self._connection is not None
        connection = self._connection.connection
        try:
            connection.drain_events(timeout=timeout)
        except TimeoutError:  # socket.timeout
            if self.settings.heartbeat:
                connection.heartbeat_tick()
            return False
        return True

    def socket(self) -> Any:
        """The connection's socket, for ``select`` (the connection must be open)."""
        assert self._connection is not None
        return self._connection.connection.sock

    def heartbeat(self) -> None:
        """Send a heartbeat if one is due; raise when the broker has been silent too long."""
        if self._connection is not None:
            self._connection.connection.heartbeat_tick()

    def drop(self) -> None:
        """Abandon the connection (after a failure): close it without waiting on the broker."""
        connection, raw = self._connection, self._raw
        self._connection = self._raw = self._channel = None
        if connection is not None:
            _quiet_release(connection, raw)

    def close(self) -> None:
        """Close politely (un-acked deliveries go back to their queues)."""
        connection, raw = self._connection, self._raw
        self._connection = self._raw = self._channel = None
        if connection is None:
            return
        try:
            connection.close()
        except (*CONNECTION_ERRORS, *CHANNEL_ERRORS):
            _quiet_release(connection, raw)


def _quiet_release(connection: Any, raw: Any) -> None:
    # drops the socket without a closing handshake; it already failed, free what is left
    with contextlib.suppress(Exception):
        connection.collect()
    with contextlib.suppress(Exception):
        if raw is not None:
            raw.collect()


def server_version(properties: dict[str, Any]) -> tuple[int, ...] | None:
    """RabbitMQ's version from the connection's server properties (None if not told)."""
    raw = properties.get("version")
    text = raw.decode() if isinstance(raw, bytes) else str(raw or "")
    parts = text.split(".")
    if len(parts) < 2 or not all(part.isdigit() for part in parts[:2]):
        return None
    return tuple(int(part) for part in parts[:3] if part.isdigit())


def backoff(attempt: int) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0.1 s doubling to 2 s)."""
    return float(min(2.0, 0.1 * 2**attempt))


def sleep_until(deadline: float, seconds: float) -> None:
    time.sleep(max(0.0, min(seconds, deadline - time.monotonic())))


__all__ = [
    "CHANNEL_ERRORS",
    "CONNECTION_ERRORS",
    "RECOVERABLE",
    "Link",
    "backoff",
    "map_channel_error",
    "server_version",
    "sleep_until",
]
