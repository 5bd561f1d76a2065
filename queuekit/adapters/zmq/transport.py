"""``zmq://host:port``: ZeroMQ through pyzmq, at most once, fast, with nothing kept on disk.

Every process connects to one routing device (:mod:`queuekit.adapters.zmq.proxy`, run as
``worker zmq-proxy URL``) at the URL's port ``P``: producers PUSH to ``P``, workers hold a
DEALER on ``P + 1`` and take work in batches no larger than their prefetch window, subscribers
hold a SUB on ``P + 2``. Queue names are kept apart by the device (each message carries its
queue in its own frame); ``zmq.proxy`` alone could not do that.

What is *not* guaranteed (see docs/zmq.md): nothing survives a device restart; there are no
acks, so the work a killed worker had prefetched is lost; ``send`` returns once ZeroMQ has
queued the message locally, not once the device holds it.

URL options: ``max_message_size`` (bytes, default 4 MiB; the device must use the same),
``linger`` (ms ``close`` waits for unsent messages, default 1000), ``send_timeout`` (s a
blocked ``send`` waits before :class:`ConnectionLost`, default 10), ``subscribe_timeout`` (s,
default 10), ``hwm`` (ZeroMQ high-water mark per socket, default 10000).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import zmq

from ...spi.capabilities import Capabilities
from ...spi.errors import (
    ConfigurationError,
    ConnectionLost,
    MessageTooLarge,
    TransportError,
)
from ...spi.topics import topic_matches
from ...spi.transport import NO_OPTIONS, Delivery, Headers, Outgoing, SendOptions, Transport
from ...spi.urls import TransportURL
from .wire import (
    BROADCAST,
    DELETE,
    DELIVER,
    FRAME_ALLOWANCE,
    LEAVE,
    LEFT,
    PROBE,
    RECORD,
    SEND,
    TOPIC_END,
    WINDOW,
    Endpoints,
    decode_headers,
    frame_limit,
    make_head,
    max_message_size_option,
    pack_index,
    pack_record,
    recv_message,
    send_message,
    set_heartbeat,
    unpack_record,
    unpack_work,
)

#: Most messages ``send_many`` packs into one frame (each frame is atomic in ZeroMQ).
_SEND_MANY_CHUNK = 1024
#: Largest headers JSON: a record's head and headers fit in ``FRAME_ALLOWANCE``.
_MAX_HEADERS = FRAME_ALLOWANCE - RECORD.size
#: How often an idle worker repeats its credit window (finds a restarted device again).
_ANNOUNCE_EVERY = 1.0
#: How long ``receive`` blocks in ZeroMQ before it looks at ``close`` again.
_POLL_SLICE = 0.1
#: Probe topics start with a byte no queuekit topic frame starts with in practice.
_PROBE_MARK = b"\x01"

_REASONS = {
    "durable": "the zmq device keeps waiting messages in memory only: a device restart loses them",
    "redelivery": "ZeroMQ has no acks: work a killed worker had prefetched (up to its "
    "prefetch window) is lost, never redelivered (at most once)",
    "delay": "ZeroMQ cannot hold a message until later (the core's job store can)",
    "priority": "the device delivers in arrival order only",
    "priority_range": "the device delivers in arrival order only",
    "dedup": "the device keeps no message keys; the core's job store keeps 'ever' keys (keys "
    "while pending need redelivery: a lost message would hold its key for ever)",
    "inspect": "part of what waits sits in ZeroMQ pipes and socket buffers the device "
    "cannot count, so depth would lie",
}

CAPABILITIES = Capabilities(
    nack_requeue=True,
    fifo=True,
    competing_consumers=True,
    fanout=True,
    topics=True,
    reasons=_REASONS,
)


class _Broadcast:
    """The handle of a broadcast delivery: its subscription, and whether it was settled."""

    __slots__ = ("settled", "subscription")

    def __init__(self, subscription: _Subscription) -> None:
        self.settled = False
        self.subscription = subscription


@dataclass(eq=False)
class _Inbox:
    """A worker's side of one queue: what the device sent and how much was handed out.

    Work deliveries carry the delivery count the device saw (0 on the first) as handle.
    """

    items: deque[Delivery] = field(default_factory=deque)  # in arrival order
    consumed: int = 0
    announced: int = 0
    announced_at: float = 0.0
    left: bool = False


@dataclass(eq=False)
class _Subscription:
    name: str
    pattern: str
    exact: bool
    socket: zmq.Socket[bytes]
    items: deque[Delivery] = field(default_factory=deque)


def _encode_headers(headers: Headers) -> bytes:
    return json.dumps(dict(headers), separators=(",", ":")).encode() if headers else b""


def subscription_prefix(pattern: str) -> bytes:
    """The ZeroMQ prefix that catches every topic frame ``pattern`` can match.

    Literal words up to the first wildcard; an exact pattern also gets the terminator so
    ``a.b`` does not catch ``a.bc``. Wildcard patterns are checked again on receipt.
    """
    words = pattern.split(".")
    literal: list[str] = []
    for word in words:
        if word in ("*", "#"):
            prefix = ".".join(literal)
            if word == "*" and literal:
                prefix += "."
            return prefix.encode()
        literal.append(word)
    return pattern.encode() + TOPIC_END


class ZeroMQTransport(Transport):
    """The ``zmq://`` adapter. Thread safety per the contract: ``send``, ``send_many`` and
    ``broadcast`` share one PUSH socket behind a lock; ``receive``/``ack``/``nack``/
    ``subscribe`` use the consumer's sockets behind a second lock; ``close`` takes both."""

    name = "zmq"
    capabilities = CAPABILITIES

    def __init__(self, url: TransportURL, *, prefetch: int = 16) -> None:
        super().__init__(url, prefetch=max(1, prefetch))
        self.closed = True  # until the sockets exist (``__del__`` reads it)
        self.endpoints = Endpoints.from_url(url)
        self.max_message_size = max_message_size_option(url)
        self.capabilities = replace(CAPABILITIES, max_message_size=self.max_message_size)
        self._linger_ms = url.integer("linger", 1000, allow_zero=True)
        self._send_timeout = url.number("send_timeout", 10.0, allow_zero=True)
        self._subscribe_timeout = url.number("subscribe_timeout", 10.0, allow_zero=True)
        self._hwm = url.integer("hwm", 10_000, allow_zero=True)
        self._step = max(1, self.prefetch // 2)

        self._send_lock = threading.Lock()
        self._consumer_lock = threading.Lock()
        self._worker: zmq.Socket[bytes] | None = None
        self._inboxes: dict[str, _Inbox] = {}
        self._unacked: dict[int, Delivery] = {}  # by id(): a Delivery is not hashable
        self._subscriptions: dict[str, _Subscription] = {}
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._push = self._socket(zmq.PUSH)
        try:
            self._push.setsockopt(zmq.SNDTIMEO, int(self._send_timeout * 1000))
            self._push.connect(self.endpoints.frontend)
        except zmq.ZMQError as exc:
            self._push.close(linger=0)
            self._context.term()
            raise ConfigurationError(f"{url.redacted()}: cannot use this address: {exc}") from None
        self.closed = False

    def _socket(self, kind: int) -> zmq.Socket[bytes]:
        sock = self._context.socket(kind)
        sock.setsockopt(zmq.LINGER, self._linger_ms)
        sock.setsockopt(zmq.SNDHWM, self._hwm)
        sock.setsockopt(zmq.RCVHWM, self._hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, frame_limit(self.max_message_size))
        set_heartbeat(sock)
        return sock

    # -- publishing ------------------------------------------------------------------------

    def _record(self, body: bytes, headers: Headers, options: SendOptions) -> bytes:
        """A message as a first-delivery record; raises before anything is sent."""
        self.check_outgoing(body, options)
        raw_headers = _encode_headers(headers) if headers else b""
        if len(raw_headers) > _MAX_HEADERS:
            raise MessageTooLarge(len(raw_headers), _MAX_HEADERS, f"{self.name} (headers)")
        return pack_record(0, raw_headers, body)

    def _frames(self, queue: str, records: Iterable[bytes]) -> list[tuple[bytes, list[bytes]]]:
        """Work messages for ``records``: each packs up to ``_SEND_MANY_CHUNK`` of them into
        one frame no larger than the device accepts, with the index of where each ends."""
        limit = frame_limit(self.max_message_size)
        chunks: list[tuple[list[bytes], list[int]]] = []
        chunk: list[bytes] = []
        ends: list[int] = []
        size = 0
        for record in records:
            if chunk and (len(chunk) == _SEND_MANY_CHUNK or size + len(record) > limit):
                chunks.append((chunk, ends))
                chunk, ends, size = [], [], 0
            chunk.append(record)
            size += len(record)
            ends.append(size)
        if chunk:
            chunks.append((chunk, ends))
        head = make_head(SEND, 2, queue.encode())
        return [(head, [pack_index(ends), b"".join(chunk)]) for chunk, ends in chunks]

    def _push_message(self, head: bytes, items: Sequence[bytes]) -> None:
        with self._send_lock:
            self.check_open()
            try:
                send_message(self._push, head, items)
            except zmq.Again:
                raise ConnectionLost(
                    f"the zmq device at {self.endpoints.frontend} took nothing for "
                    f"{self._send_timeout:g}s (not running, or full)"
                ) from None
            except zmq.ZMQError as exc:
                raise TransportError(f"zmq send failed: {exc}") from None

    def send(
        self, queue: str, body: bytes, headers: Headers, *, options: SendOptions = NO_OPTIONS
    ) -> None:
        """Queue one message for the device; returns once ZeroMQ has it locally (the device
        gets it when connected; what is still unsent ``linger`` ms after ``close`` is lost)."""
        record = self._record(body, headers, options)
        self._push_message(make_head(SEND, 1, queue.encode()), (record,))

    def send_many(self, queue: str, messages: Sequence[Outgoing]) -> None:
        """Packs up to 1024 messages (and at most ``max_message_size`` + 64 KiB) into one
        frame; each frame is one atomic ZeroMQ message: all of it arrives, or none."""
        record = self._record
        records = [record(m.body, m.headers, m.options) for m in messages]
        for head, items in self._frames(queue, records):
            self._push_message(head, items)

    def broadcast(self, topic: str, body: bytes, headers: Headers) -> None:
        record = self._record(body, headers, NO_OPTIONS)
        self._push_message(make_head(BROADCAST, 1, topic.encode()), (record,))

    def delete(self, queue: str) -> None:
        """Tell the device to drop what waits in ``queue`` (after this producer's earlier
        sends, which travel the same pipe). Workers' prefetched messages are not touched."""
        self._push_message(make_head(DELETE, 0, queue.encode()), ())

    # -- consuming work --------------------------------------------------------------------

    def receive(self, queue: str, timeout: float) -> Delivery | None:
        self.check_open()
        with self._consumer_lock:
            inbox = self._inboxes.get(queue)
            if inbox is not None and inbox.items:  # the common case under load
                return self._hand_out(queue, inbox)
            subscription = self._subscriptions.get(queue)
            if subscription is not None:
                return self._receive_broadcast(subscription, timeout)
            return self._receive_work(queue, timeout)

    def _hand_out(self, queue: str, inbox: _Inbox) -> Delivery:
        """The next prefetched message of ``queue``; it stays unsettled until ack/nack."""
        delivery = inbox.items.popleft()
        inbox.consumed += 1
        if inbox.consumed - inbox.announced >= self._step:
            self._announce(queue, inbox)
        self._unacked[id(delivery)] = delivery
        return delivery

    def _receive_work(self, queue: str, timeout: float) -> Delivery | None:
        inbox = self._inboxes.get(queue)
        if inbox is None:
            inbox = self._inboxes[queue] = _Inbox()
        worker = self._worker
        if worker is None:
            worker = self._worker = self._socket(zmq.DEALER)
            worker.connect(self.endpoints.backend)
        deadline = time.monotonic() + timeout
        drained = False
        while True:
            if inbox.items:
                return self._hand_out(queue, inbox)
            if self.closed:
                return None
            if not drained:  # under load the next batch is usually there: skip the poll
                drained = True
                if self._drain_worker():
                    continue
            now = time.monotonic()
            if now - inbox.announced_at >= _ANNOUNCE_EVERY:
                self._announce(queue, inbox)
            remaining = deadline - now
            if remaining <= 0:
                return None
            if worker.poll(int(min(remaining, _POLL_SLICE) * 1000) + 1):
                self._drain_worker()

    def _announce(self, queue: str, inbox: _Inbox) -> None:
        """Tell the device how much this worker may hold: ``consumed + prefetch``."""
        assert self._worker is not None
        try:
            send_message(
                self._worker,
                make_head(WINDOW, 2, queue.encode()),
                (b"%d" % inbox.consumed, b"%d" % self.prefetch),
                zmq.NOBLOCK,
            )
        except zmq.ZMQError:
            return  # pipe full or device away: the next announcement repeats it
        inbox.announced = inbox.consumed
        inbox.announced_at = time.monotonic()

    def _drain_worker(self) -> bool:
        """Read everything waiting from the device; True if anything came."""
        assert self._worker is not None
        worker = self._worker
        got = False
        while True:
            try:
                kind, name, items = recv_message(worker)
            except zmq.Again:
                return got
            got = True
            if kind == DELIVER and items:
                queue = name.decode("utf-8", "replace")  # a name we never asked for: ignored
                inbox = self._inboxes.get(queue)
                if inbox is not None:  # always: the device sends only queues we asked for
                    # what the device counted against this worker's credit, parsed or not
                    deliveries, dropped = unpack_work(queue, items[0], items[1:])
                    inbox.items.extend(deliveries)
                    inbox.consumed += dropped
            elif kind == LEFT:
                left = self._inboxes.get(name.decode("utf-8", "replace"))
                if left is not None:
                    left.left = True

    def ack(self, delivery: Delivery) -> None:
        self.check_open()
        if self._unacked.pop(id(delivery), None) is None:
            handle = delivery.handle
            if isinstance(handle, _Broadcast):
                handle.settled = True

    def nack(self, delivery: Delivery, *, requeue: bool) -> None:
        """``requeue=True`` sends the message back to the device, to the end of its queue,
        for any worker (with its delivery count raised); ``False`` drops it."""
        self.check_open()
        handle = delivery.handle
        if self._unacked.pop(id(delivery), None) is not None:
            if requeue:
                self._requeue(delivery.queue, [self._again(delivery, 1)])
            return
        if not isinstance(handle, _Broadcast) or handle.settled:
            return  # settled before, or not ours
        if requeue:  # back into this subscriber's own buffer
            delivery.redelivered = True
            delivery.delivery_count = (delivery.delivery_count or 1) + 1
            handle.subscription.items.append(delivery)
        else:
            handle.settled = True

    @staticmethod
    def _again(delivery: Delivery, delivered: int) -> bytes:
        """A work delivery as a record again, counting ``delivered`` more deliveries."""
        count = delivery.handle if isinstance(delivery.handle, int) else 0
        return pack_record(count + delivered, _encode_headers(delivery.headers), delivery.body)

    def _requeue(self, queue: str, records: list[bytes]) -> None:
        for head, items in self._frames(queue, records):
            self._push_message(head, items)

    # -- fan-out ---------------------------------------------------------------------------

    def subscribe(self, pattern: str) -> str:
        """Subscribe and return only once the device's PUB socket serves this subscription.

        Readiness handshake: the SUB socket also subscribes to a private probe topic and asks
        the device (through the same path broadcasts take) to publish probes until one
        arrives. Every broadcast the device reads after that reaches this subscription.
        """
        self.check_open()
        exact = "*" not in pattern.split(".") and "#" not in pattern.split(".")
        probe = _PROBE_MARK + uuid.uuid4().hex.encode()
        sock = self._socket(zmq.SUB)
        subscription = _Subscription(f"zmq-sub-{uuid.uuid4().hex}", pattern, exact, sock)
        with self._consumer_lock:
            try:
                sock.setsockopt(zmq.SUBSCRIBE, subscription_prefix(pattern))
                sock.setsockopt(zmq.SUBSCRIBE, probe)
                sock.connect(self.endpoints.fanout)
                deadline = time.monotonic() + self._subscribe_timeout
                interval = 0.01
                ready = False
                while not ready:
                    if time.monotonic() > deadline:
                        raise ConnectionLost(
                            f"no zmq device answered the subscription probe at "
                            f"{self.endpoints.fanout} within {self._subscribe_timeout:g}s"
                        )
                    self._push_message(make_head(PROBE, 0, probe), ())
                    if sock.poll(int(interval * 1000)):
                        ready = self._drain_subscription(subscription, probe)
                    interval = min(interval * 2, 0.5)
                sock.setsockopt(zmq.UNSUBSCRIBE, probe)
            except BaseException:
                sock.close(linger=0)
                raise
            self._subscriptions[subscription.name] = subscription
        return subscription.name

    def _drain_subscription(self, subscription: _Subscription, probe: bytes = b"") -> bool:
        """Move what arrived into the subscription's buffer; True when ``probe`` came."""
        seen_probe = False
        recv = subscription.socket.recv
        while True:
            try:
                topic_frame = recv(zmq.NOBLOCK)
                item = recv(zmq.NOBLOCK)  # the device always sends two frames
            except zmq.Again:
                return seen_probe
            if topic_frame.startswith(_PROBE_MARK):
                seen_probe = seen_probe or (bool(probe) and topic_frame == probe)
                continue
            if not topic_frame.endswith(TOPIC_END):
                continue
            try:
                _, raw_headers, body = unpack_record(item)
            except ValueError:
                continue
            if not subscription.exact and not topic_matches(
                subscription.pattern, topic_frame[:-1].decode("utf-8", "replace")
            ):
                continue
            handle = _Broadcast(subscription)
            subscription.items.append(
                Delivery(subscription.name, body, decode_headers(raw_headers), False, 1, handle)
            )

    def _receive_broadcast(self, subscription: _Subscription, timeout: float) -> Delivery | None:
        deadline = time.monotonic() + timeout
        while True:
            if subscription.items:
                return subscription.items.popleft()
            if self.closed:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if subscription.socket.poll(int(min(remaining, _POLL_SLICE) * 1000) + 1):
                self._drain_subscription(subscription)

    def unsubscribe(self, subscription: str) -> None:
        with self._consumer_lock:
            found = self._subscriptions.pop(subscription, None)
            if found is not None:
                found.socket.close(linger=0)

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Idempotent; returns within about ``linger`` + 1 s even with the device down.

        A worker first leaves each queue (the device stops sending and confirms), then sends
        back what it had prefetched but not handed out and what was handed out but never
        settled. Whatever has not reached the device ``linger`` ms later is lost.
        """
        with self._send_lock:
            if self.closed:
                return
            self.closed = True
        with self._consumer_lock:
            returned = self._leave_queues()
            for subscription in self._subscriptions.values():
                subscription.socket.close(linger=0)
            self._subscriptions.clear()
            if self._worker is not None:
                self._worker.close(linger=0)
        with self._send_lock:
            for head, items in returned:
                try:
                    send_message(self._push, head, items, zmq.NOBLOCK)
                except zmq.ZMQError:
                    break  # the pipe is full: the device is away; these are lost
            self._push.close(linger=self._linger_ms)
        self._context.term()

    def _leave_queues(self) -> list[tuple[bytes, list[bytes]]]:
        """Leave every queue; return the messages that put un-handled work back."""
        returned: list[tuple[bytes, list[bytes]]] = []
        worker = self._worker
        if worker is not None and self._inboxes:
            for queue in self._inboxes:
                try:
                    send_message(worker, make_head(LEAVE, 0, queue.encode()), (), zmq.NOBLOCK)
                except zmq.ZMQError:
                    break
            deadline = time.monotonic() + 1.0
            while not all(inbox.left for inbox in self._inboxes.values()):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not worker.poll(int(remaining * 1000) + 1):
                    break
                self._drain_worker()
        back: dict[str, list[bytes]] = {}
        for delivery in self._unacked.values():  # handed out, never settled: counted again
            back.setdefault(delivery.queue, []).append(self._again(delivery, 1))
        for queue, inbox in self._inboxes.items():  # prefetched: never delivered
            back.setdefault(queue, []).extend(self._again(d, 0) for d in inbox.items)
            inbox.items.clear()
        for queue, records in back.items():
            returned.extend(self._frames(queue, records))
        self._unacked.clear()
        return returned

    def __del__(self) -> None:
        # A transport dropped without close(): release the sockets without any network
        # handshake (nothing may block in a finalizer). Its prefetched work is lost.
        if getattr(self, "closed", True):
            return
        self.closed = True
        for sock in self._sockets():
            sock.close(linger=0)
        self._context.term()

    def _sockets(self) -> list[zmq.Socket[bytes]]:
        found = [self._push] + [s.socket for s in self._subscriptions.values()]
        return found + ([self._worker] if self._worker is not None else [])
