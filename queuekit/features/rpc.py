"""Request/response over any queue: ``call`` waits for one reply, ``gather`` for many.

A request is an ordinary message with ``reply_to`` (the caller's reply queue) and a fresh
``correlation_id``. The worker that settles it for good publishes a reply to that queue
before it acks: what ``work()`` returned, or (``name`` ``queuekit.error``) the reason it
failed for good; retries happen before, so a caller sees one outcome. ``call`` returns the
value or raises :class:`RemoteError`; ``gather`` returns one :class:`Reply` (or ``None``)
per request, in request order.

One reply queue per connection, made on first use and deleted on ``close`` (STOMP cannot
delete queues: there it stays on the broker). Threads share it: one receives at a time
and hands the others their replies. A reply nobody waits for any more (its caller timed
out) is dropped. A request is at least once like any message: a worker that dies after
replying but before acking runs it again and replies twice; the second reply is dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..spi.errors import (
    ConnectionLost,
    MalformedMessage,
    MessageTooLarge,
    QueuekitError,
    RemoteError,
)
from .envelope import Message, Metadata, decode
from .signing import envelope_of

if TYPE_CHECKING:
    from .broker import Broker

log = logging.getLogger("queuekit")

REPLY, ERROR = "queuekit.reply", "queuekit.error"
_POLL = 0.2  # seconds one receive may block, so waiting threads take turns


@dataclass(frozen=True)
class Reply:
    """The outcome of one request: ``value`` (what ``work()`` returned) or ``error``."""

    correlation_id: str
    value: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def result(self) -> Any:
        """The value, or :class:`RemoteError` when the request failed for good."""
        if self.error is not None:
            raise RemoteError(self.error)
        return self.value


def new_correlation_id() -> str:
    return os.urandom(16).hex()


class ReplyQueue:
    """A connection's reply queue; see the module docstring."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.name = f"queuekit-replies-{os.urandom(8).hex()}"
        self._receiving = threading.Lock()
        self._changed = threading.Condition()
        self._awaited: set[str] = set()
        self._arrived: dict[str, Reply] = {}

    def expect(self, ids: Collection[str]) -> None:
        """Register ``ids`` before their requests are published (a reply may come fast)."""
        with self._changed:
            self._awaited.update(ids)

    def wait(self, ids: Collection[str], timeout: float) -> dict[str, Reply]:
        """The replies to ``ids`` that arrive within ``timeout`` seconds; stops expecting
        the rest."""
        deadline = time.monotonic() + timeout
        got: dict[str, Reply] = {}
        pending = set(ids)
        try:
            while pending:
                with self._changed:
                    for ident in pending & self._arrived.keys():
                        got[ident] = self._arrived.pop(ident)
                    pending -= got.keys()
                remaining = deadline - time.monotonic()
                if not pending or remaining <= 0:
                    break
                if self._receiving.acquire(timeout=min(remaining, _POLL)):
                    try:
                        self._receive_one(min(remaining, _POLL))
                    finally:
                        self._receiving.release()
                else:
                    with self._changed:
                        self._changed.wait(min(remaining, _POLL))
        finally:
            with self._changed:
                self._awaited.difference_update(ids)
        return got

    def _receive_one(self, timeout: float) -> None:
        transport = self.broker.transport
        delivery = transport.receive(self.name, timeout)
        if delivery is None:
            return
        transport.ack(delivery)
        try:
            message = decode(envelope_of(self.broker.signer, self.name, delivery.body))
        except MalformedMessage as exc:
            log.warning("dropped a malformed reply on %s: %s", self.name, exc.reason)
            return
        reply = _reply(message)
        with self._changed:
            if reply.correlation_id in self._awaited:
                self._arrived[reply.correlation_id] = reply
                self._changed.notify_all()
            else:
                log.info("dropped a reply nobody waits for (%s)", reply.correlation_id)

    def delete(self) -> None:
        try:
            self.broker.transport.delete(self.name)
        except QueuekitError as exc:
            log.debug("could not delete reply queue %s: %s", self.name, exc)


def _reply(message: Message) -> Reply:
    meta = message.metadata
    ident = meta.correlation_id or ""
    if meta.name == ERROR:
        return Reply(ident, error=str(message.payload))
    return Reply(ident, value=message.payload)


def send_reply(
    broker: Broker,
    request: Metadata,
    to: str,
    *,
    value: object = None,
    error: str | None = None,
) -> None:
    """Tell the caller of ``request``, waiting at ``to`` (the request's ``reply_to``, or the
    broker's own reply address for the delivery), how it ended (worker side, before the ack).
    The reply is signed for ``to`` when signing keys are set, like any message.

    A value JSON cannot carry, or one too large for the broker, becomes an error reply; a
    reply the broker refuses is logged (the caller times out) except ``ConnectionLost``,
    which the loop handles (the request then runs again).
    """
    cid = request.correlation_id or request.id
    try:
        body = broker.encode(_outcome(cid, value, error), to)
    except (TypeError, MessageTooLarge) as exc:
        body = broker.encode(_outcome(cid, None, f"the result cannot be sent: {exc}"), to)
    try:
        broker.transport.send(to, body, {})
    except ConnectionLost:
        raise
    except QueuekitError as exc:
        if error is None:  # e.g. too large: say so instead
            send_reply(broker, request, to, error=f"the result cannot be sent: {exc}")
        else:
            log.warning("could not reply to %s for message %s: %s", to, request.id, exc)


def _outcome(correlation_id: str, value: object, error: str | None) -> Message:
    if error is not None:
        return Message(error, Metadata(name=ERROR, correlation_id=correlation_id))
    return Message(value, Metadata(name=REPLY, correlation_id=correlation_id))
