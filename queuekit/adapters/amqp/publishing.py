"""The publisher connection: batches with one wait for publisher confirms, and admin calls.

Any thread may publish, and threads publishing at once share the wait for confirms (group
commit): a caller queues its messages; whoever holds the connection's lock takes everything
queued so far, writes it whole as ``basic.publish`` frames on py-amqp's channel and waits for
the confirms once (RabbitMQ acks batches with ``multiple``), then wakes the callers it sent
for. So N publishing threads cost about one round trip per batch instead of queueing N
round trips behind one lock, and far fewer than kombu's ``confirm_publish`` (one round trip
per message). A failure in a shared batch is raised in every caller whose messages it held.
A lost connection is hidden for up to ``publish_timeout`` (a publish; ``reconnect_timeout``
for the admin calls): the publisher reconnects and resends what the broker had not
confirmed (a duplicate is possible, a loss is not). Messages
go out ``mandatory``; ones returned as unroutable (their queue was deleted elsewhere) are
sent again after the queue is declared again. Declarations for
``subscribe``, ``depth``, ``purge`` and ``delete`` run on the same channel through
``admin``, with the same reconnects.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from amqp import exceptions as amqp_errors
from amqp import spec

from ...spi.errors import ConnectionLost, TransportError
from ...spi.timeouts import publish_unreachable
from ...spi.transport import Transport
from .link import CHANNEL_ERRORS, RECOVERABLE, Link, backoff, map_channel_error
from .messages import Publication, returned
from .settings import Settings
from .topology import Declarations

log = logging.getLogger("queuekit.amqp")

#: Drain confirms every this many messages of a batch, so acks never pile up unread.
_POLL_EVERY = 512

T = TypeVar("T")


@dataclass
class _Ticket:
    """One caller's messages in the queue of a group commit."""

    queue: str | None
    items: list[Publication]
    done: bool = False
    error: BaseException | None = None


class Publisher:
    """The publisher's connection and channel, its confirms and what it declared.

    Thread-safe. Once its transport (``owner``) is closed every call raises
    :class:`TransportClosed`.
    """

    def __init__(self, settings: Settings, owner: Transport) -> None:
        self.settings = settings
        self._owner = owner
        self._lock = threading.RLock()
        self._link = Link(settings, "publisher", on_channel=self._on_channel)
        self._declarations = Declarations(settings)
        self._seq = 0
        self._unconfirmed: dict[int, Publication] = {}
        self._nacked: list[Publication] = []
        self._returned: list[Publication] = []
        self._written = 0
        self._failing_since: float | None = None
        self._last_failure: BaseException | None = None
        self._attempt = 0
        self._queued: list[_Ticket] = []  # callers whose messages no batch has taken yet
        self._queued_lock = threading.Lock()

    def publish(self, queue: str | None, items: list[Publication]) -> None:
        """Publish ``items`` (for ``queue``, or broadcasts when None) and wait for their
        confirms, in one batch with what other threads publish meanwhile; reconnect and
        resend what the broker did not confirm, until ``publish_timeout`` runs out (then
        :class:`ConnectionLost`, see :mod:`queuekit.spi.timeouts`)."""
        ticket = _Ticket(queue, items)
        with self._queued_lock:
            self._queued.append(ticket)
        with self._lock:
            if not ticket.done:  # no batch took it while this thread waited: lead one
                with self._queued_lock:
                    batch, self._queued = self._queued, []
                self._publish_batch(batch, ticket)
        if ticket.error is not None:
            raise ticket.error

    def _publish_batch(self, batch: list[_Ticket], mine: _Ticket) -> None:
        """Publish every ticket's messages as one batch; mark each done, with the error
        (``mine``, the leader's, gets the exception itself; the others a copy each)."""
        queues = {ticket.queue for ticket in batch}
        queue = queues.pop() if len(queues) == 1 else "several queues"
        try:
            self._publish_now(queue, [item for ticket in batch for item in ticket.items])
        except BaseException as exc:
            for ticket in batch:
                if ticket is mine:
                    ticket.error = exc
                elif isinstance(exc, Exception):
                    ticket.error = copy.copy(exc)
                else:  # e.g. KeyboardInterrupt in the leading thread: not theirs to raise
                    ticket.error = TransportError("amqp: the publish was interrupted")
        finally:
            for ticket in batch:
                ticket.done = True

    def _publish_now(self, queue: str | None, items: list[Publication]) -> None:
        pending, returns = items, 0
        deadline = time.monotonic() + self.settings.publish_timeout
        while True:
            with self._lock:
                self._owner.check_open()
                try:
                    channel = self._link.channel()
                    self._declarations.prepare(channel, pending)
                    pending = self._publish_on(channel, pending)
                    self._failing_since, self._attempt = None, 0
                except CHANNEL_ERRORS as exc:
                    self._link.reset_channel()
                    raise map_channel_error(exc, f"amqp publish to {queue!r}") from None
                except RECOVERABLE as exc:
                    pending = self._after_failure(exc, pending)
                else:
                    if not pending:
                        return
                    # returned as unroutable: the queue vanished (deleted elsewhere); redeclare
                    returns += 1
                    if returns > 2:
                        raise TransportError(f"amqp: messages for {queue!r} cannot be routed")
                    self._declarations.forget_queues()
                    continue
            if time.monotonic() >= deadline:
                self._failing_since, self._attempt = None, 0
                raise publish_unreachable(self._owner.url.redacted(), self.settings.publish_timeout,
                                          self._last_failure)  # fmt: skip
            self._wait_for_broker("publish", deadline)

    def admin(self, what: str, operation: Callable[[Any], T], missing: T | None = None) -> T | None:
        """Run ``operation`` on the publisher channel, reconnecting like ``publish``;
        ``missing`` is the answer when the broker says the queue does not exist."""
        while True:
            with self._lock:
                self._owner.check_open()
                try:
                    result = operation(self._link.channel())
                    self._failing_since, self._attempt = None, 0
                    return result
                except amqp_errors.NotFound:
                    self._link.reset_channel()
                    return missing
                except CHANNEL_ERRORS as exc:
                    self._link.reset_channel()
                    raise map_channel_error(exc, f"amqp {what}") from None
                except RECOVERABLE as exc:
                    self._after_failure(exc, [])
            self._wait_for_broker(what)

    def forget(self, queues: list[str]) -> None:
        """``queues`` were deleted: declare them again before publishing to them."""
        with self._lock:
            for queue in queues:
                self._declarations.forget(queue)

    def close(self) -> None:
        with self._lock:
            self._link.close()

    def _publish_on(self, channel: Any, items: list[Publication]) -> list[Publication]:
        """Write every item, then wait for all confirms; return the items sent back as
        unroutable. On a connection failure ``self._unconfirmed`` and ``self._written`` say
        what still needs sending."""
        confirm = self.settings.confirm
        unconfirmed = self._unconfirmed
        unconfirmed.clear()
        self._returned.clear()
        self._nacked.clear()
        self._written = 0
        send = channel.send_method
        for count, item in enumerate(items, 1):
            send(
                spec.Basic.Publish,
                "Bssbb",
                (0, item.exchange, item.routing_key, item.mandatory, False),
                item.message,
            )
            self._written = count
            if confirm:
                self._seq += 1
                unconfirmed[self._seq] = item
                if count % _POLL_EVERY == 0:
                    self._link.drain(0)
        if confirm:
            deadline = time.monotonic() + self.settings.confirm_timeout
            while unconfirmed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConnectionLost(
                        f"amqp: no publisher confirm within {self.settings.confirm_timeout:g} s"
                    )
                self._link.drain(remaining)
        self._written = 0
        if self._nacked:
            raise TransportError(f"amqp: the broker refused {len(self._nacked)} message(s)")
        return list(self._returned)

    def _after_failure(self, exc: BaseException, pending: list[Publication]) -> list[Publication]:
        self._link.drop()
        left = [*self._unconfirmed.values(), *pending[self._written :]]
        self._unconfirmed.clear()
        self._written = 0
        self._last_failure = exc
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning("amqp publisher connection lost (%s); reconnecting", exc)
        return left

    def _wait_for_broker(self, what: str, deadline: float | None = None) -> None:
        """Back off before the next reconnect (never past ``deadline``), or give up past
        the reconnect timeout."""
        since = self._failing_since or time.monotonic()
        if time.monotonic() - since > self.settings.reconnect_timeout:
            self._failing_since, self._attempt = None, 0
            raise ConnectionLost(
                f"amqp {what}: no broker reachable for {self.settings.reconnect_timeout:g} s"
            )
        pause = backoff(self._attempt)
        if deadline is not None:
            pause = max(0.0, min(pause, deadline - time.monotonic()))
        time.sleep(pause)
        self._attempt += 1

    # -- confirms and returns: py-amqp calls these while the channel is drained ---------

    def _on_channel(self, channel: Any) -> None:
        """Set up a fresh channel: confirms on, and forget what it declared."""
        self._seq = 0
        self._declarations.reset()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.events["basic_return"].add(self._on_return)
        if self.settings.confirm:
            channel.confirm_select()

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._nacked.extend(self._settle(tag, multiple))

    def _settle(self, tag: int, multiple: bool) -> list[Publication]:
        unconfirmed = self._unconfirmed
        if not multiple:
            item = unconfirmed.pop(tag, None)
            return [item] if item is not None else []
        settled = []
        while unconfirmed:
            first = next(iter(unconfirmed))
            if first > tag:
                break
            settled.append(unconfirmed.pop(first))
        return settled

    def _on_return(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        self._returned.append(returned(exchange, routing_key, message))
