"""Duplicate prevention: a message key, held while its message is pending or for ever.

- **While pending** (``key=``): a second publish with the key is dropped while a message
  holding it waits or runs. Native where the adapter declares ``dedup`` (SQLite, memory,
  gearmand's ``unique``); elsewhere the key is held in the job store from publish until the
  worker settles the message (done, or failed for good; a retry keeps it). That needs an
  adapter that redelivers: a message lost with its worker would hold its key for ever.
- **Ever** (``key=..., dedup="ever"`` or ``.once_ever()``): the key is never released, so a
  message with it runs once, ever, across restarts. No broker remembers keys after a message
  is gone, so this always goes through the job store (plus the broker's own dedup, where it
  has one, against a pending native duplicate).

A publisher holds a key before sending and confirms it after; one that dies in between
leaves an unconfirmed hold that the next publish takes over after a grace period. The
worker releases a pending key before it acks, so a crash in between can let a duplicate in
(at least once), never block the key for ever.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..jobstore.base import JobStore
from ..spi.capabilities import Capabilities
from ..spi.errors import Unsupported
from .envelope import Metadata

log = logging.getLogger("queuekit")

PENDING, EVER = "pending", "ever"
MODES = (PENDING, EVER)


def held_in_store(meta: Metadata, caps: Capabilities) -> bool:
    """Whether ``meta``'s key is kept in the job store rather than by the broker (also
    for a grouped message: it waits in the job store, where no broker sees its key)."""
    return meta.key is not None and (meta.once or meta.group is not None or not caps.dedup)


def check(meta: Metadata, caps: Capabilities, adapter: str) -> None:
    """Refuse a "while pending" key that the job store cannot keep safely on ``adapter``."""
    if meta.key is not None and not meta.once and not caps.dedup and not caps.redelivery:
        raise Unsupported(
            "dedup keys while pending", adapter,
            "a message lost with its worker would hold its key for ever; use dedup='ever'",
        )  # fmt: skip


def hold(jobs: JobStore, queue: str, messages: Sequence[Metadata]) -> set[str]:
    """Hold each message's key; return the ids of the messages that got theirs (the rest
    are duplicates, to be dropped)."""
    held: set[str] = set()
    for meta in messages:
        assert meta.key is not None
        if jobs.hold_key(queue, meta.key, meta.id, ever=meta.once):
            held.add(meta.id)
        else:
            log.info("message %s dropped: key %r is taken on %r", meta.id, meta.key, queue)
    return held


def confirm(jobs: JobStore, queue: str, messages: Sequence[Metadata]) -> None:
    for meta in messages:
        assert meta.key is not None
        jobs.confirm_key(queue, meta.key, meta.id)


def abandon(jobs: JobStore, queue: str, messages: Sequence[Metadata]) -> None:
    """The publish failed: free the keys it held."""
    for meta in messages:
        assert meta.key is not None
        jobs.release_key(queue, meta.key, meta.id, ever=True)


def settled(jobs: JobStore, queue: str, meta: Metadata) -> None:
    """The worker is done with the message for good: free a "while pending" key."""
    if meta.key is not None and not meta.once:
        jobs.release_key(queue, meta.key, meta.id)
