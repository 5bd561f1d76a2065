"""The message envelope: ``{"payload": ..., "metadata": {...}}`` as compact JSON.

JSON only, never pickle: a body from an untrusted broker can at worst be malformed, never
run code. A ``bytes`` payload is carried as base64 and flagged in the metadata
(``"encoding": "base64"``), so it round-trips exactly and cannot be confused with a string.

**Typed values.** ``datetime``, ``date``, ``UUID``, ``Decimal`` and ``bytes`` anywhere in
a payload (in lists, tuples and dicts) round-trip exactly, as their own types: each is
written as a one-key object ``{"$qk:datetime": "2026-12-05T10:00:00+00:00"}`` and the
metadata says so (``"types": true``), so the worker knows to look. A payload's own dict
that looks like a tag is escaped (``{"$qk:dict": {...}}``). Plain JSON payloads never take
this path: the C encoder runs first and only a payload it refuses is walked in Python, so
their cost is unchanged. Anything else (a set, an object) is refused with ``TypeError``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from ..spi.errors import MalformedMessage

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # queuekit never writes NaN or Infinity


_decode_json = json.JSONDecoder(parse_constant=_no_constant).decode


def _make_encode() -> Callable[[object], str]:
    """JSON text for an envelope. ``JSONEncoder.encode`` builds a fresh C encoder on every
    call; building it once saves about a third of the cost of every publish."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without the C accelerator
        return _ENCODER.encode
    c_encode = make(None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",",
                    False, False, False)  # fmt: skip
    return lambda obj: "".join(c_encode(obj, 0))


#: Compact JSON text (no NaN, non-ASCII kept), the way envelopes and results are written.
encode_json = _make_encode()


@dataclass(slots=True)
class Metadata:
    """What queuekit knows about a message besides its payload.

    ``id`` is 128 random bits in hex (as unique as a uuid4, at a fifth of the cost);
    ``attempts`` counts finished attempts (0 before the first run); ``not_before`` is a Unix
    time; ``priority`` 0-255, higher first; ``key`` is the dedup key, held while the message
    is pending, or for ever with ``once``; ``group`` a serial group; ``headers`` are the
    user's own (e.g. trace context); ``record`` asks the worker to keep a job record (state,
    result, timings) in the job store; ``store`` is the identity of the job store a message
    that depends on one (a key held there, a group, a record) was registered in, so a
    worker on another store can refuse it (:mod:`queuekit.features.storeid`).
    """

    id: str = field(default_factory=lambda: os.urandom(16).hex())
    name: str = ""
    created_at: float = field(default_factory=time.time)
    attempts: int = 0
    not_before: float | None = None
    priority: int | None = None
    key: str | None = None
    once: bool = False
    group: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    retry: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    record: bool = False
    store: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "created_at": self.created_at,
            "attempts": self.attempts,
        }
        # Spelled out, not looped over: this runs for every message published.
        if self.not_before is not None:
            data["not_before"] = self.not_before
        if self.priority is not None:
            data["priority"] = self.priority
        if self.key is not None:
            data["key"] = self.key
            if self.once:
                data["once"] = True
        if self.group is not None:
            data["group"] = self.group
        if self.correlation_id is not None:
            data["correlation_id"] = self.correlation_id
        if self.reply_to is not None:
            data["reply_to"] = self.reply_to
        if self.retry is not None:
            data["retry"] = self.retry
        if self.headers:
            data["headers"] = self.headers
        if self.record:
            data["record"] = True
        if self.store is not None:
            data["store"] = self.store
        return data


# Exact JSON types per metadata field (``type(v) in ...`` also keeps bools out of numbers).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "name": (str,),
    "created_at": (int, float),
    "attempts": (int,),
    "not_before": (int, float),
    "priority": (int,),
    "key": (str,),
    "once": (bool,),
    "group": (str,),
    "correlation_id": (str,),
    "reply_to": (str,),
    "retry": (dict,),
    "headers": (dict,),
    "record": (bool,),
    "store": (str,),
}


@dataclass(slots=True)
class Message:
    """A payload and its metadata, as ``work()`` and ``validate()`` receive it."""

    payload: Any
    metadata: Metadata = field(default_factory=Metadata)

    @property
    def id(self) -> str:
        return self.metadata.id

    @property
    def headers(self) -> dict[str, str]:
        return self.metadata.headers


def encode(message: Message) -> bytes:
    """Serialise a message; raises ``TypeError`` for a payload JSON cannot carry."""
    meta = message.metadata.to_json()
    payload = message.payload
    if isinstance(payload, bytes | bytearray | memoryview):
        payload = base64.b64encode(bytes(payload)).decode("ascii")
        meta["encoding"] = "base64"
    try:
        text = encode_json({"payload": payload, "metadata": meta})
    except TypeError:  # not plain JSON: typed values (rare, so walked only now)
        meta["types"] = True
        try:
            text = encode_json({"payload": _tagged(payload, 0), "metadata": meta})
        except (TypeError, ValueError) as exc:
            raise TypeError(f"payload cannot be sent as JSON: {exc}") from None
    except ValueError as exc:
        raise TypeError(f"payload cannot be sent as JSON: {exc}") from None
    except RecursionError:
        raise TypeError("payload cannot be sent as JSON: it refers to itself") from None
    return text.encode("utf-8")


_TAG = "$qk:"
#: How deep a typed payload may nest (the plain JSON path has the interpreter's limit).
_MAX_DEPTH = 200


def _tagged(value: object, depth: int) -> object:
    """``value`` with every typed value written as its tag (see the module docstring)."""
    if depth > _MAX_DEPTH:
        raise TypeError("it nests too deeply")
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"keys must be str, not {type(key).__name__}")
            out[key] = _tagged(item, depth + 1)
        if len(out) == 1 and next(iter(out)).startswith(_TAG):
            return {_TAG + "dict": out}  # the payload's own, not a tag
        return out
    if isinstance(value, list | tuple):
        return [_tagged(item, depth + 1) for item in value]
    if isinstance(value, datetime):
        return {_TAG + "datetime": value.isoformat()}
    if isinstance(value, date):
        return {_TAG + "date": value.isoformat()}
    if isinstance(value, UUID):
        return {_TAG + "uuid": str(value)}
    if isinstance(value, Decimal):
        return {_TAG + "decimal": str(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {_TAG + "bytes": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_UNTAG: dict[str, Callable[[Any], object]] = {
    _TAG + "datetime": datetime.fromisoformat,
    _TAG + "date": date.fromisoformat,
    _TAG + "uuid": UUID,
    _TAG + "decimal": Decimal,
    _TAG + "bytes": lambda text: base64.b64decode(text, validate=True),
    _TAG + "dict": lambda inner: inner,
}


def _untagged(value: object, depth: int = 0) -> object:
    """The payload :func:`_tagged` wrote, typed again; ``ValueError`` for a broken tag or
    one nested deeper than :func:`_tagged` writes."""
    if depth > _MAX_DEPTH + 1:
        raise ValueError("it nests too deeply")
    if isinstance(value, list):
        return [_untagged(item, depth + 1) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        [(key, inner)] = value.items()
        if key.startswith(_TAG):
            convert = _UNTAG.get(key)
            if convert is None:
                raise ValueError(f"unknown typed value {key!r}")
            if key == _TAG + "dict":
                if not isinstance(inner, dict):
                    raise ValueError("an escaped dict is not an object")
                return {k: _untagged(v, depth + 1) for k, v in inner.items()}
            if not isinstance(inner, str):
                raise ValueError(f"{key!r} is not a string")
            return convert(inner)
    return {key: _untagged(item, depth + 1) for key, item in value.items()}


def _out_of_range(name: str, value: Any) -> str | None:
    """Why a well-typed metadata value cannot be used, or ``None``: what the worker does
    with it later (a retry re-publishes the priority) must not fail on a hostile value."""
    if name == "priority" and not 0 <= value <= 255:
        return "is not 0-255"
    if name == "attempts" and value < 0:
        return "is negative"
    if name == "headers" and not all(type(v) is str for v in value.values()):
        return "has a value that is not a string"
    return None


def decode(body: bytes) -> Message:
    """Parse an envelope; anything else raises :class:`MalformedMessage` with the reason."""
    try:
        data = _decode_json(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise MalformedMessage(
            f"body is not UTF-8 ({exc.reason} at byte {exc.start})", body
        ) from None
    except ValueError as exc:
        raise MalformedMessage(f"body is not JSON ({exc})", body) from None
    except RecursionError:
        raise MalformedMessage("body nests too deeply to decode", body) from None
    if not isinstance(data, dict) or "payload" not in data or "metadata" not in data:
        raise MalformedMessage("JSON is not a queuekit envelope (payload, metadata)", body)
    raw_meta = data["metadata"]
    if not isinstance(raw_meta, dict):
        raise MalformedMessage("metadata is not an object", body)
    payload = data["payload"]
    encoding = raw_meta.pop("encoding", None)
    if encoding == "base64":
        if not isinstance(payload, str):
            raise MalformedMessage("base64 payload is not a string", body)
        try:
            payload = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MalformedMessage(f"payload is not valid base64 ({exc})", body) from None
    elif encoding is not None:
        raise MalformedMessage(f"unknown payload encoding {encoding!r}", body)
    typed = raw_meta.pop("types", False)
    if typed is True:
        try:
            payload = _untagged(payload)
        except (ValueError, ArithmeticError, binascii.Error) as exc:
            raise MalformedMessage(f"payload has a broken typed value ({exc})", body) from None
    elif typed is not False:
        raise MalformedMessage("metadata field 'types' has the wrong type", body)
    for name, value in raw_meta.items():
        expected = _FIELD_TYPES.get(name)
        if expected is None:
            raise MalformedMessage(f"unknown metadata field {name!r}", body)
        if type(value) not in expected:
            raise MalformedMessage(f"metadata field {name!r} has the wrong type", body)
        problem = _out_of_range(name, value)
        if problem:
            raise MalformedMessage(f"metadata field {name!r} {problem}", body)
    if "id" not in raw_meta:
        raise MalformedMessage("metadata has no id", body)
    return Message(payload, Metadata(**raw_meta))
