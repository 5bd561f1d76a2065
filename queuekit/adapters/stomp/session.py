"""One live STOMP 1.2 connection through stomp.py, and the bookkeeping around its frames.

A :class:`Session` never reconnects: when its socket dies it says so (``alive`` turns
False, every receipt waiter wakes up with :class:`ConnectionLost`) and the transport opens a
new session, possibly on the next listed host. Keeping one session per socket means a
delivery's ack id can never be sent on a connection that did not deliver it.

stomp.py calls the listener from its I/O thread; everything here that the listener touches
is guarded by ``_lock`` or is an :class:`threading.Event`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any

import stomp
import stomp.exception
import stomp.protocol

from ...spi.errors import ConnectionLost, TransportError
from ...spi.tls import TLSSettings, refusal
from ...spi.urls import Host

log = logging.getLogger("queuekit.stomp")

#: Called from stomp.py's I/O thread with each MESSAGE frame's headers and body.
OnMessage = Callable[["Session", dict[str, str], bytes], None]
#: Called from stomp.py's I/O thread once when the session dies.
OnLost = Callable[["Session"], None]

_generations = itertools.count(1)
_CONFIRMED, _LOST = "confirmed", "lost"
#: ERROR frames a server sends while going away: a reconnect may well succeed.
_TRANSIENT = ("connection_forced", "shutdown", "shutting down", "stopping", "closing")


def _transient(error: str) -> bool:
    lowered = error.lower()
    return any(word in lowered for word in _TRANSIENT)


class _ConnectFailures(logging.Filter):
    """stomp.py tells why a connect failed only in a log record ("could not connect to host
    %s, port %s: %s", the error last), then raises a bare ConnectFailedException. While a
    thread is connecting (:meth:`catch`), its records are kept for the session, which says
    the reason once in its own error, instead of going to the log."""

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    @contextlib.contextmanager
    def catch(self) -> Iterator[list[BaseException]]:
        errors: list[BaseException] = []
        self._local.errors = errors
        try:
            yield errors
        finally:
            self._local.errors = None

    def filter(self, record: logging.LogRecord) -> bool:
        errors = getattr(self._local, "errors", None)
        if errors is None or not str(record.msg).startswith("could not connect"):
            return True
        if record.args and isinstance(record.args, tuple):
            error = record.args[-1]
            if isinstance(error, BaseException):
                errors.append(error)
        return False


_connect_failures = _ConnectFailures()
logging.getLogger("stomp.py").addFilter(_connect_failures)


class _Listener(stomp.ConnectionListener):  # type: ignore[misc]
    def __init__(self, session: Session) -> None:
        self.session = session

    def on_connected(self, frame: Any) -> None:
        self.session._connected(dict(frame.headers))

    def on_message(self, frame: Any) -> None:
        self.session.on_message(self.session, frame.headers, frame.body)

    def on_receipt(self, frame: Any) -> None:
        self.session._receipt(frame.headers.get("receipt-id", ""), _CONFIRMED)

    def on_error(self, frame: Any) -> None:
        self.session._error(dict(frame.headers), frame.body)

    def on_disconnected(self) -> None:
        self.session._lost("the connection closed")

    def on_heartbeat_timeout(self) -> None:
        self.session._lost("no heart-beat from the server")


class Session:
    """One STOMP connection to one host; thread-safe for sending and waiting on receipts."""

    def __init__(
        self,
        host: Host,
        *,
        login: str | None,
        passcode: str | None,
        vhost: str,
        heartbeat_ms: int,
        connect_timeout: float,
        tls: TLSSettings | None,
        on_message: OnMessage,
        on_lost: OnLost,
    ) -> None:
        self.host = host
        self.generation = next(_generations)
        self.on_message = on_message
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._receipts: dict[str, threading.Event] = {}
        self._outcomes: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._connected_event = threading.Event()
        self.server_headers: dict[str, str] = {}
        self.alive = False
        self.error: str | None = None
        #: The text of the last ERROR frame the server sent, and how many it sent.
        self.server_error: str | None = None
        self.errors = 0
        address = (host.name, host.port or 61613)
        # stomp.py's timeout bounds the TCP connect and the TLS handshake only: it then
        # puts the socket in blocking (plain) or non-blocking (TLS) mode, so a quiet
        # connection is never dropped by it. One attempt per host: failover is ours.
        self.conn = stomp.Connection12(
            [address],
            prefer_localhost=False,
            try_loopback_connect=False,
            reconnect_attempts_max=1,
            reconnect_sleep_initial=0,
            timeout=connect_timeout,
            heartbeats=(heartbeat_ms, heartbeat_ms),
            vhost=vhost,
            auto_decode=False,
        )
        if tls is not None:  # TLS or nothing: stomp.py never retries a TLS host in plain
            self.conn.set_ssl(
                for_hosts=[address],
                ca_certs=tls.ca,
                cert_file=tls.cert,
                key_file=tls.key,
                verify=tls.verify,
                ssl_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        self.conn.set_listener("queuekit", _Listener(self))
        with _connect_failures.catch() as failures:
            try:
                self.conn.connect(login, passcode, wait=False)
            except (stomp.exception.StompException, OSError) as exc:
                self._teardown()
                cause: BaseException = failures[-1] if failures else exc
                refused = tls is not None and refusal(cause, f"stomp+ssl {host}", tls)
                if refused:
                    raise refused from None
                raise ConnectionLost(f"cannot connect to STOMP server {host}: {cause}") from None
        if not self._connected_event.wait(connect_timeout) or not self.alive:
            reason = self.error or f"no CONNECTED frame within {connect_timeout}s"
            self._teardown()
            if self.server_error and not _transient(self.server_error):  # e.g. a bad login
                raise TransportError(f"STOMP server {host} refused the connection: {reason}")
            if tls is not None and not tls.cert and not self.server_error:
                reason += " after the TLS handshake (does it want a client certificate? cert=)"
            raise ConnectionLost(f"STOMP server {host}: {reason}")

    @property
    def server(self) -> str:
        return self.server_headers.get("server", "")

    # -- sending ------------------------------------------------------------------------

    def call(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Call a stomp.py frame method (``send``, ``ack``, ...), mapping its failures."""
        if not self.alive:
            raise self.failure()
        try:
            getattr(self.conn, method)(*args, **kwargs)
        except (stomp.exception.StompException, OSError) as exc:
            self._lost(f"{method} failed: {exc!r}")
            raise self.failure() from None

    def write(self, data: bytes) -> None:
        """Write already encoded frames through stomp.py's transport.

        For the frames of the hot paths (SEND batches, ACK, NACK): one write for many frames
        and none of stomp.py's per-frame listener round; the transport's own lock keeps a
        write whole against heart-beats and other threads.
        """
        if not self.alive:
            raise self.failure()
        transport = self.conn.transport
        try:
            if transport.blocking:
                transport.send(data)
            else:  # TLS: stomp.py's I/O thread owns the non-blocking socket
                transport.send_queue.put(data)
        except (stomp.exception.StompException, OSError) as exc:
            self._lost(f"write failed: {exc!r}")
            raise self.failure() from None

    def failure(self) -> TransportError:
        """Why this session is dead: :class:`ConnectionLost` unless the server refused
        something with an ERROR frame that a reconnect would only repeat."""
        if self.server_error and not _transient(self.server_error):
            hint = ""
            if "x-max-priority" in self.server_error:
                hint = " (the queue exists with other arguments; ?priority=0 sends none)"
            return TransportError(f"STOMP server {self.host} refused: {self.server_error}{hint}")
        return ConnectionLost(f"connection to STOMP server {self.host} lost: {self.error}")

    def new_receipt(self) -> str:
        """A receipt id to put on the next frame; wait for it with :meth:`wait_receipt`."""
        receipt = f"qk-{self.generation}-{next(self._ids)}"
        with self._lock:
            self._receipts[receipt] = threading.Event()
        return receipt

    def wait_receipt(self, receipt: str, timeout: float) -> None:
        """Block until the server confirms ``receipt``; raise if it failed or the link died."""
        with self._lock:
            event = self._receipts.get(receipt)
        if event is None:
            raise TransportError(f"unknown receipt {receipt}")
        arrived = event.wait(timeout)
        with self._lock:
            self._receipts.pop(receipt, None)
            outcome = self._outcomes.pop(receipt, None)
        if outcome == _CONFIRMED:
            return
        if outcome is not None and outcome != _LOST:
            raise TransportError(f"STOMP server {self.host} refused a frame: {outcome}")
        if not arrived:
            self._lost(f"no receipt within {timeout}s")
            self._teardown()
        raise self.failure()

    # -- closing ------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """DISCONNECT with a receipt (the server then returns un-acked messages); idempotent.

        A session closed on purpose never reports itself lost.
        """
        with self._lock:
            was_alive, self.alive = self.alive, False
            self.error = self.error or "closed"
        if was_alive:
            receipt = self.new_receipt()
            try:
                # Protocol12.disconnect, not Connection12.disconnect: the latter then waits
                # for the I/O thread without a time limit.
                stomp.protocol.Protocol12.disconnect(self.conn, receipt=receipt)
            except (stomp.exception.StompException, OSError):
                pass
            else:
                with self._lock:
                    event = self._receipts.get(receipt)
                if event is not None:
                    event.wait(timeout)
        self._teardown()

    def _teardown(self) -> None:
        transport = self.conn.transport if hasattr(self, "conn") else None
        if transport is None:
            return
        transport.running = False
        with contextlib.suppress(Exception):  # best effort: the socket may be gone already
            transport.disconnect_socket()

    # -- listener callbacks (stomp.py's I/O thread) ----------------------------------------

    def _connected(self, headers: dict[str, str]) -> None:
        self.server_headers = headers
        self.alive = True
        self._connected_event.set()

    def _receipt(self, receipt: str, outcome: str) -> None:
        with self._lock:
            event = self._receipts.get(receipt)
            if event is not None:
                self._outcomes.setdefault(receipt, outcome)
        if event is not None:
            event.set()

    def _error(self, headers: dict[str, str], body: bytes) -> None:
        text = headers.get("message", "error")
        if body:
            text += ": " + body.decode("utf-8", "replace").strip()
        log.warning("STOMP server %s sent ERROR: %s", self.host, text)
        self.error = self.server_error = text
        self.errors += 1
        receipt = headers.get("receipt-id")
        if receipt:
            self._receipt(receipt, text)
        if not self.alive:
            self._connected_event.set()

    def _lost(self, reason: str) -> None:
        with self._lock:
            was_alive, self.alive = self.alive, False
            if self.error is None:
                self.error = reason
            pending = list(self._receipts)
        self._connected_event.set()
        for receipt in pending:
            self._receipt(receipt, _LOST)
        if was_alive:
            self._on_lost(self)
