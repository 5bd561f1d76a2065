"""``zmq://host:port``: ZeroMQ through pyzmq, at most once, fast, with nothing kept on disk.

Every process connects to one routing device (:mod:`queuekit.adapters.zmq_proxy`, run as
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
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import zmq

from queuekit.core.capabilities import Capabilities
from queuekit.core.errors import (
    ConfigurationError,
    ConnectionLost,
    MessageTooLarge,
    TransportClosed,
    TransportError,
)
from queuekit.core.topics import topic_matches
from queuekit.core.transport import NO_OPTIONS, Delivery, Headers, Outgoing, SendOptions, Transport
from queuekit.core.urls import TransportURL

from .zmq_proxy import (
    BROADCAST,
    DELETE,
    DELIVER,
    FRAME_ALLOWANCE,
    LEAVE,
    LEFT,
    PROBE,
    SEND,
    TOPIC_END,
    WINDOW,
    Endpoints,
    frame_limit,
    make_head,
    max_message_size_option,
    pack_item,
    recv_message,
    send_message,
    set_heartbeat,
    unpack_item,
)

#: Messages per multipart frame set in ``send_many`` (each set is atomic in ZeroMQ).
_SEND_MANY_CHUNK = 1024
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
    "dedup": "the device keeps no message keys (the core's job store can)",
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


class _Handle:
    """The adapter's reference behind a :class:`Delivery`; settled once."""

    __slots__ = ("count", "headers", "settled", "subscription")

    def __init__(self, count: int, headers: bytes, subscription: _Subscription | None) -> None:
        self.count = count
        self.headers = headers
        self.settled = False
        self.subscription = subscription


@dataclass(eq=False)
class _Inbox:
    """A worker's side of one queue: what the device sent and how much was handed out."""

    items: deque[bytes] = field(default_factory=deque)  # packed items, in arrival order
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


def _decode_headers(raw: bytes) -> dict[str, str]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


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
        self.endpoints = Endpoints.from_url(url)
        self.max_message_size = max_message_size_option(url)
        self.capabilities = replace(CAPABILITIES, max_message_size=self.max_message_size)
        self._linger_ms = int(url.number("linger", 1000, allow_zero=True))
        self._send_timeout = url.number("send_timeout", 10.0, allow_zero=True)
        self._subscribe_timeout = url.number("subscribe_timeout", 10.0, allow_zero=True)
        self._hwm = int(url.number("hwm", 10_000, allow_zero=True))
        self._step = max(1, self.prefetch // 2)

        self._send_lock = threading.Lock()
        self._consumer_lock = threading.Lock()
        self._closed = True  # until the sockets exist (``__del__`` reads it)
        self._worker: zmq.Socket[bytes] | None = None
        self._inboxes: dict[str, _Inbox] = {}
        self._unacked: dict[_Handle, Delivery] = {}
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
        self._closed = False

    def _socket(self, kind: int) -> zmq.Socket[bytes]:
        sock = self._context.socket(kind)
        sock.setsockopt(zmq.LINGER, self._linger_ms)
        sock.setsockopt(zmq.SNDHWM, self._hwm)
        sock.setsockopt(zmq.RCVHWM, self._hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, frame_limit(self.max_message_size))
        set_heartbeat(sock)
        return sock

    # -- publishing ------------------------------------------------------------------------

    def _check_size(self, body: bytes, headers: bytes) -> None:
        if len(body) > self.max_message_size:
            raise MessageTooLarge(len(body), self.max_message_size, self.name)
        if len(headers) > FRAME_ALLOWANCE:
            raise MessageTooLarge(len(headers), FRAME_ALLOWANCE, f"{self.name} (headers)")

    def _push_message(self, head: bytes, items: Sequence[bytes]) -> None:
        with self._send_lock:
            if self._closed:
                raise TransportClosed(f"{self!r} is closed")
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
        if options is not NO_OPTIONS:
            self.require(options)
        raw_headers = _encode_headers(headers)
        self._check_size(body, raw_headers)
        self._push_message(make_head(SEND, 1, queue.encode()), (pack_item(0, raw_headers, body),))

    def send_many(self, queue: str, messages: Sequence[Outgoing]) -> None:
        """One atomic ZeroMQ message per chunk of 1024: all of a chunk arrives, or none."""
        name = queue.encode()
        for start in range(0, len(messages), _SEND_MANY_CHUNK):
            items: list[bytes] = []
            for message in messages[start : start + _SEND_MANY_CHUNK]:
                if message.options is not NO_OPTIONS:
                    self.require(message.options)
                raw_headers = _encode_headers(message.headers)
                self._check_size(message.body, raw_headers)
                items.append(pack_item(0, raw_headers, message.body))
            if items:
                self._push_message(make_head(SEND, len(items), name), items)

    def broadcast(self, topic: str, body: bytes, headers: Headers) -> None:
        raw_headers = _encode_headers(headers)
        self._check_size(body, raw_headers)
        item = pack_item(0, raw_headers, body)
        self._push_message(make_head(BROADCAST, 1, topic.encode()), (item,))

    def delete(self, queue: str) -> None:
        """Tell the device to drop what waits in ``queue`` (after this producer's earlier
        sends, which travel the same pipe). Workers' prefetched messages are not touched."""
        self._push_message(make_head(DELETE, 0, queue.encode()), ())

    # -- consuming work --------------------------------------------------------------------

    def receive(self, queue: str, timeout: float) -> Delivery | None:
        if self._closed:
            raise TransportClosed(f"{self!r} is closed")
        with self._consumer_lock:
            inbox = self._inboxes.get(queue)
            if inbox is not None and inbox.items:  # the common case under load
                delivery = self._hand_out(queue, inbox)
                if delivery is not None:
                    return delivery
            subscription = self._subscriptions.get(queue)
            if subscription is not None:
                return self._receive_broadcast(subscription, timeout)
            return self._receive_work(queue, timeout)

    def _hand_out(self, queue: str, inbox: _Inbox) -> Delivery | None:
        """The next prefetched message of ``queue``; ``None`` if that item was not ours."""
        item = inbox.items.popleft()
        inbox.consumed += 1
        if inbox.consumed - inbox.announced >= self._step:
            self._announce(queue, inbox)
        try:
            count, raw_headers, body = unpack_item(item)
        except ValueError:
            return None  # not from a queuekit peer; nothing to deliver
        handle = _Handle(count, raw_headers, None)
        headers = _decode_headers(raw_headers) if raw_headers else {}
        delivery = Delivery(queue, body, headers, count > 0, count + 1, handle)
        self._unacked[handle] = delivery
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
                delivery = self._hand_out(queue, inbox)
                if delivery is not None:
                    return delivery
                continue
            if self._closed:
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
            if kind == DELIVER:
                inbox = self._inboxes.get(name.decode())
                if inbox is not None:  # always: the device sends only queues we asked for
                    inbox.items.extend(items)
            elif kind == LEFT:
                left = self._inboxes.get(name.decode())
                if left is not None:
                    left.left = True

    def ack(self, delivery: Delivery) -> None:
        if self._closed:
            raise TransportClosed(f"{self!r} is closed")
        handle = delivery.handle
        if isinstance(handle, _Handle) and not handle.settled:
            handle.settled = True
            self._unacked.pop(handle, None)

    def nack(self, delivery: Delivery, *, requeue: bool) -> None:
        """``requeue=True`` sends the message back to the device, to the end of its queue,
        for any worker (with its delivery count raised); ``False`` drops it."""
        if self._closed:
            raise TransportClosed(f"{self!r} is closed")
        handle = delivery.handle
        if not isinstance(handle, _Handle) or handle.settled:
            return
        handle.settled = True
        self._unacked.pop(handle, None)
        if not requeue:
            return
        if handle.subscription is not None:
            delivery.redelivered = True
            delivery.delivery_count = (delivery.delivery_count or 1) + 1
            handle.settled = False
            handle.subscription.items.append(delivery)
            return
        item = pack_item(handle.count + 1, handle.headers, delivery.body)
        self._push_message(make_head(SEND, 1, delivery.queue.encode()), (item,))

    # -- fan-out ---------------------------------------------------------------------------

    def subscribe(self, pattern: str) -> str:
        """Subscribe and return only once the device's PUB socket serves this subscription.

        Readiness handshake: the SUB socket also subscribes to a private probe topic and asks
        the device (through the same path broadcasts take) to publish probes until one
        arrives. Every broadcast the device reads after that reaches this subscription.
        """
        if self._closed:
            raise TransportClosed(f"{self!r} is closed")
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
                _, raw_headers, body = unpack_item(item)
            except ValueError:
                continue
            if not subscription.exact and not topic_matches(
                subscription.pattern, topic_frame[:-1].decode()
            ):
                continue
            handle = _Handle(0, raw_headers, subscription)
            subscription.items.append(
                Delivery(subscription.name, body, _decode_headers(raw_headers), False, 1, handle)
            )

    def _receive_broadcast(self, subscription: _Subscription, timeout: float) -> Delivery | None:
        deadline = time.monotonic() + timeout
        while True:
            if subscription.items:
                return subscription.items.popleft()
            if self._closed:
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
            if self._closed:
                return
            self._closed = True
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
        for queue, inbox in self._inboxes.items():
            if inbox.items:
                items = list(inbox.items)
                returned.append((make_head(SEND, len(items), queue.encode()), items))
            inbox.items.clear()
        for handle, delivery in self._unacked.items():
            if handle.subscription is None:
                item = pack_item(handle.count + 1, handle.headers, delivery.body)
                returned.append((make_head(SEND, 1, delivery.queue.encode()), [item]))
        self._unacked.clear()
        return returned

    def __del__(self) -> None:
        # A transport dropped without close(): release the sockets without any network
        # handshake (nothing may block in a finalizer). Its prefetched work is lost.
        if getattr(self, "_closed", True):
            return
        self._closed = True
        for sock in self._sockets():
            sock.close(linger=0)
        self._context.term()

    def _sockets(self) -> list[zmq.Socket[bytes]]:
        found = [self._push] + [s.socket for s in self._subscriptions.values()]
        return found + ([self._worker] if self._worker is not None else [])
