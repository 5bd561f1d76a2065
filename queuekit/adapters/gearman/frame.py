"""What a queuekit message looks like inside a Gearman job: function names and job data.

Gearman jobs carry a function name, a ``unique`` id and opaque data; nothing else.

**Priorities.** gearmand has three native priorities per function (high, normal, low), too
few for queuekit's 0-255 scale and no use for a worker that wants only some priorities. So a
queue is served by one function per priority band (:class:`~queuekit.spi.priorities.
PriorityBands`: ``name`` for the lowest band, ``name#50`` ... ``name#200`` by default), and
within a band the three native priorities split it in thirds. A worker registers the
functions of its bands lowest first; gearmand hands a grabbing worker a job of its most
recently registered function first (then by native priority), so the highest band wins.
A worker with a priority range registers only the functions of the bands inside it. Without
a priority a message goes to the plain function name in the low native priority, like the
other adapters where no priority means 0.

**Data.** A message with no headers and no priority goes out as its body, byte for byte,
so plain Gearman workers and clients interoperate. Otherwise the data is
``MAGIC + u32 length + JSON {"h": headers, "l": native level, "fg": 1} + body`` (the level
lets a requeue resubmit at the same native priority); a body that happens
to start with ``MAGIC`` is always framed, so every body round-trips exactly.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field

from ...spi.priorities import PriorityBands

MAGIC = b"\x00QK\x01"
_LENGTH = struct.Struct("!I")
#: Native priorities, lowest first, as pygearman names them (``None`` is the normal one).
NATIVE: tuple[str | None, ...] = ("LOW", None, "HIGH")
#: gearmand refuses a ``unique`` longer than this (ARGUMENT_TOO_LARGE).
MAX_UNIQUE = 64


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a message of some priority goes: its band's function, and ``level``, the index
    in :data:`NATIVE` of the native priority it is submitted with."""

    function: bytes
    level: int

    @property
    def native(self) -> str | None:
        return NATIVE[self.level]


def place(queue: str, priority: int | None, bands: PriorityBands) -> Placement:
    """The function of ``priority``'s band, and the third of the band it falls in."""
    start = bands.start_of(priority)
    function = bands.queue_for(queue, start).encode()
    if priority is None:
        return Placement(function, 0)
    band = next(b for b in bands.ranges if b.lowest == start)
    width = band.highest - band.lowest + 1
    return Placement(function, (priority - band.lowest) * len(NATIVE) // width)


def functions(queue: str, bands: PriorityBands, starts: list[int] | None = None) -> list[bytes]:
    """The functions of the bands starting at ``starts`` (every band when None), lowest
    band first: the CAN_DO order that makes gearmand hand out the highest band first."""
    chosen = sorted(b.lowest for b in bands.ranges) if starts is None else sorted(starts)
    return [bands.queue_for(queue, start).encode() for start in chosen]


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
    except (struct.error, ValueError, RecursionError):
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
        level=level if 0 <= level < len(NATIVE) else 0,
        foreground=bool(meta.get("fg")),
    )
