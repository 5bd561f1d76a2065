"""What a queuekit message looks like inside a Gearman job: function names and job data.

Gearman jobs carry a function name, a ``unique`` id and opaque data; nothing else.

**Priorities.** gearmand has three native bands (high, normal, low), too few for queuekit's
0-255 scale, so a queue is served by :data:`GROUPS` functions: ``name`` and ``name#1`` ...
``name#3``, each with the three bands, which gives :data:`LEVELS` ordered levels. A worker
registers the functions lowest group first; gearmand hands a grabbing worker a job of its
most recently registered function first (then by band), so the highest level wins. Without
a priority a message is level 0, on the plain function name in the low band, like the
other adapters where no priority means 0.

**Data.** A message with no headers and no priority goes out as its body, byte for byte,
so plain Gearman workers and clients interoperate. Otherwise the data is
``MAGIC + u32 length + JSON {"h": headers, "l": level, "fg": 1} + body``; a body that happens
to start with ``MAGIC`` is always framed, so every body round-trips exactly.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field

MAGIC = b"\x00QK\x01"
_LENGTH = struct.Struct("!I")
#: Functions per queue and levels in all (three native bands per function).
GROUPS = 4
LEVELS = GROUPS * 3
#: Native bands, lowest first, as pygearman names them (``None`` is the normal band).
BANDS: tuple[str | None, ...] = ("LOW", None, "HIGH")
#: gearmand refuses a ``unique`` longer than this (ARGUMENT_TOO_LARGE).
MAX_UNIQUE = 64
_SUFFIX = "#"


def level_for(priority: int | None) -> int:
    """queuekit's 0-255 priority onto the 12 Gearman levels (``None`` is 0)."""
    if priority is None:
        return 0
    return max(0, min(255, priority)) * LEVELS // 256


def function_for(queue: str, level: int) -> bytes:
    group = level // 3
    return (queue if group == 0 else f"{queue}{_SUFFIX}{group}").encode()


def band_for(level: int) -> str | None:
    return BANDS[level % 3]


def functions(queue: str) -> list[bytes]:
    """Every function that serves ``queue``, lowest group first (the CAN_DO order)."""
    return [function_for(queue, group * 3) for group in range(GROUPS)]


def unique_for(dedup_key: str) -> bytes:
    """A dedup key as a Gearman ``unique``: itself when short and NUL-free, else a digest."""
    raw = dedup_key.encode()
    if 0 < len(raw) <= MAX_UNIQUE and b"\x00" not in raw and not raw.startswith(b"qk:"):
        return raw
    return b"qk:" + hashlib.blake2b(raw, digest_size=24).hexdigest().encode()


@dataclass(slots=True)
class Job:
    """Decoded job data."""

    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    level: int = 0
    foreground: bool = False


def encode(
    body: bytes, headers: dict[str, str] | None, level: int = 0, *, foreground: bool = False
) -> bytes:
    meta: dict[str, object] = {}
    if headers:
        meta["h"] = dict(headers)
    if level:
        meta["l"] = level
    if foreground:
        meta["fg"] = 1
    if not meta and not body.startswith(MAGIC):
        return body
    text = json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode()
    return b"".join((MAGIC, _LENGTH.pack(len(text)), text, body))


def decode(data: bytes) -> Job:
    """Job data back into body and headers; data without a valid frame is all body."""
    if not data.startswith(MAGIC):
        return Job(data)
    start = len(MAGIC) + _LENGTH.size
    try:
        (length,) = _LENGTH.unpack_from(data, len(MAGIC))
        meta = json.loads(data[start : start + length])
    except (struct.error, ValueError):
        return Job(data)
    if not isinstance(meta, dict):
        return Job(data)
    headers = meta.get("h", {})
    level = meta.get("l", 0)
    if not isinstance(headers, dict) or not isinstance(level, int):
        return Job(data)
    return Job(
        body=data[start + length :],
        headers={str(k): str(v) for k, v in headers.items()},
        level=level if 0 <= level < LEVELS else 0,
        foreground=bool(meta.get("fg")),
    )
