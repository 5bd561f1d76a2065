"""Throughput per queue and minute, kept in the job store so a chart survives restarts.

A worker counts what it settles in memory (:class:`Meter`, fed from its loop's counters) and
adds the counts to the store's per-minute buckets at most every :data:`FLUSH_EVERY`
seconds, in one write: a busy worker costs the store a few writes a minute, not one per
message. What a worker killed with SIGKILL counted since its last flush is lost; a worker
that stops cleanly flushes first. Buckets older than :data:`KEEP` are pruned by the worker
that flushes on the hour.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..jobstore.base import JobStore, ThroughputBucket
from ..spi.errors import QueuekitError

log = logging.getLogger("queuekit.worker")

#: Longest time counts wait in a worker before they are written.
FLUSH_EVERY = 10.0
#: How long buckets are kept (seconds).
KEEP = 7 * 24 * 3600.0
_PRUNE_EVERY = 3600.0


def minute_of(when: float) -> int:
    """The start of the minute ``when`` falls in (Unix seconds)."""
    return int(when // 60) * 60


class Meter:
    """One worker's throughput counts, added to the store's buckets in batches.

    ``tally`` takes the worker's running totals (processed, failed) and keeps the increase
    since the last call in the current minute's bucket; ``flush`` writes what is kept.
    Not thread-safe: the worker's loop thread alone calls it.
    """

    def __init__(self, jobs: JobStore, queue: str) -> None:
        self.jobs, self.queue = jobs, queue
        self._seen = (0, 0)
        self._pending: dict[int, tuple[int, int]] = {}
        self._next_flush = time.monotonic() + FLUSH_EVERY
        self._next_prune = 0.0

    def tally(self, processed: int, failed: int, *, now: float | None = None) -> None:
        added = (processed - self._seen[0], failed - self._seen[1])
        self._seen = (processed, failed)
        if added == (0, 0):
            return
        minute = minute_of(time.time() if now is None else now)
        before = self._pending.get(minute, (0, 0))
        self._pending[minute] = (before[0] + added[0], before[1] + added[1])

    def due(self) -> bool:
        return time.monotonic() >= self._next_flush

    def flush(self) -> None:
        """Write the kept counts (one transaction); on a store error they are kept for the
        next flush."""
        self._next_flush = time.monotonic() + FLUSH_EVERY
        buckets = [ThroughputBucket(self.queue, minute, processed, failed)
                   for minute, (processed, failed) in sorted(self._pending.items())]  # fmt: skip
        try:
            if buckets:
                self.jobs.add_throughput(buckets)
                self._pending.clear()
            if time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + _PRUNE_EVERY
                self.jobs.prune_throughput(time.time() - KEEP)
        except QueuekitError as exc:
            log.warning("could not write throughput counts: %s", exc)


@dataclass(frozen=True)
class Series:
    """One queue's throughput over a window: ``processed[i]`` and ``failed[i]`` are the
    counts of the minute ``start + 60 * i``; minutes without a bucket count zero."""

    queue: str
    start: int
    processed: tuple[int, ...]
    failed: tuple[int, ...]


def series(
    buckets: Sequence[ThroughputBucket], queues: Sequence[str], start: float, end: float
) -> list[Series]:
    """Per queue of ``queues``, every minute from ``start`` to ``end`` (inclusive)."""
    first, last = minute_of(start), minute_of(end)
    width = (last - first) // 60 + 1
    table = {q: ([0] * width, [0] * width) for q in queues}
    for bucket in buckets:
        index = (bucket.minute - first) // 60
        if bucket.queue in table and 0 <= index < width:
            table[bucket.queue][0][index] += bucket.processed
            table[bucket.queue][1][index] += bucket.failed
    return [Series(q, first, tuple(p), tuple(f)) for q, (p, f) in table.items()]
