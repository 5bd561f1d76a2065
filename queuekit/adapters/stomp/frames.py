"""STOMP 1.2 frames the adapter writes itself, and queuekit headers on the wire.

SEND batches and ACK/NACK frames are encoded here and written many per system call (see
:meth:`.session.Session.write`); stomp.py still reads every frame and writes the rest.
queuekit's headers travel prefixed, so the server's own headers never mix with them.
"""

from __future__ import annotations

import base64
import logging

from ...spi.transport import Headers

log = logging.getLogger("queuekit.stomp")

#: Prefix that keeps queuekit's headers apart from the server's own (destination,
#: message-id, priority, RabbitMQ's copied receipt, ActiveMQ's JMS properties, ...).
USER_PREFIX = "qk-"
#: A queuekit header whose name or value STOMP servers cannot carry as text (NUL, characters
#: outside the Basic Multilingual Plane, which ActiveMQ turns into U+FFFD): both base64.
ENCODED_PREFIX = "qkb-"
BINARY = "application/octet-stream"  # with content-length: any byte round-trips


def escape(text: str) -> str:
    """STOMP 1.2 header escaping; stomp.py's parser undoes it in names and values."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace(":", "\\c").replace("\r", "\\r")


def _plain(text: str) -> bool:
    """Whether every STOMP server here carries ``text`` unchanged in a header."""
    return all(0 < ord(c) < 0xD800 or 0xE000 <= ord(c) <= 0xFFFF for c in text)


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).decode("ascii")


def _unb64(text: str) -> str:
    return base64.urlsafe_b64decode(text.encode("ascii")).decode("utf-8", "surrogatepass")


def encode_send(destination: str, body: bytes, headers: dict[str, str]) -> bytes:
    """One SEND frame as STOMP 1.2 bytes (header names in ``headers`` already escaped)."""
    lines = [
        "SEND",
        "destination:" + escape(destination),
        "content-type:" + BINARY,
        f"content-length:{len(body)}",
    ]
    lines.extend(f"{name}:{escape(value)}" for name, value in headers.items())
    lines.append("\n")
    return "\n".join(lines).encode("utf-8") + body + b"\x00"


def encode_settle(command: str, ack_id: str, **headers: str) -> bytes:
    """An ACK or NACK frame for ``ack_id``, as STOMP 1.2 bytes."""
    lines = [command, "id:" + escape(ack_id)]
    lines.extend(f"{name}:{value}" for name, value in headers.items())
    lines.append("\n")
    return "\n".join(lines).encode("utf-8") + b"\x00"


def wire_headers(headers: Headers) -> dict[str, str]:
    """queuekit headers as STOMP headers, kept apart from the server's own by a prefix."""
    out = {}
    for name, value in headers.items():
        if _plain(name) and _plain(value):
            out[USER_PREFIX + escape(name)] = value
        else:
            out[ENCODED_PREFIX + _b64(name)] = _b64(value)
    return out


def user_headers(frame: dict[str, str]) -> dict[str, str]:
    """The queuekit headers of a MESSAGE frame (the inverse of :func:`wire_headers`)."""
    out = {}
    for name, value in frame.items():
        if name.startswith(USER_PREFIX):
            out[name[len(USER_PREFIX) :]] = value
        elif name.startswith(ENCODED_PREFIX):
            try:
                out[_unb64(name[len(ENCODED_PREFIX) :])] = _unb64(value)
            except (ValueError, UnicodeDecodeError):
                log.warning("dropping an undecodable header %r", name)
    return out
