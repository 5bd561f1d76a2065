"""What this transport holds of one queue it consumes: buffered, listed, delivered items.

The state only, with the two changes that notifications make to it (a new item offered, the
node purged or deleted); fetching and handing out items is ``QueueReader``'s job, recording
them as taken ``TakenJournal``'s, settling them ``Acks``'.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from .stanzas import Item


@dataclass(slots=True)
class QueueConsumer:
    """Local view of one queue node being consumed by this transport."""

    node: str
    journal: str  # the node recording which items consumers took
    limit: int
    buffer: deque[Item] = field(default_factory=deque)
    # Listed but not buffered, oldest first: the items themselves (up to KEEP_LISTED),
    # then only ids (fetched again when their turn comes).
    backlog: deque[Item | str] = field(default_factory=deque)
    known: set[str] = field(default_factory=set)  # buffered, backlog or delivered ids
    delivered: set[str] = field(default_factory=set)  # handed out, not settled
    ready: bool = False
    stale: bool = True  # the node may hold items we have not listed
    listing: bool = False
    pending: list[Item] = field(default_factory=list)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    taken_before: dict[str, int] = field(default_factory=dict)  # from the last listing
    batches: dict[str, set[str]] = field(default_factory=dict)  # our journal entries
    batch_of: dict[str, str] = field(default_factory=dict)  # item id -> journal entry
    generation: int = 0  # bumped when the node is purged or deleted under us
    marking: asyncio.Lock = field(default_factory=asyncio.Lock)  # one journal write at a time
    ahead: bool = False  # a mark-ahead is scheduled or running (see ``QueueReader.take_ready``)

    def reset(self) -> None:
        """The node was purged or deleted: forget every copy held here (not the delivered
        ones, whose settling then finds nothing, a no-op)."""
        dropped = {x if isinstance(x, str) else x.id for x in self.backlog}
        dropped.update(item.id for item in self.buffer)
        self.buffer.clear()
        self.backlog.clear()
        self.known -= dropped
        self.stale = True
        self.generation += 1
        self.wakeup.set()

    def offer(self, item: Item) -> None:
        """A notification: buffer it if it keeps order and fits, else re-list later."""
        if item.id in self.known:
            return
        if self.listing:
            self.pending.append(item)
            return
        if self.backlog or self.stale or len(self.buffer) >= self.limit:
            self.stale = True  # it stays on the node; the next listing finds it
        else:
            self.buffer.append(item)
            self.known.add(item.id)
        self.wakeup.set()
