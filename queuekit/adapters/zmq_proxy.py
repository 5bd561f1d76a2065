"""The ZeroMQ routing device that ``zmq://`` producers, workers and subscribers meet at.

It is a *device*, not a broker: it keeps no acknowledgements, writes nothing to disk and
forgets everything it holds when it stops. It exists because plain ``zmq.proxy`` cannot keep
queue names apart (a PULL worker of queue A would get queue B's work) and because producers
and workers that start in any order must find each other at a fixed address.

Run it with ``worker zmq-proxy zmq://127.0.0.1:5560`` (or ``python -m
queuekit.adapters.zmq_proxy URL``). From the URL's port ``P`` it binds three sockets:

- ``P``     PULL: producers' PUSH sockets send work, broadcasts and readiness probes here.
- ``P + 1`` ROUTER: workers' DEALER sockets announce a credit window per queue and receive
  batches of work, never more than their window (the prefetch).
- ``P + 2`` PUB: broadcasts and probes go out here; ZeroMQ filters them by topic prefix.

Wire format. Every ZeroMQ message starts with a *head* frame: a kind byte, a big-endian
uint32 saying how many frames follow, then a queue name or topic (UTF-8). Work travels in
*packed* frames: records back to back, each record (:func:`pack_record`) being the body's
length, the delivery count and the headers' length as three big-endian uint32, then the
headers JSON and the body. Beside each packed frame goes an *index*: little-endian uint32s,
the end offset of every record (from a producer) or how many records each packed frame holds
(to a worker). The device never parses a record: it cuts a producer's packed frame at index
offsets to hand a worker exactly its credit, so routing a batch costs a few calls whatever
its size, instead of a ZeroMQ call per message::

    producer -> P      head(S, 2, queue), index, packed              work for one queue
                       head(S, 1, queue), record                    one message of work
                       head(B, 1, topic), record                    fan-out to subscribers
                       head(P, 0, probe)                            readiness probe
                       head(Z, 0, queue)                            drop what waits in queue
    worker   -> P + 1  head(W, 2, queue), consumed, window          credit (ASCII numbers):
                                                                     may hold window more
                                                                     than it has consumed
                       head(X, 0, queue)                            leave; answered by
                                                                     head(x, 0, queue)
    P + 1 -> worker    head(D, 1 + m, queue), counts, packed * m    m slices of packed frames
    P + 2 -> SUB       topic + b"\\0", record      or  probe, b""

Frames are sent and read one call each with the count known up front: pyzmq's
``send_multipart``/``recv_multipart`` cost about three times more per frame here.

Work waits in the device's memory (in arrival order per queue) until a worker has credit;
when more than ``max_buffered`` messages wait in total, the device stops reading producers
and ZeroMQ's high-water marks push back on them (their ``send`` blocks, then times out).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import struct
import sys
import threading
import time
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import zmq

from queuekit.core.errors import ConfigurationError
from queuekit.core.urls import TransportURL

log = logging.getLogger("queuekit.zmq_proxy")

#: Default largest encoded message body, bytes; clients and the device must agree.
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
#: Room for a record's head and headers JSON on top of the body limit.
FRAME_ALLOWANCE = 64 * 1024
DEFAULT_MAX_BUFFERED = 1_000_000
DEFAULT_PORT = 5560
HEARTBEAT_IVL_MS, HEARTBEAT_TIMEOUT_MS = 2000, 6000
#: Largest number of messages the device hands a worker in one ZeroMQ message.
MAX_BATCH = 1024

SEND, BROADCAST, PROBE, DELETE = ord("S"), ord("B"), ord("P"), ord("Z")
WINDOW, LEAVE, LEFT, DELIVER = ord("W"), ord("X"), ord("x"), ord("D")
TOPIC_END = b"\0"
_HEAD = struct.Struct("!BI")
# Plain ints: combining pyzmq's IntFlag members runs enum code on every frame.
_SNDMORE, _NOBLOCK = int(zmq.SNDMORE), int(zmq.NOBLOCK)
#: A record's head: body length, delivery count (0 on the first delivery), headers length.
RECORD = struct.Struct("!III")
_BIG_ENDIAN = sys.byteorder == "big"


def make_head(kind: int, count: int, name: bytes) -> bytes:
    return _HEAD.pack(kind, count) + name


def send_message(
    sock: zmq.Socket[bytes], head: bytes, items: Sequence[bytes | memoryview], flags: int = 0
) -> None:
    """Send ``head`` and ``items`` as one atomic ZeroMQ message, one call per frame.

    ``flags`` (e.g. ``NOBLOCK``) apply to the first frame only: once it is accepted, ZeroMQ
    takes the rest of the message whatever the high-water mark.
    """
    if not items:
        sock.send(head, flags)
        return
    sock.send(head, flags | _SNDMORE)
    send = sock.send
    for item in items[:-1]:
        send(item, _SNDMORE)
    send(items[-1])


def recv_message(sock: zmq.Socket[bytes]) -> tuple[int, bytes, list[bytes]]:
    """``(kind, name, items)`` of the next message; raises ``zmq.Again`` when none waits.

    A message is delivered whole, so its frames never need waiting for; a head that
    promises more frames than came yields kind 0 (malformed) instead of blocking.
    """
    recv = sock.recv
    head = recv(_NOBLOCK)
    if len(head) < _HEAD.size:
        return 0, head, []
    kind, count = _HEAD.unpack_from(head)
    try:
        items = [recv(_NOBLOCK) for _ in range(count)]
    except zmq.Again:
        return 0, head, []
    return kind, head[_HEAD.size :], items


def pack_record(count: int, headers: bytes, body: bytes) -> bytes:
    """One message as a record: lengths and delivery count, headers JSON, body."""
    return RECORD.pack(len(body), count, len(headers)) + headers + body


def unpack_record(record: bytes) -> tuple[int, bytes, bytes]:
    """``(count, headers, body)`` of a frame holding one record; ``ValueError`` otherwise."""
    if len(record) < RECORD.size:
        raise ValueError("short record")
    size, count, header_size = RECORD.unpack_from(record)
    start = RECORD.size + header_size
    if start + size != len(record):
        raise ValueError("record lengths do not match its frame")
    return count, record[RECORD.size : start], record[start:]


def pack_index(values: Sequence[int]) -> bytes:
    """Little-endian uint32s (record end offsets, or records per packed frame)."""
    packed = array("I", values)
    if _BIG_ENDIAN:
        packed.byteswap()
    return packed.tobytes()


def unpack_index(raw: bytes) -> array[int]:
    """The inverse of :func:`pack_index`; ``ValueError`` for a frame that is not one."""
    values = array("I")
    values.frombytes(raw)  # raises ValueError unless len(raw) is a multiple of 4
    if _BIG_ENDIAN:
        values.byteswap()
    return values


@dataclass(frozen=True)
class Endpoints:
    """The three addresses of one device, derived from a ``zmq://host:port`` URL."""

    host: str
    port: int

    @classmethod
    def from_url(cls, url: TransportURL) -> Endpoints:
        if url.scheme != "zmq":
            raise ConfigurationError(f"not a zmq:// URL: {url.redacted()}")
        host = url.host
        return cls(host.name or "127.0.0.1", host.port or DEFAULT_PORT)

    def _address(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{port}"

    @property
    def frontend(self) -> str:
        return self._address(self.port)

    @property
    def backend(self) -> str:
        return self._address(self.port + 1)

    @property
    def fanout(self) -> str:
        return self._address(self.port + 2)


def set_heartbeat(sock: zmq.Socket[bytes]) -> None:
    """ZMTP heartbeats: a peer that vanished without closing its TCP connection (power
    loss, partition) is dropped within ``HEARTBEAT_TIMEOUT``, so the device stops handing
    it work and clients reconnect."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)


def frame_limit(max_message_size: int) -> int:
    """ZeroMQ ``MAXMSGSIZE`` for receivers, and the most a packed frame may hold: one record
    with a body at the limit and headers of up to ``FRAME_ALLOWANCE`` minus its head."""
    return max_message_size + FRAME_ALLOWANCE


def max_message_size_option(url: TransportURL) -> int:
    text = url.option("max_message_size")
    if text is None:
        return DEFAULT_MAX_MESSAGE_SIZE
    if not text.isdigit() or int(text) <= 0:
        raise ConfigurationError(f"{url.redacted()}: max_message_size must be a positive integer")
    return int(text)


class _Worker:
    """The device's view of one worker on one queue: how much it may still be sent."""

    __slots__ = ("consumed", "sent", "window")

    def __init__(self, consumed: int, window: int) -> None:
        # A worker seen for the first time (or again after a device restart) starts afresh.
        self.sent = consumed
        self.consumed = consumed
        self.window = window

    @property
    def credit(self) -> int:
        return self.consumed + self.window - self.sent


class _Segment:
    """One packed frame from a producer, its record end offsets, and how many of its
    records were handed out already."""

    __slots__ = ("ends", "first", "packed")

    def __init__(self, packed: bytes, ends: array[int]) -> None:
        self.packed, self.ends, self.first = packed, ends, 0


class _Backlog:
    """What waits in one queue, in arrival order: packed frames from ``send_many`` and
    single records from ``send``; ``size`` counts records."""

    __slots__ = ("segments", "size")

    def __init__(self) -> None:
        self.segments: deque[_Segment | bytes] = deque()
        self.size = 0

    def add(self, packed: bytes, ends: array[int]) -> None:
        self.segments.append(_Segment(packed, ends))
        self.size += len(ends)

    def add_one(self, record: bytes) -> None:
        self.segments.append(record)
        self.size += 1

    def take(self, n: int) -> tuple[list[int], list[bytes | memoryview]]:
        """The next ``n`` records (at most ``size``) as slices of packed frames (single
        records in a row joined into one), and how many records each slice holds. Cuts at
        the index offsets; never parses a record."""
        counts: list[int] = []
        slices: list[bytes | memoryview] = []
        segments = self.segments
        self.size -= n
        while n > 0:
            segment = segments[0]
            if isinstance(segment, bytes):
                singles: list[bytes] = []
                while isinstance(segment, bytes):
                    segments.popleft()
                    singles.append(segment)
                    n -= 1
                    if not n or not segments:
                        break
                    segment = segments[0]
                slices.append(b"".join(singles))
                counts.append(len(singles))
                continue
            ends, first = segment.ends, segment.first
            k = min(n, len(ends) - first)
            start = ends[first - 1] if first else 0
            slices.append(memoryview(segment.packed)[start : ends[first + k - 1]])
            counts.append(k)
            if first + k == len(ends):
                segments.popleft()
            else:
                segment.first = first + k
            n -= k
        return counts, slices


class Device:
    """The routing loop. Not thread-safe: ``run`` owns its sockets; ``stop`` may be called
    from any thread (or a signal handler) and makes ``run`` return within ~0.1 s."""

    def __init__(
        self,
        url: TransportURL,
        *,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self.endpoints = Endpoints.from_url(url)
        self.max_message_size = max_message_size_option(url)
        self.max_buffered = max_buffered
        self._context = context or zmq.Context()
        self._own_context = context is None
        self._stopping = threading.Event()
        self._queues: dict[bytes, _Backlog] = {}
        self._workers: dict[bytes, OrderedDict[bytes, _Worker]] = {}
        self._buffered = 0
        self.forwarded = 0

        limit = frame_limit(self.max_message_size)
        ctx = self._context
        self._frontend = ctx.socket(zmq.PULL)
        self._backend = ctx.socket(zmq.ROUTER)
        self._fanout = ctx.socket(zmq.PUB)
        try:
            for sock in (self._frontend, self._backend, self._fanout):
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.MAXMSGSIZE, limit)
                set_heartbeat(sock)
            # What the device holds beyond ``max_buffered`` before producers block.
            self._frontend.setsockopt(zmq.RCVHWM, 1000)
            self._backend.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self._backend.setsockopt(zmq.SNDHWM, 10_000)
            self._fanout.setsockopt(zmq.SNDHWM, 100_000)
            self._frontend.bind(self.endpoints.frontend)
            self._backend.bind(self.endpoints.backend)
            self._fanout.bind(self.endpoints.fanout)
        except zmq.ZMQError as exc:
            self._close_sockets()
            raise ConfigurationError(
                f"zmq device cannot bind {self.endpoints.host} ports "
                f"{self.endpoints.port}-{self.endpoints.port + 2}: {exc}"
            ) from None

    def stop(self) -> None:
        self._stopping.set()

    def run(self, ready: Callable[[], None] | None = None) -> None:
        """Route until :meth:`stop`; then close the sockets (what the device held is lost)."""
        poller = zmq.Poller()
        poller.register(self._backend, zmq.POLLIN)
        reading_front = False
        if ready is not None:
            ready()
        try:
            while not self._stopping.is_set():
                want_front = self._buffered < self.max_buffered
                if want_front != reading_front:
                    if want_front:
                        poller.register(self._frontend, zmq.POLLIN)
                    else:
                        poller.unregister(self._frontend)
                    reading_front = want_front
                events = dict(poller.poll(100))
                dirty: set[bytes] = set()
                if self._backend in events:
                    self._read_backend(dirty)
                if self._frontend in events:
                    self._read_frontend(dirty)
                for queue in dirty:
                    self._dispatch(queue)
        finally:
            self._close_sockets()

    # -- reading ---------------------------------------------------------------------------

    def _read_frontend(self, dirty: set[bytes]) -> None:
        frontend, fanout = self._frontend, self._fanout
        for _ in range(4096):
            if self._buffered >= self.max_buffered:
                return
            try:
                kind, name, items = recv_message(frontend)
            except zmq.Again:
                return
            if kind == SEND and len(items) == 1:  # one record, from send()
                pending = self._queues.get(name)
                if pending is None:
                    pending = self._queues[name] = _Backlog()
                pending.add_one(items[0])
                self._buffered += 1
                dirty.add(name)
            elif kind == SEND and len(items) == 2:
                try:
                    ends = unpack_index(items[0])
                except ValueError:
                    ends = array("I")
                if not ends or ends[-1] != len(items[1]):
                    log.warning("dropped work whose index does not match its records")
                    continue
                pending = self._queues.get(name)
                if pending is None:
                    pending = self._queues[name] = _Backlog()
                pending.add(items[1], ends)
                self._buffered += len(ends)
                dirty.add(name)
            elif kind == BROADCAST and len(items) == 1:
                fanout.send(name + TOPIC_END, _SNDMORE)
                fanout.send(items[0])
            elif kind == PROBE and not items:
                fanout.send(name, _SNDMORE)
                fanout.send(b"")
            elif kind == DELETE and not items:
                dropped = self._queues.pop(name, None)
                self._buffered -= dropped.size if dropped is not None else 0
            else:
                log.warning("dropped a malformed message from a producer")

    def _read_backend(self, dirty: set[bytes]) -> None:
        backend = self._backend
        for _ in range(4096):
            try:
                ident = backend.recv(zmq.NOBLOCK)
                kind, queue, items = recv_message(backend)
            except zmq.Again:
                return
            if kind == WINDOW and len(items) == 2:
                try:
                    consumed, window = int(items[0]), int(items[1])
                except ValueError:
                    continue
                workers = self._workers.get(queue)
                if workers is None:
                    workers = self._workers[queue] = OrderedDict()
                worker = workers.get(ident)
                if worker is None:
                    workers[ident] = _Worker(consumed, window)
                else:
                    worker.consumed = max(worker.consumed, consumed)
                    worker.window = window
                dirty.add(queue)
            elif kind == LEAVE and not items:
                workers = self._workers.get(queue)
                if workers is not None:
                    workers.pop(ident, None)
                # The worker may be gone already; then nothing is owed to it.
                with contextlib.suppress(zmq.ZMQError):
                    backend.send(ident, _NOBLOCK | _SNDMORE)
                    backend.send(make_head(LEFT, 0, queue))
            else:
                log.warning("dropped a malformed message from a worker")

    # -- routing ---------------------------------------------------------------------------

    def _dispatch(self, queue: bytes) -> None:
        """Hand waiting work of ``queue`` to its workers with credit, round robin."""
        pending = self._queues.get(queue)
        workers = self._workers.get(queue)
        backend = self._backend
        while pending and pending.size and workers:
            progressed = False
            share = max(1, -(-pending.size // len(workers)))
            for ident in list(workers):
                worker = workers[ident]
                n = min(worker.credit, pending.size, MAX_BATCH, share)
                if n <= 0:
                    continue
                try:
                    # ROUTER_MANDATORY: an unknown or full peer fails here, on the first frame.
                    backend.send(ident, _NOBLOCK | _SNDMORE)
                except zmq.ZMQError as exc:
                    if exc.errno != zmq.EAGAIN:  # EHOSTUNREACH: that worker is gone
                        del workers[ident]
                    continue
                counts, slices = pending.take(n)
                head = make_head(DELIVER, 1 + len(slices), queue)
                send_message(backend, head, [pack_index(counts), *slices])
                worker.sent += n
                self._buffered -= n
                self.forwarded += n
                workers.move_to_end(ident)
                progressed = True
                if not pending.size:
                    break
            if not progressed:
                break
        if pending is not None and not pending.size:
            del self._queues[queue]
        if workers is not None and not workers:
            del self._workers[queue]

    def _close_sockets(self) -> None:
        for sock in (self._frontend, self._backend, self._fanout):
            sock.close(linger=0)
        if self._own_context:
            self._context.term()


def serve(
    url: str | TransportURL,
    *,
    max_buffered: int = DEFAULT_MAX_BUFFERED,
    ready: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run a device for ``url`` until SIGTERM/SIGINT (or ``stop`` is set); return 0.

    Signal handlers are installed only when called from the main thread. Returns 1 after
    logging why when the ports cannot be bound.
    """
    parsed = url if isinstance(url, TransportURL) else TransportURL.parse(url)
    try:
        device = Device(parsed, max_buffered=max_buffered)
    except ConfigurationError as exc:
        print(f"zmq-proxy: {exc}", file=sys.stderr)
        return 1
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, frame: FrameType | None) -> None:
            device.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    watcher: threading.Thread | None = None
    if stop is not None:

        def watch() -> None:
            stop.wait()
            device.stop()

        watcher = threading.Thread(target=watch, name="zmq-proxy-stop", daemon=True)
        watcher.start()

    def announce() -> None:
        e = device.endpoints
        print(
            f"zmq-proxy: ready on {e.host} ports {e.port} (producers), {e.port + 1} (workers), "
            f"{e.port + 2} (subscribers)",
            file=sys.stderr,
            flush=True,
        )
        if ready is not None:
            ready()

    started = time.monotonic()
    try:
        device.run(announce)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("forwarded %d messages in %.1fs", device.forwarded, time.monotonic() - started)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="worker zmq-proxy", description="Run the queuekit ZeroMQ routing device."
    )
    parser.add_argument(
        "url",
        nargs="?",
        default=f"zmq://127.0.0.1:{DEFAULT_PORT}",
        help="zmq://HOST:PORT; binds PORT (producers), PORT+1 (workers), PORT+2 (subscribers)",
    )
    parser.add_argument(
        "--max-buffered",
        type=int,
        default=DEFAULT_MAX_BUFFERED,
        metavar="N",
        help="stop reading producers while N messages wait in total (default %(default)s)",
    )
    args = parser.parse_args(argv)
    return serve(args.url, max_buffered=args.max_buffered)


if __name__ == "__main__":
    sys.exit(main())
