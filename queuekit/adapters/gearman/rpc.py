"""Foreground (RPC) calls: submit a job and wait for the worker's result.

pygearman's :class:`~gearman.client.GearmanClient` does this well (``SUBMIT_JOB`` and
waiting for ``WORK_COMPLETE``/``WORK_FAIL``), so calls use it, one pooled client per call
in flight. A worker answers by sending the result to the delivery's ``reply_to``, then
acking it (``GearmanTransport.ack`` completes the job with it).
"""

from __future__ import annotations

import select
import threading
from typing import Any

from gearman.client import GearmanClient
from gearman.constants import JOB_COMPLETE, JOB_FAILED
from gearman.errors import ConnectionError as GearmanConnectionError
from gearman.errors import GearmanError, ServerUnavailable

from ...spi.errors import ConnectionLost, QueuekitError
from .link import _Connection

__all__ = ["CallFailed", "Callers"]


class CallFailed(QueuekitError):
    """A foreground ``call`` did not return a result: the worker failed it, or it timed out.

    ``reason`` is ``"failed"`` or ``"timeout"``. After a timeout the job may still run.
    """

    def __init__(self, queue: str, reason: str) -> None:
        self.queue, self.reason = queue, reason
        super().__init__(f"gearman call to {queue!r} {reason}")


class _Client(GearmanClient):  # type: ignore[misc]
    """pygearman's client (for foreground calls), with hosts tried in the listed order
    (failover, not load balancing) and server errors raised, not just logged."""

    connection_class = _Connection

    def establish_request_connection(self, current_request: Any) -> Any:
        for connection in self.connection_list:
            try:
                return self.establish_connection(connection)
            except GearmanConnectionError:
                continue
        raise ServerUnavailable("no gearmand answers")

    def on_gearman_error(self, error_code: bytes, error_text: bytes) -> bool:
        raise GearmanError(f"gearmand error {error_code!r}: {error_text!r}")


class Callers:
    """A pool of clients for foreground calls; thread-safe."""

    def __init__(self, hosts: list[str]) -> None:
        self._hosts = hosts
        self._idle: list[_Client] = []
        self._lock = threading.Lock()
        self._closed = False

    def call(
        self, queue: str, function: bytes, data: bytes, band: str | None, timeout: float
    ) -> bytes:
        client = self._take()
        try:
            request = client.submit_job(
                function,
                data,
                priority=band,
                background=False,
                wait_until_complete=True,
                max_retries=len(self._hosts),
                poll_timeout=timeout,
            )
        except GearmanError as exc:
            client.shutdown()
            raise ConnectionLost(f"gearman {','.join(self._hosts)}: {exc}") from None
        if request.state == JOB_COMPLETE:
            self._give_back(client)
            return bytes(request.result or b"")
        client.shutdown()  # a job may still answer on this connection: never reuse it
        raise CallFailed(queue, "failed" if request.state == JOB_FAILED else "timeout")

    def close(self) -> None:
        """Shut the idle clients; a call in progress ends at its own timeout."""
        with self._lock:
            self._closed = True
            for client in self._idle:
                client.shutdown()
            self._idle.clear()

    def _take(self) -> _Client:
        """A pooled client whose connection is still quiet, else a new one. An idle
        connection with something to read was closed by gearmand (e.g. a restart)."""
        while True:
            with self._lock:
                if not self._idle:
                    return _Client(self._hosts)
                client = self._idle.pop()
            sockets = [c.gearman_socket for c in client.connection_list if c.connected]
            if sockets and not select.select(sockets, [], [], 0)[0]:
                return client
            client.shutdown()

    def _give_back(self, client: _Client) -> None:
        with self._lock:
            if self._closed:
                client.shutdown()
            else:
                self._idle.append(client)
