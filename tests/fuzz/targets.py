"""Fuzz targets: every parser that reads bytes from a broker or a peer, one function each.

Each target takes arbitrary bytes and checks the contract of hostile input: the parser
returns a well-typed result or raises the one clear error it documents, never anything
else (a crash), and returns at once (no hang: the callers bound time). Memory stays bounded
because every parser here only slices what it was given, after checking lengths.

The same targets run in CI as hypothesis property tests (tests/test_hostile_input.py, few
examples) and for as long as you like from the command line (``tests/fuzz/run.py``).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from xml.etree import ElementTree as ET

from hypothesis import strategies as st

from queuekit.adapters.amqp.messages import user_headers as amqp_headers
from queuekit.adapters.gearman import frame as gearman
from queuekit.adapters.sqlite import decode_headers as sqlite_headers
from queuekit.adapters.stomp.frames import user_headers as stomp_headers
from queuekit.adapters.xmpp.settings import NS, decode_payload
from queuekit.adapters.xmpp.stanzas import parse_items
from queuekit.adapters.zmq import wire
from queuekit.features.envelope import Message, decode
from queuekit.features.signing import Signer, SigningKey
from queuekit.spi.errors import MalformedMessage, UnverifiedMessage

SIGNER = Signer([SigningKey("k1", os.urandom(32))])


def _headers_ok(headers: object) -> None:
    assert isinstance(headers, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())


def envelope(data: bytes) -> None:
    """The envelope decoder: a :class:`Message` whose metadata has its declared types, or
    :class:`MalformedMessage`."""
    try:
        message = decode(data)
    except MalformedMessage as exc:
        assert exc.body == data and exc.reason
        return
    assert isinstance(message, Message)
    meta = message.metadata
    assert isinstance(meta.id, str) and isinstance(meta.attempts, int) and meta.attempts >= 0
    assert meta.priority is None or 0 <= meta.priority <= 255
    _headers_ok(meta.headers)


def signature(data: bytes) -> None:
    """The signature check: the envelope of a signed body, or :class:`UnverifiedMessage`."""
    try:
        envelope = SIGNER.verify("q", data)
    except UnverifiedMessage as exc:
        assert exc.body == data and exc.reason
        return
    assert data.endswith(envelope)  # a seed signed by SIGNER, unchanged


def gearman_job(data: bytes) -> None:
    """Gearman job data: always a job (data without a valid frame is all body)."""
    job = gearman.decode(data)
    assert isinstance(job.body, bytes) and len(job.body) <= len(data)
    _headers_ok(job.headers)
    assert 0 <= job.level < len(gearman.NATIVE)


def zmq_record(data: bytes) -> None:
    """One zmq record (a broadcast): a tuple, or ``ValueError``."""
    try:
        _, headers, body = wire.unpack_record(data)
    except ValueError:
        return
    assert len(headers) + len(body) <= len(data)
    _headers_ok(wire.decode_headers(headers))


def zmq_work(data: bytes) -> None:
    """A worker's delivery from the device: the index is the first 4-byte-aligned part,
    the rest frames of 64 bytes. Never raises; what does not parse is counted."""
    cut = (data[0] if data else 0) % 33 * 4
    index, rest = data[1 : 1 + cut], data[1 + cut :]
    frames = [rest[i : i + 64] for i in range(0, len(rest), 64)]
    deliveries, dropped = wire.unpack_work("q", index, frames)
    assert dropped >= 0 and sum(len(d.body) for d in deliveries) <= len(rest)
    for delivery in deliveries:
        _headers_ok(delivery.headers)


def xmpp_item(data: bytes) -> None:
    """A pub/sub ``<item>`` with any content: one item whose body is bytes (the raw XML and
    a malformed mark when it is not a queuekit payload)."""
    try:
        element = ET.fromstring(b"<item id='i'>" + data + b"</item>")
    except (ET.ParseError, ValueError):
        return  # not XML: the XMPP stream parser never hands it up
    [item] = list(parse_items([element]))
    assert isinstance(item.body, bytes)
    _headers_ok(item.headers)


def xmpp_payload(data: bytes) -> None:
    """A queuekit ``<m>`` payload with any text in its headers and body."""
    text = data.decode("utf-8", "replace")
    root = ET.Element(f"{{{NS}}}m")
    header = ET.SubElement(root, f"{{{NS}}}h", n=text[:8])
    header.text = text[8:16]
    node = ET.SubElement(root, f"{{{NS}}}b", enc="base64" if data[:1] == b"b" else "")
    node.text = text
    try:
        body, headers = decode_payload(root)
    except MalformedMessage:
        return
    assert isinstance(body, bytes)
    _headers_ok(headers)


def stomp_frame(data: bytes) -> None:
    """A STOMP frame as stomp.py parses it, then queuekit's headers out of it."""
    from stomp.utils import parse_frame

    try:
        parsed = parse_frame(data)
    except UnicodeDecodeError:
        return  # stomp.py's own error; its receiver thread reports it (docs/security.md)
    if parsed is None:
        return
    _headers_ok(stomp_headers(parsed.headers))


def stomp_headers_only(data: bytes) -> None:
    """queuekit's header names and values in a MESSAGE frame, prefixed or base64."""
    text = data.decode("utf-8", "replace")
    half = len(text) // 2
    encoded = base64.urlsafe_b64encode(data).decode()
    frame = {"qk-" + text[:half]: text[half:], "qkb-" + text[:half]: text[half:],
             "qkb-" + encoded: encoded, "destination": text}  # fmt: skip
    _headers_ok(stomp_headers(frame))


def amqp_application_headers(data: bytes) -> None:
    """py-amqp's application headers: any table value (bytes, numbers, nested tables)."""
    text = data.decode("utf-8", "replace")
    raw: dict[str, object] = {text: data, "n": len(data), "t": [data, text], "d": {"x": data}}
    _headers_ok(amqp_headers(raw))


def sqlite_row_headers(data: bytes) -> None:
    """A queue row's headers column, whatever is stored in the file."""
    _headers_ok(sqlite_headers(data.decode("utf-8", "replace")))


def envelope_json(data: bytes) -> None:
    """An envelope whose metadata values are whatever JSON the bytes decode to."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        value = data.decode("latin-1")
    for field in ("id", "name", "attempts", "priority", "headers", "retry", "not_before",
                  "created_at", "key", "group", "record", "types", "encoding"):  # fmt: skip
        meta = {"id": "x", field: value}
        envelope(json.dumps({"payload": value, "metadata": meta}).encode())


TARGETS: dict[str, Callable[[bytes], None]] = {
    "envelope": envelope,
    "envelope_json": envelope_json,
    "signature": signature,
    "gearman_job": gearman_job,
    "zmq_record": zmq_record,
    "zmq_work": zmq_work,
    "xmpp_item": xmpp_item,
    "xmpp_payload": xmpp_payload,
    "stomp_frame": stomp_frame,
    "stomp_headers": stomp_headers_only,
    "amqp_headers": amqp_application_headers,
    "sqlite_headers": sqlite_row_headers,
}


def _seeds() -> dict[str, list[bytes]]:
    """Well-formed inputs per target, for mutations to start from (random bytes rarely get
    past a JSON or XML parser to the code behind it)."""
    from datetime import UTC, datetime

    from stomp.utils import Frame as StompFrame
    from stomp.utils import convert_frame

    from queuekit.adapters.stomp.frames import wire_headers
    from queuekit.adapters.xmpp.settings import encode_payload
    from queuekit.features.envelope import Metadata, encode

    plain = encode(Message({"to": "a@example.com"}, Metadata(name="job", priority=5)))
    typed = encode(Message([datetime.now(UTC), b"\x00", {"$qk:x": 1}], Metadata(group="g")))
    headers = {"queuekit-group": "g", "trace": "t\u00ff"}
    record = wire.pack_record(1, json.dumps(headers).encode(), plain)
    message = StompFrame("MESSAGE", {**wire_headers(headers), "destination": "/queue/q"}, plain)
    return {
        "envelope": [plain, typed, SIGNER.sign("q", plain)],
        "envelope_json": [b'{"a": [1, "x", null]}', b"[1e400, -0]"],
        "signature": [SIGNER.sign("q", plain), SIGNER.sign("other", typed)],
        "gearman_job": [gearman.encode(plain, headers, 2, foreground=True)],
        "zmq_record": [record],
        "zmq_work": [bytes([1]) + wire.pack_index([2]) + record + record],
        "xmpp_item": [
            ET.tostring(encode_payload(plain, headers)),
            ET.tostring(encode_payload(b"\xff\x00", headers)),
        ],
        "xmpp_payload": [b"b" + base64.b64encode(plain), plain],
        "stomp_frame": [b"".join(convert_frame(message))],
        "stomp_headers": [b"trace\xc3\xbfvalue"],
        "amqp_headers": [b"\xff\xfe", b"plain"],
        "sqlite_headers": [json.dumps(headers).encode()],
    }


SEEDS = _seeds()


def inputs(name: str, max_size: int = 4096) -> st.SearchStrategy[bytes]:
    """What hypothesis feeds target ``name``: random bytes, and its seeds with a few bytes
    replaced, inserted or cut somewhere (a crude mutator that reaches past the parsers)."""

    def splice(args: tuple[bytes, int, int, bytes]) -> bytes:
        seed, at, cut, insert = args
        at %= len(seed) + 1
        return seed[:at] + insert + seed[at + cut :]

    mutated = st.tuples(st.sampled_from(SEEDS[name]), st.integers(0, 1 << 16),
                        st.integers(0, 16), st.binary(max_size=16)).map(splice)  # fmt: skip
    return st.binary(max_size=max_size) | mutated
