"""The transport contract: the one primitive every adapter implements.

Everything above it (envelopes, retries, delays the broker lacks, dedup, the failed store,
the dispatch loop) lives in the core; an adapter only moves opaque bytes plus a few string
headers between a named queue and a broker, and says what it guarantees in
:class:`~queuekit.spi.capabilities.Capabilities`.

Contract, for every adapter:

- **Threads.** ``send``/``send_many``/``broadcast`` are thread-safe. ``receive``, ``ack`` and
  ``nack`` (and ``requeue``, ``release``) are called from one consumer thread at a time. A
  worker with concurrency keeps this: its loop thread alone receives and settles, while
  ``work()`` runs in other threads or tasks that only publish (``send``). ``close`` may be
  called from any thread; a ``receive`` blocked in another thread then returns ``None``
  promptly.
- **Publishing.** ``send`` returns once the broker holds the message as far as the protocol
  can tell (publisher confirms, receipts, a committed row). ``send_many`` gives the same
  guarantee for the whole batch when it returns, and should pay one round trip per batch,
  not per message.
- **Size.** ``send`` and ``send_many`` raise :class:`MessageTooLarge` for a body above
  ``capabilities.max_message_size``, before anything is sent; never truncate
  (:meth:`Transport.check_outgoing` does this and the options check below).
- **Options.** ``SendOptions`` fields are set by the core only for capabilities the adapter
  declares (``delay``, ``priority``, ``dedup``); the core emulates or refuses the rest. An
  adapter handed an option it does not declare raises :class:`Unsupported`.
- **Consuming.** ``receive(queue, timeout)`` returns one :class:`Delivery` or ``None`` when
  nothing arrived within ``timeout`` seconds (the consumer's heartbeat). Push-style clients
  feed a bounded local buffer that ``receive`` reads; the bound is the prefetch.
- **Settling.** ``ack`` and ``nack`` take a delivery from this transport instance, once each.
  ``ack`` may return before the broker has confirmed it (AMQP's ``basic.ack`` is never
  answered; the SQLite adapter groups deletes into its next commit): after a crash in that
  window an acked message can come back, never go missing. ``close`` settles them first.
  ``nack(requeue=True)`` puts it back for any consumer; ``requeue=False`` drops it (the core
  has already written it to the failed store). Settling a delivery twice is a no-op.
- **Replies.** Request/response is the core's: a reply is an ordinary ``send`` to the
  caller's queue. A protocol with its own reply address (a Gearman foreground job) gives it
  as ``Delivery.reply_to`` and takes the reply as a ``send`` there; the contract has no
  other method for replies.
- **Close.** ``close`` is idempotent. Un-acked deliveries go back to the broker (where
  ``redelivery`` is declared). Any other call after ``close`` raises :class:`TransportClosed`.
- **Errors.** Only :mod:`queuekit.spi.errors` types escape; :class:`ConnectionLost` marks
  what a reconnect may fix.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .capabilities import Capabilities
from .errors import MessageTooLarge, TransportClosed, Unsupported
from .priorities import PriorityRange
from .urls import TransportURL

Headers = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class SendOptions:
    """Per-message broker instructions, set only for capabilities the adapter declares.

    ``not_before`` is an absolute Unix time; ``priority`` is 0 (lowest) to 255 (highest),
    which adapters map onto their broker's own scale; ``dedup_key`` drops a second send
    while a message with the same key is pending.
    """

    not_before: float | None = None
    priority: int | None = None
    dedup_key: str | None = None


NO_OPTIONS = SendOptions()


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message of a ``send_many`` batch."""

    body: bytes
    headers: Headers = field(default_factory=dict)
    options: SendOptions = NO_OPTIONS


@dataclass(slots=True)
class Delivery:
    """A received message, to be settled with ``ack`` or ``nack`` on the same transport.

    ``redelivered`` is the broker's flag; ``delivery_count`` the broker's count of deliveries
    (1 on the first), when it keeps one. ``handle`` is the adapter's own reference.
    ``reply_to`` is where the broker itself says a caller waits for the outcome (e.g. a
    Gearman foreground job): a queue name to ``send`` the reply to before settling, as to an
    envelope's ``reply_to``. It is the adapter's own, valid until the delivery is settled;
    ``None`` when the protocol carries no reply address outside the body.
    """

    queue: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    redelivered: bool = False
    delivery_count: int | None = None
    handle: Any = None
    reply_to: str | None = None


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What the broker itself can tell of one queue now; ``None`` where it cannot count.

    ``ready`` waits for a consumer, ``delayed`` waits for its time in the broker (native
    delay only: the job store counts its own delayed messages), ``in_flight`` is handed out
    and not yet settled; ``latency`` is how many seconds the oldest ready message has
    waited since it became due (0.0 when none waits). ``None`` is never a guessed zero:
    ``worker status`` shows it as "unknown".
    """

    ready: int | None = None
    delayed: int | None = None
    in_flight: int | None = None
    latency: float | None = None


class Transport(ABC):
    """Base class of every adapter. See the module docstring for the full contract."""

    #: Short adapter name used in errors and tables ("sqlite", "amqp", ...).
    name: ClassVar[str] = "transport"
    #: What this adapter guarantees. Adapters whose guarantees depend on the server they
    #: talk to (STOMP, gearmand's queue type) set it per instance once connected.
    capabilities: Capabilities = Capabilities()
    #: True when queues live inside one process (``memory://``): the conformance suite then
    #: uses threads where it would use processes, and closing stands in for a crash.
    process_local: ClassVar[bool] = False

    def __init__(self, url: TransportURL, *, prefetch: int = 16) -> None:
        self.url = url
        self.prefetch = prefetch
        #: Set by ``close`` (first thing, so a call racing it in another thread sees it);
        #: every other operation then raises :class:`TransportClosed` (:meth:`check_open`).
        self.closed = False
        cls = type(self)
        if cls.send is Transport.send and cls.send_many is Transport.send_many:
            raise TypeError(f"{cls.__qualname__} must implement send or send_many")

    # -- point to point -----------------------------------------------------------------

    def send(
        self, queue: str, body: bytes, headers: Headers, *, options: SendOptions = NO_OPTIONS
    ) -> None:
        """Publish one message to ``queue``; return once the broker has it.

        An adapter implements ``send`` or ``send_many`` (or both): each defaults to the
        other, so one whose protocol batches writes only ``send_many`` and this default
        sends a batch of one."""
        self.send_many(queue, [Outgoing(body, headers, options)])

    def send_many(self, queue: str, messages: Sequence[Outgoing]) -> None:
        """Publish a batch; the default loops over ``send``. Adapters batch round trips."""
        for message in messages:
            self.send(queue, message.body, message.headers, options=message.options)

    @abstractmethod
    def receive(self, queue: str, timeout: float) -> Delivery | None:
        """One delivery from ``queue``, or ``None`` if none arrived within ``timeout`` s.
        With 0: one that is there already, or ``None`` at once; the worker asks so for the
        messages that arrived with the one it waited for (conformance case ``poll``)."""

    def receive_priorities(
        self, queue: str, timeout: float, priorities: PriorityRange
    ) -> Delivery | None:
        """``receive``, taking only messages whose priority is in ``priorities`` (capability
        ``priority_range``); the rest stay for other consumers."""
        raise Unsupported("priority ranges", self.name)

    @abstractmethod
    def ack(self, delivery: Delivery) -> None:
        """The message was processed: the broker forgets it."""

    def requeue(
        self, delivery: Delivery, body: bytes, *, options: SendOptions = NO_OPTIONS
    ) -> None:
        """Put a delivered message back as its next attempt: ``body`` replaces it, with
        ``options`` (``not_before``, ``priority``; never a new dedup key).

        Adapters that can update the message in place override this, so it keeps what the
        broker holds it by (its dedup key stays taken while it waits for the retry). The
        default publishes ``body`` as a new message, then acks the delivery: a crash in
        between runs it twice, never loses it.
        """
        self.send(delivery.queue, body, {}, options=options)
        self.ack(delivery)

    @abstractmethod
    def nack(self, delivery: Delivery, *, requeue: bool) -> None:
        """The message was not processed: put it back (``requeue``) or drop it."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection; idempotent. Un-acked deliveries return to the broker."""

    def release(self, queue: str) -> None:  # noqa: B027 - only buffering adapters override
        """Give back what was prefetched from ``queue`` but not yet returned by ``receive``.

        Called when a consumer stops taking work (a worker's loop ends), so those messages
        go to other consumers now instead of when the transport closes or a lease expires.
        """

    # -- inspection (capability ``inspect``) ---------------------------------------------

    def depth(self, queue: str) -> int:
        """How many messages of ``queue`` are **ready**: due now and not handed to any
        consumer. Every adapter counts the same three states apart:

        - *ready* (counted): a consumer would get it now;
        - *delayed* (not counted): published with a delay, or a retry, not due yet, whether
          the broker or the core's delayed store holds it;
        - *in flight* (not counted): handed to a consumer and not settled yet, including
          what a consumer has prefetched into its local buffer (this transport's own too).

        A message whose delay just ran out counts as ready even if the broker has not moved
        it yet. :meth:`stats` counts all three where the broker can tell them apart
        (docs/observability.md has the table per broker).
        """
        raise Unsupported("inspect (depth)", self.name)

    def stats(self, queue: str) -> QueueStats:
        """What the broker can tell of ``queue`` (:class:`QueueStats`), for ``worker status``
        and metrics. The default knows ``ready`` from :meth:`depth` where ``inspect`` is
        declared and nothing otherwise; an adapter that can count more says so here."""
        if not self.capabilities.inspect:
            return QueueStats()
        return QueueStats(ready=self.depth(queue))

    def purge(self, queue: str) -> int:
        """Drop the ready and delayed messages of ``queue`` the broker holds (not those in
        flight); return how many were dropped."""
        raise Unsupported("inspect (purge)", self.name)

    def delete(self, queue: str) -> None:  # noqa: B027 - brokerless adapters keep nothing
        """Remove ``queue`` and whatever the adapter created for it on the broker."""

    # -- publish/subscribe (capabilities ``fanout`` and ``topics``) ----------------------

    def broadcast(self, topic: str, body: bytes, headers: Headers) -> None:
        """Publish once to ``topic``; every matching subscription receives it."""
        raise Unsupported("fanout", self.name)

    def subscribe(self, pattern: str) -> str:
        """Subscribe to ``pattern`` and return a subscription name that ``receive`` reads.

        The subscription exists (and receives what is broadcast) from the moment this
        returns; nothing broadcast before then is owed to it.
        """
        raise Unsupported("fanout", self.name)

    def unsubscribe(self, subscription: str) -> None:  # noqa: B027 - optional to override
        """End a subscription made with ``subscribe``; idempotent."""

    # -- helpers for adapters ------------------------------------------------------------

    def check_open(self) -> None:
        """The contract's rule after ``close``, one guard for every adapter: raise
        :class:`TransportClosed`. Called first in each operation but ``close`` (inside the
        lock ``close`` also takes, where there is one)."""
        if self.closed:
            raise self.closed_error()

    def closed_error(self) -> TransportClosed:
        """The error for a call made after ``close``, or cut short by it in another thread
        (for adapters that notice the close mid-operation and must raise from there)."""
        return TransportClosed(f"{self!r} is closed")

    def check_outgoing(self, body: bytes, options: SendOptions = NO_OPTIONS) -> None:
        """The contract's checks before a publish, in one place for every adapter: an
        option this adapter does not declare is :class:`Unsupported` (:meth:`require`), a
        body above ``capabilities.max_message_size`` is :class:`MessageTooLarge`. Raises
        before anything is sent."""
        if options is not NO_OPTIONS:
            self.require(options)
        limit = self.capabilities.max_message_size
        if limit is not None and len(body) > limit:
            raise MessageTooLarge(len(body), limit, self.name)

    def require(self, options: SendOptions) -> None:
        """Raise :class:`Unsupported` for any option this adapter does not declare."""
        caps = self.capabilities
        if options.not_before is not None and not caps.delay:
            raise Unsupported("delay", self.name)
        if options.priority is not None and not caps.takes_priority:
            raise Unsupported("priority", self.name)
        if options.dedup_key is not None and not caps.dedup:
            raise Unsupported("dedup", self.name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url.redacted()}>"
