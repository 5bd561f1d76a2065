"""``stomp://`` and ``stomp+ssl://``: the transport contract over STOMP 1.2 (stomp.py).

Work queues are ``/queue/<name>``, one per priority band (``/queue/<name>#200`` for the band
from 200: :class:`~queuekit.spi.priorities.PriorityBands`), fan-out is ``/topic/<topic>``.
``receive`` subscribes to every band's queue, ``receive_priorities`` to those of its range,
and hands out the highest band's messages first. Every subscription uses ``ack:
client-individual`` with the server's own prefetch header, so the broker never has more than
``prefetch`` un-acked messages per subscription in this process: that bounds the local
inboxes that stomp.py's listener feeds and :meth:`StompTransport.receive` reads.

What the server does natively (prefetch, delay, priority, NACK, wildcards) comes from the
CONNECTED frame's ``server`` header through :mod:`.servers`; ``capabilities`` is set per
instance once connected. Publishing waits for a RECEIPT: one per ``send``, one per chunk of
up to 1000 frames of ``send_many`` (on its last frame; a server handles one connection's
frames in order).

Threads: stomp.py's I/O thread calls ``_on_message``/``_on_lost``; it only puts into the
inboxes (lock-free :class:`queue.SimpleQueue`), rings the bell the receiver of that inbox
waits on, and never takes ``_connect_lock``, under which connecting does blocking I/O. A lost
connection or ``close`` rings every bell; deliveries of a dead connection are dropped when
read (the server redelivers them).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue

from ...spi.errors import (
    ConfigurationError,
    ConnectionLost,
    TransportError,
    Unsupported,
)
from ...spi.priorities import PriorityBands, PriorityRange
from ...spi.timeouts import publish_timeout, publish_unreachable
from ...spi.tls import TLSSettings
from ...spi.topics import topic_matches
from ...spi.transport import Delivery, Headers, Outgoing, SendOptions, Transport
from ...spi.urls import Host, TransportURL
from .frames import BINARY, encode_send, encode_settle, escape, user_headers, wire_headers
from .servers import ServerProfile, map_priority, profile_for, topic_destinations
from .session import Session

log = logging.getLogger("queuekit.stomp")

#: How often an ActiveMQ message was put back by ``nack(requeue=True)`` (a re-send there).
REQUEUES = "queuekit-requeues"
#: MESSAGE headers the server sets, dropped when ActiveMQ's requeue re-sends a message.
_SERVER_SET = frozenset(
    {
        "destination",
        "message-id",
        "subscription",
        "ack",
        "redelivered",
        "content-length",
        "timestamp",
        "expires",
        "receipt",
        "transaction",
    }
)
_BATCH = 1000  # frames per receipt in send_many: bounds what a reconnect re-sends
_MAX_RESENDS = 5  # connections a batch may lose before the publish gives up
_WRITE_SIZE = 256 * 1024  # encoded frames are written to the socket in pieces of this size
#: How long a receive waits for a higher band's next message after settling one of that band,
#: before it hands out a lower band's buffered one. STOMP cannot ask whether a queue is
#: empty: freed credit is the only sign, and the server answers it within a round trip.
_REFILL_GRACE = 0.1


@dataclass(eq=False)
class _Subscription:
    name: str  # a band's queue name (``emails#200``), or subscribe()'s answer
    queue: str  # what receive() is called with: the queue name, or subscribe()'s answer
    sub_id: str
    destination: str
    headers: dict[str, str]
    #: Rung (a None put) on every delivery and wake-up; shared by a queue's band subscriptions,
    #: so one receive waits on all of them.
    bell: SimpleQueue[None]
    topic_filter: str | None = None  # pattern to match locally (ActiveMQ, # not last)
    generation: int = 0  # the session it was last subscribed on
    inbox: SimpleQueue[Delivery] = field(default_factory=SimpleQueue)
    #: When one of its deliveries was settled, freeing credit for the next; None once that
    #: came (or none was waiting). Written by the consumer and stomp.py's I/O threads.
    refilling_since: float | None = None


@dataclass(eq=False, slots=True)
class _Handle:
    generation: int
    ack_id: str
    subscription: _Subscription
    headers: dict[str, str]  # the MESSAGE frame's, for ActiveMQ's requeue re-send
    settled: bool = False


class StompTransport(Transport):
    """STOMP 1.2 over stomp.py: RabbitMQ's STOMP plugin, ActiveMQ 5, or another server.

    URL: ``stomp://user:pass@host:61613[,host2:61623][/vhost]?option=value``. Options:
    ``heartbeat`` (ms, default 10000, 0 = off), ``priority`` (default 1; 0 leaves RabbitMQ
    queues without x-max-priority), ``scheduler`` (ActiveMQ with schedulerSupport, default 1),
    ``reconnect_window`` (s an operation keeps reconnecting, default 30; a publish:
    ``publish_timeout``, default 5, see :mod:`queuekit.spi.timeouts`), ``receipt_timeout``
    (s, default 30), ``connect_timeout`` (s, default 5); for ``stomp+ssl``: ``ca``, ``cert``,
    ``key``, ``verify`` (default 1; :mod:`queuekit.spi.tls`).
    """

    name = "stomp"

    def __init__(self, url: TransportURL, *, prefetch: int = 16) -> None:
        super().__init__(url, prefetch=prefetch)
        default_port = 61614 if url.scheme == "stomp+ssl" else 61613
        self._hosts = [h if h.port else Host(h.name, default_port) for h in url.hosts]
        if not self._hosts:
            raise ConfigurationError(f"{url.redacted()} names no host")
        self._heartbeat = url.integer("heartbeat", 10_000, allow_zero=True)
        self._window = url.number("reconnect_window", 30.0, allow_zero=True)
        self._publish_timeout = publish_timeout(url)
        self._receipt_timeout = url.number("receipt_timeout", 30.0)
        self._connect_timeout = url.number("connect_timeout", 5.0)
        self._tls = TLSSettings.from_url(url) if url.scheme == "stomp+ssl" else None
        self._connect_lock = threading.Lock()
        self._subs_lock = threading.Lock()
        self._subs: dict[str, _Subscription] = {}  # by name
        self._by_id: dict[str, _Subscription] = {}  # by STOMP subscription id
        self._bells: dict[str, SimpleQueue[None]] = {}  # by queue, for its bands
        self._session: Session | None = None
        self._down_since: float | None = None
        self._last_failure: Exception | None = None
        session = self._connect_round()
        if session is None:
            raise ConnectionLost(
                f"no STOMP server answered at {url.redacted()} (last: {self._last_failure})"
            )
        self._profile: ServerProfile = profile_for(session.server, url)
        self.capabilities = caps = self._profile.capabilities
        #: Fixed at connect, like the capabilities: producers and workers must agree.
        self._bands = PriorityBands(caps.priority_bands or ())

    @property
    def server(self) -> str:
        """The product and version the current connection's server announced."""
        session = self._session
        return session.server if session is not None else ""

    # -- connection ---------------------------------------------------------------------

    def _connect_round(self) -> Session | None:
        """Try each listed host once, in order; the first that answers becomes current."""
        for host in self._hosts:
            try:
                session = Session(
                    host,
                    login=self.url.username,
                    passcode=self.url.password,
                    vhost=self.url.path or "/",
                    heartbeat_ms=self._heartbeat,
                    connect_timeout=self._connect_timeout,
                    tls=self._tls,
                    on_message=self._on_message,
                    on_lost=self._on_lost,
                )
            except ConnectionLost as exc:
                self._last_failure = exc
                continue
            self._session = session
            return session
        log.info("STOMP connect round failed: %s", self._last_failure)
        return None

    def _live(self, deadline: float | None = None) -> Session:
        """The current session, reconnecting (and re-subscribing) when it died.

        Keeps trying until ``deadline`` or, at the latest, ``reconnect_window`` seconds
        after the loss was noticed; then raises :class:`ConnectionLost`.
        """
        session = self._session
        if session is not None and session.alive:
            return session
        with self._connect_lock:
            while True:
                self.check_open()
                session = self._session
                if session is not None and session.alive:
                    return session
                now = time.monotonic()
                if self._down_since is None:
                    self._down_since = now
                limit = self._down_since + self._window
                if deadline is not None:
                    limit = min(limit, deadline)
                session = self._connect_round()
                if session is not None:
                    if self._resubscribe(session):
                        self._down_since = None
                        log.info("STOMP reconnected to %s (%s)", session.host, session.server)
                        return session
                    session.close()  # never leave a session current without its subscriptions
                if time.monotonic() >= limit:
                    raise ConnectionLost(
                        f"STOMP server unreachable at {self.url.redacted()} "
                        f"for {time.monotonic() - self._down_since:.1f}s"
                    )
                time.sleep(min(0.5, max(0.0, limit - time.monotonic())))

    def _resubscribe(self, session: Session) -> bool:
        profile = profile_for(session.server, self.url)
        if profile.product != self._profile.product:
            log.warning(
                "STOMP failover moved from %s to %s; capabilities stay as declared",
                self._profile.product,
                profile.product,
            )
        self._profile = profile
        subs = list(self._subs.values())
        try:
            receipt = session.new_receipt()
            for index, sub in enumerate(subs):
                sub.generation = session.generation
                frame = dict(sub.headers)
                if index == len(subs) - 1:
                    frame["receipt"] = receipt
                session.call("subscribe", sub.destination, sub.sub_id, "client-individual", frame)
            if subs:
                session.wait_receipt(receipt, self._receipt_timeout)
        except (ConnectionLost, TransportError) as exc:
            log.info("STOMP re-subscribe failed: %s", exc)
            return False
        return True

    def _on_lost(self, session: Session) -> None:
        # stomp.py's I/O thread: wake receivers and drop what that connection delivered
        # but nobody took yet (the server redelivers it).
        log.warning("STOMP connection to %s lost: %s", session.host, session.error)
        self._wake_all()

    # -- publishing ---------------------------------------------------------------------

    def _frame_headers(self, headers: Headers, options: SendOptions) -> dict[str, str]:
        out = wire_headers(headers)
        out["persistent"] = "true"
        out.update(self._profile.queue_arguments)
        if options.priority is not None:
            out["priority"] = str(map_priority(options.priority))
        if options.not_before is not None:
            if self._profile.delay_header is None:
                raise Unsupported("delay", f"stomp ({self._profile.product})")
            delay_ms = round((options.not_before - time.time()) * 1000)
            if delay_ms > 0:
                out[self._profile.delay_header] = str(delay_ms)
        return out

    def send_many(self, queue: str, messages: Sequence[Outgoing]) -> None:
        self.check_open()
        frames = []
        bands = self._bands
        for message in messages:
            self.check_outgoing(message.body, message.options)
            band = bands.queue_for(queue, bands.start_of(message.options.priority))
            headers = self._frame_headers(message.headers, message.options)
            frames.append(("/queue/" + band, message.body, headers))
        self._publish(frames)

    def broadcast(self, topic: str, body: bytes, headers: Headers) -> None:
        self.check_open()
        self.check_outgoing(body)
        self._publish([("/topic/" + topic, body, wire_headers(headers))])

    def _publish(self, frames: Sequence[tuple[str, bytes, dict[str, str]]]) -> None:
        """Send ``frames`` (destination, body, headers) with a receipt on the last frame of
        every chunk, then wait.

        Frames are encoded here and written many at a time (stomp.py would write each with
        its own system call); everything else on the connection stays stomp.py's.

        A RECEIPT answers a frame after the server has handled every earlier frame of the
        same connection, so one receipt confirms its whole chunk (``_BATCH`` frames). Chunks
        are pipelined: all are sent before the first receipt is awaited. After a lost
        connection the chunks not yet confirmed are sent again in full on the next one:
        duplicates, never losses.
        """
        chunks = [frames[i : i + _BATCH] for i in range(0, len(frames), _BATCH)]
        failures = 0
        deadline = time.monotonic() + self._publish_timeout
        while chunks:
            try:
                session = self._live(deadline)
            except ConnectionLost as exc:
                if self.closed:
                    raise
                raise publish_unreachable(self.url.redacted(), self._publish_timeout, exc) from None
            errors = session.errors
            receipts: list[str] = []
            try:
                pending: list[bytes] = []
                size = 0
                for chunk in chunks:
                    receipts.append(session.new_receipt())
                    last = len(chunk) - 1
                    for index, (destination, body, headers) in enumerate(chunk):
                        frame = dict(headers, receipt=receipts[-1]) if index == last else headers
                        pending.append(encode_send(destination, body, frame))
                        size += len(pending[-1])
                        if size >= _WRITE_SIZE:
                            session.write(b"".join(pending))
                            pending, size = [], 0
                if pending:
                    session.write(b"".join(pending))
                while receipts:
                    session.wait_receipt(receipts[0], self._receipt_timeout)
                    receipts.pop(0)
                    chunks.pop(0)
                if session.errors != errors:  # a frame without receipt was refused
                    raise TransportError(f"STOMP server refused a SEND: {session.server_error}")
            except ConnectionLost as exc:
                failures += 1
                if failures >= _MAX_RESENDS:
                    raise
                log.info("STOMP publish interrupted (%s); re-sending after reconnect", exc)

    # -- consuming ----------------------------------------------------------------------

    def _subscribe(self, sub: _Subscription) -> None:
        """Register ``sub`` and SUBSCRIBE, waiting for the receipt (it exists on return)."""
        with self._subs_lock:
            self._subs[sub.name] = sub
            self._by_id[sub.sub_id] = sub
        session = self._live()
        if sub.generation == session.generation:
            return  # a reconnect in another thread subscribed it already
        sub.generation = session.generation
        receipt = session.new_receipt()
        try:
            frame = dict(sub.headers, receipt=receipt)
            session.call("subscribe", sub.destination, sub.sub_id, "client-individual", frame)
            session.wait_receipt(receipt, self._receipt_timeout)
        except ConnectionLost:
            self._live()  # reconnecting re-subscribes everything registered
        except TransportError:
            self._forget(sub)
            raise

    def _subscription_headers(self) -> dict[str, str]:
        header = self._profile.prefetch_header
        return {header: str(self.prefetch)} if header else {}

    def _band_subscriptions(self, queue: str, starts: list[int]) -> list[_Subscription]:
        """The subscriptions to the queues of ``queue``'s bands starting at ``starts``, in
        that order; made (and waited for) where missing."""
        subs = []
        for start in starts:
            name = self._bands.queue_for(queue, start)
            sub = self._subs.get(name)
            if sub is None:
                headers = self._subscription_headers()
                headers.update(self._profile.queue_arguments)
                bell = self._bells.setdefault(queue, SimpleQueue())
                sub = _Subscription(
                    name, queue, f"q-{uuid.uuid4().hex}", "/queue/" + name, headers, bell
                )
                # A new subscription is refilling: until its first delivery (or the grace),
                # a lower band's message is held back, so waiting messages of a higher band
                # that the server has not sent yet still come first.
                sub.refilling_since = time.monotonic()
                self._subscribe(sub)
            subs.append(sub)
        return subs

    def subscribe(self, pattern: str) -> str:
        self.check_open()
        destination, local = topic_destinations(self._profile, pattern)
        name = f"subscription.{uuid.uuid4().hex}"
        sub = _Subscription(
            name,
            name,
            name,
            destination,
            self._subscription_headers(),
            SimpleQueue(),
            pattern if local else None,
        )
        self._subscribe(sub)
        return name

    def unsubscribe(self, subscription: str) -> None:
        sub = self._subs.get(subscription)
        if sub is None or self.closed:
            return
        self._forget(sub)
        session = self._session
        if session is not None and session.alive:
            # a lost connection took the subscription with it
            with contextlib.suppress(ConnectionLost):
                session.call("unsubscribe", sub.sub_id)

    def delete(self, queue: str) -> None:
        # STOMP cannot delete a queue; stop consuming its bands so the server forgets this
        # consumer.
        for band in self._bands.queues(queue):
            self.unsubscribe(band)
        self._bells.pop(queue, None)

    def _forget(self, sub: _Subscription) -> None:
        with self._subs_lock:
            self._subs.pop(sub.name, None)
            self._by_id.pop(sub.sub_id, None)
        sub.bell.put(None)

    def _wake_all(self) -> None:
        with self._subs_lock:
            subs = list(self._subs.values())
        for sub in subs:
            sub.bell.put(None)

    def _on_message(self, session: Session, headers: dict[str, str], body: bytes) -> None:
        # stomp.py's I/O thread.
        if session is not self._session:
            return  # a connection being replaced: its un-acked messages come back anyway
        sub = self._by_id.get(headers.get("subscription", ""))
        ack_id = headers.get("ack", headers.get("message-id", ""))
        if sub is None:
            return
        if sub.topic_filter is not None:
            topic = headers.get("destination", "").removeprefix("/topic/")
            if not topic_matches(sub.topic_filter, topic):
                with contextlib.suppress(ConnectionLost):
                    session.write(encode_settle("ACK", ack_id))
                return
        requeues = headers.get(REQUEUES)
        delivery = Delivery(
            queue=sub.queue,
            body=body,
            headers=user_headers(headers),
            redelivered=headers.get("redelivered") == "true" or requeues is not None,
            handle=_Handle(session.generation, ack_id, sub, headers),
        )
        sub.inbox.put(delivery)
        sub.refilling_since = None
        sub.bell.put(None)

    def receive(self, queue: str, timeout: float) -> Delivery | None:
        """A message of ``queue``'s bands (highest band first), or of a subscription."""
        self.check_open()
        if queue.startswith("subscription."):
            sub = self._subs.get(queue)
            if sub is None:
                raise TransportError(f"no subscription {queue!r} on {self!r}")
            return self._take([sub], timeout)
        return self._take(self._band_subscriptions(queue, self._all_starts()), timeout)

    def receive_priorities(
        self, queue: str, timeout: float, priorities: PriorityRange
    ) -> Delivery | None:
        """A message of the bands ``priorities`` covers, highest band first; a range that
        cuts a band is :class:`Unsupported` (it names ``?priority_bands=``)."""
        self.check_open()
        starts = self._bands.starts_within(priorities, self.name)
        return self._take(self._band_subscriptions(queue, starts), timeout)

    def _all_starts(self) -> list[int]:
        return [band.lowest for band in reversed(self._bands.ranges)]

    def _take(self, subs: list[_Subscription], timeout: float) -> Delivery | None:
        """The first delivery of the first of ``subs`` that has one, waiting on their bell."""
        deadline = time.monotonic() + max(0.0, timeout)
        bell = subs[0].bell
        while True:
            session = self._session
            if session is None or not session.alive:
                if self.closed:
                    return None
                try:
                    session = self._live(deadline)
                except ConnectionLost:
                    if time.monotonic() >= deadline and self._within_window():
                        return None
                    raise
            delivery, held_until = _first(subs)
            if delivery is None:
                remaining = min(deadline, held_until or deadline) - time.monotonic()
                if remaining <= 0:
                    if held_until and time.monotonic() < deadline:
                        continue  # the higher band stayed quiet: take the lower band's one
                    return None
                try:
                    bell.get(timeout=remaining)
                except Empty:
                    continue  # past the deadline, or the hold is over
                # a delivery, or woken: closed, lost, or unsubscribed
                if self.closed or any(self._subs.get(sub.name) is not sub for sub in subs):
                    return None
                continue
            current = self._session
            if current is not None and delivery.handle.generation == current.generation:
                return delivery
            # else delivered by a connection that died: the server redelivers it

    def _within_window(self) -> bool:
        down = self._down_since
        return down is None or time.monotonic() - down < self._window

    def _settle_session(self, delivery: Delivery) -> tuple[_Handle, Session] | None:
        """The handle and the connection to settle on, or None when there is nothing to do."""
        self.check_open()
        handle = delivery.handle
        if not isinstance(handle, _Handle):
            raise TransportError(f"{delivery!r} did not come from a STOMP transport")
        if handle.settled:
            return None
        handle.settled = True
        handle.subscription.refilling_since = time.monotonic()
        session = self._session
        if session is None or session.generation != handle.generation or not session.alive:
            return None  # the connection that delivered it is gone: the server redelivers it
        return handle, session

    def ack(self, delivery: Delivery) -> None:
        found = self._settle_session(delivery)
        if found is not None:
            handle, session = found
            session.write(encode_settle("ACK", handle.ack_id))

    def nack(self, delivery: Delivery, *, requeue: bool) -> None:
        found = self._settle_session(delivery)
        if found is None:
            return
        handle, session = found
        if self._profile.native_requeue:
            session.write(encode_settle("NACK", handle.ack_id, requeue=str(requeue).lower()))
        elif not requeue:
            session.write(encode_settle("ACK", handle.ack_id))  # ActiveMQ's NACK: to its DLQ
        elif handle.subscription.destination.startswith("/topic/"):
            session.write(encode_settle("NACK", handle.ack_id))  # a re-send: to every subscriber
        else:
            self._requeue_by_resend(session, handle, delivery.body)

    def _requeue_by_resend(self, session: Session, handle: _Handle, body: bytes) -> None:
        """Put a message back on ActiveMQ: re-send a copy and ACK the original, atomically."""
        # names as received (unescaped); stomp.py escapes only the values it sends
        headers = {
            escape(k): v
            for k, v in handle.headers.items()
            if k not in _SERVER_SET and not k.startswith("AMQ_SCHEDULED")
        }
        headers[REQUEUES] = str(int(headers.get(REQUEUES, "0")) + 1)
        headers.pop("content-type", None)
        transaction = f"qk-tx-{uuid.uuid4().hex}"
        receipt = session.new_receipt()
        session.call("begin", transaction)
        frame = dict(headers, transaction=transaction)
        session.call("send", handle.subscription.destination, body, BINARY, frame)
        session.call("ack", handle.ack_id, transaction)
        session.call("commit", transaction, {"receipt": receipt})
        session.wait_receipt(receipt, self._receipt_timeout)

    # -- closing ------------------------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._wake_all()
        session, self._session = self._session, None
        if session is not None:
            session.close()


def _first(subs: list[_Subscription]) -> tuple[Delivery | None, float]:
    """The oldest delivery of the highest band (first of ``subs``) that holds one; or None
    and, when a lower band's is held back for a band above that may be refilling, until when
    (else 0)."""
    now = time.monotonic()
    refill_until = 0.0
    for sub in subs:
        if not sub.inbox.empty():
            if refill_until > now:
                return None, refill_until
            return sub.inbox.get_nowait(), 0.0
        since = sub.refilling_since
        if since is not None:
            refill_until = max(refill_until, since + _REFILL_GRACE)
    return None, 0.0
