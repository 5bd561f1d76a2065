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

Wire frames. The first frame is one kind byte followed by a queue name or topic (UTF-8);
every message is then *one* frame, an "item" (:func:`pack_item`): ``count`` (earlier
deliveries) and the headers' length as two big-endian uint32, the headers JSON, the body.
The device never looks inside an item, so it routes a message with one frame copy::

    producer -> P      [b"S" + queue, item, item, ...]             work for one queue
                       [b"B" + topic, item]                         fan-out to subscribers
                       [b"P" + probe]                               readiness probe
    worker   -> P + 1  [b"W" + queue, consumed, window]             credit (ASCII numbers):
                                                                     may hold window more
                                                                     than it consumed
                       [b"X" + queue]                               leave; answered by
                                                                     [b"x" + queue]
    P + 1 -> worker    [b"D" + queue, item, item, ...]
    P + 2 -> SUB       [topic + b"\\0", item]  or  [probe, b""]

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
#: Room for the non-body frames (headers JSON, queue, topic) on top of the body limit.
FRAME_ALLOWANCE = 64 * 1024
DEFAULT_MAX_BUFFERED = 1_000_000
DEFAULT_PORT = 5560
#: Largest number of messages the device packs into one delivery frame set.
MAX_BATCH = 256

SEND, BROADCAST, PROBE = ord("S"), ord("B"), ord("P")
WINDOW, LEAVE, LEFT, DELIVER = ord("W"), ord("X"), ord("x"), ord("D")
TOPIC_END = b"\0"
_ITEM_HEAD = struct.Struct("!II")


def pack_item(count: int, headers: bytes, body: bytes) -> bytes:
    """One message as one frame: delivery count, headers JSON, body."""
    return b"".join((_ITEM_HEAD.pack(count, len(headers)), headers, body))


def unpack_item(item: bytes) -> tuple[int, bytes, bytes]:
    """``(count, headers, body)``; raises ``ValueError`` for a frame that is not an item."""
    if len(item) < _ITEM_HEAD.size:
        raise ValueError("short item")
    count, size = _ITEM_HEAD.unpack_from(item)
    end = _ITEM_HEAD.size + size
    if end > len(item):
        raise ValueError("item headers overrun")
    return count, item[_ITEM_HEAD.size : end], item[end:]


def with_count(item: bytes, count: int) -> bytes:
    """The same item with another delivery count (for a requeue)."""
    return _ITEM_HEAD.pack(count, _ITEM_HEAD.unpack_from(item)[1]) + item[_ITEM_HEAD.size :]


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


def frame_limit(max_message_size: int) -> int:
    """ZeroMQ ``MAXMSGSIZE`` for receivers: a body frame at the limit plus header frames."""
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
        self._queues: dict[bytes, deque[bytes]] = {}
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
            self._frontend.setsockopt(zmq.RCVHWM, 10_000)
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
        recv = self._frontend.recv_multipart
        for _ in range(2048):
            if self._buffered >= self.max_buffered:
                return
            try:
                frames = recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            head = frames[0]
            kind = head[0] if head else 0
            if kind == SEND and len(frames) >= 2:
                queue = head[1:]
                pending = self._queues.get(queue)
                if pending is None:
                    pending = self._queues[queue] = deque()
                pending.extend(frames[1:])
                self._buffered += len(frames) - 1
                dirty.add(queue)
            elif kind == BROADCAST and len(frames) == 2:
                self._fanout.send_multipart([head[1:] + TOPIC_END, frames[1]])
            elif kind == PROBE and len(frames) == 1:
                self._fanout.send_multipart([head[1:], b""])
            else:
                log.warning("dropped a malformed frontend message (%d frames)", len(frames))

    def _read_backend(self, dirty: set[bytes]) -> None:
        recv = self._backend.recv_multipart
        for _ in range(2048):
            try:
                frames = recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            head = frames[1] if len(frames) > 1 else b""
            kind = head[0] if head else 0
            if kind == WINDOW and len(frames) == 4:
                ident, queue = frames[0], head[1:]
                try:
                    consumed, window = int(frames[2]), int(frames[3])
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
            elif kind == LEAVE and len(frames) == 2:
                ident, queue = frames[0], head[1:]
                workers = self._workers.get(queue)
                if workers is not None:
                    workers.pop(ident, None)
                # The worker may be gone already; then nothing is owed to it.
                with contextlib.suppress(zmq.ZMQError):
                    self._backend.send_multipart([ident, bytes((LEFT,)) + queue], zmq.NOBLOCK)
            else:
                log.warning("dropped a malformed backend message (%d frames)", len(frames))

    # -- routing ---------------------------------------------------------------------------

    def _dispatch(self, queue: bytes) -> None:
        """Hand waiting work of ``queue`` to its workers with credit, round robin."""
        pending = self._queues.get(queue)
        workers = self._workers.get(queue)
        deliver_head = bytes((DELIVER,)) + queue
        while pending and workers:
            progressed = False
            share = max(1, -(-len(pending) // len(workers)))
            for ident in list(workers):
                worker = workers[ident]
                n = min(worker.credit, len(pending), MAX_BATCH, share)
                if n <= 0:
                    continue
                items = [pending.popleft() for _ in range(n)]
                try:
                    self._backend.send_multipart([ident, deliver_head, *items], zmq.NOBLOCK)
                except zmq.ZMQError as exc:
                    pending.extendleft(reversed(items))
                    if exc.errno != zmq.EAGAIN:  # EHOSTUNREACH: that worker is gone
                        del workers[ident]
                    continue
                worker.sent += n
                self._buffered -= n
                self.forwarded += n
                workers.move_to_end(ident)
                progressed = True
                if not pending:
                    break
            if not progressed:
                break
        if pending is not None and not pending:
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
        log.error("%s", exc)
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
    parser.add_argument("url", nargs="?", default=f"zmq://127.0.0.1:{DEFAULT_PORT}")
    parser.add_argument("--max-buffered", type=int, default=DEFAULT_MAX_BUFFERED)
    args = parser.parse_args(argv)
    return serve(args.url, max_buffered=args.max_buffered)


if __name__ == "__main__":
    sys.exit(main())
