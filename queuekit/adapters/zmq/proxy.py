"""The ZeroMQ routing device that ``zmq://`` producers, workers and subscribers meet at.

It is a *device*, not a broker: it keeps no acknowledgements, writes nothing to disk and
forgets everything it holds when it stops. It exists because plain ``zmq.proxy`` cannot keep
queue names apart (a PULL worker of queue A would get queue B's work) and because producers
and workers that start in any order must find each other at a fixed address.

Run it with ``worker zmq-proxy zmq://127.0.0.1:5560`` (or ``python -m
queuekit.adapters.zmq.proxy URL``). From the URL's port ``P`` it binds three sockets:

- ``P``     PULL: producers' PUSH sockets send work, broadcasts and readiness probes here.
- ``P + 1`` ROUTER: workers' DEALER sockets announce a credit window per queue and receive
  batches of work, never more than their window (the prefetch).
- ``P + 2`` PUB: broadcasts and probes go out here; ZeroMQ filters them by topic prefix.

The wire format is in :mod:`queuekit.adapters.zmq.wire`.

Work waits in the device's memory (in arrival order per queue) until a worker has credit;
when more than ``max_buffered`` messages wait in total, the device stops reading producers
and ZeroMQ's high-water marks push back on them (their ``send`` blocks, then times out).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import time
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import zmq

from ...spi.errors import ConfigurationError
from ...spi.urls import TransportURL
from .wire import (
    BROADCAST,
    DEFAULT_PORT,
    DELETE,
    DELIVER,
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
    pack_index,
    recv_message,
    send_message,
    set_heartbeat,
    unpack_index,
)

log = logging.getLogger("queuekit.zmq_proxy")

DEFAULT_MAX_BUFFERED = 1_000_000
#: Largest number of messages the device hands a worker in one ZeroMQ message.
MAX_BATCH = 1024
# Plain ints: combining pyzmq's IntFlag members runs enum code on every frame.
_SNDMORE, _NOBLOCK = int(zmq.SNDMORE), int(zmq.NOBLOCK)


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
