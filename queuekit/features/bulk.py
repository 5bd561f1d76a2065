"""``with queue.bulk(size=500): queue.publish(...)``: many publishes, few round trips.

Inside the block, ``publish`` on that queue (from the same thread) encodes the message,
returns its id and keeps it in a buffer; every ``size`` messages, and at the end of the
block, the buffer goes out with one ``send_many``. Per-message options are kept: each
message carries its own priority, delay and key to the broker, and messages that wait in
the job store's delayed store (brokers without native delays) are stored per due time.

An exception inside the block still sends what was published before it (what Laravel's
and Symfony's buffered dispatch do): a message ``publish`` returned an id for is never
silently dropped. The buffer belongs to the thread that opened the block; other threads
publishing to the same queue meanwhile send at once. Blocks on the same queue nest: the
inner one joins the outer, which sends at its end.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .broker import Broker, Prepared

DEFAULT_BULK_SIZE = 500


class Bulk:
    """The buffer of one ``bulk()`` block. ``sent`` counts messages handed to the broker."""

    def __init__(self, broker: Broker, queue: str, size: int = DEFAULT_BULK_SIZE) -> None:
        if size < 1:
            raise ValueError(f"bulk size must be at least 1, not {size}")
        self.broker, self.queue, self.size = broker, queue, size
        self.pending: list[Prepared] = []
        self.sent = 0
        self._depth = 0

    def add(self, prepared: Prepared) -> None:
        self.pending.append(prepared)
        if len(self.pending) >= self.size:
            self.flush()

    def flush(self) -> None:
        """Send what is buffered now (the block does this when full and at its end)."""
        batch, self.pending = self.pending, []
        if batch:
            self.broker.send_prepared(self.queue, batch)
            self.sent += len(batch)

    # -- the context manager -------------------------------------------------------------

    def __enter__(self) -> Bulk:
        buffers = _buffers(self.broker.bulk_buffers)
        current = buffers.get(self.queue)
        if current is not None and current is not self:  # nested: join the outer block
            current._depth += 1
            return current
        buffers[self.queue] = self
        self._depth += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        buffers = _buffers(self.broker.bulk_buffers)
        active = buffers.get(self.queue, self)
        active._depth -= 1
        if active._depth > 0:
            return
        buffers.pop(self.queue, None)
        active.flush()


def _buffers(local: threading.local) -> dict[str, Bulk]:
    found: dict[str, Bulk] | None = getattr(local, "bulk", None)
    if found is None:
        found = local.bulk = {}
    return found


def active_bulk(broker: Broker, queue: str) -> Bulk | None:
    """The buffer this thread publishes ``queue`` into, if it is inside a ``bulk()`` block."""
    buffers: dict[str, Bulk] | None = getattr(broker.bulk_buffers, "bulk", None)
    return buffers.get(queue) if buffers else None
