"""The wire format between ``zmq://`` clients and the routing device, and what both
sides share: addresses, socket options, limits.

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
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import zmq

from ...spi.errors import ConfigurationError
from ...spi.transport import Delivery
from ...spi.urls import TransportURL

#: Default largest encoded message body, bytes; clients and the device must agree.
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
#: Room for a record's head and headers JSON on top of the body limit.
FRAME_ALLOWANCE = 64 * 1024
DEFAULT_PORT = 5560
HEARTBEAT_IVL_MS, HEARTBEAT_TIMEOUT_MS = 2000, 6000

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


def decode_headers(raw: bytes) -> dict[str, str]:
    """A record's headers JSON as strings; ``{}`` for anything that is not a JSON object
    (the body still reaches the worker, whose failed store keeps what does not decode)."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def unpack_work(queue: str, index: bytes, frames: Sequence[bytes]) -> tuple[list[Delivery], int]:
    """The deliveries in a worker's packed frames, all at once (one loop, not a call each),
    and how many records did not parse.

    ``index`` says how many records each frame holds, which is what the device counted
    against the worker's credit: records that do not parse are dropped but counted, so the
    credit stays right. A frame's lengths are checked against the frame before any slice,
    so a lying record costs nothing; an index that is not one drops the lot.
    """
    try:
        counts = unpack_index(index)
    except ValueError:
        return [], 0  # not from a queuekit device
    deliveries: list[Delivery] = []
    append, unpack_from, head = deliveries.append, RECORD.unpack_from, RECORD.size
    dropped = 0
    for n, frame in zip(counts, frames, strict=False):
        pos, end = 0, len(frame)
        for done in range(n):
            try:
                size, count, header_size = unpack_from(frame, pos)
            except struct.error:
                size, count, header_size = end, 0, 0  # overruns: handled below
            start = pos + head + header_size
            if start + size > end:
                dropped += n - done
                break
            headers = decode_headers(frame[pos + head : start]) if header_size else {}
            pos = start + size
            append(Delivery(queue, frame[start:pos], headers, count > 0, count + 1, count))
    return deliveries, dropped


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
    """The URL's ``max_message_size``: clients and the device must agree on it."""
    return url.integer("max_message_size", DEFAULT_MAX_MESSAGE_SIZE)
