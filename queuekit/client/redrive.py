"""Putting dead letters back through the broker each one's queue is routed to.

``worker failed retry`` and the dashboard's retry both go through here, so a queue that
``queuekit.toml`` routes to another broker is retried there, never on the default one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ..jobstore.base import FailedMessage
from .connection import Connection


def retry_failed(
    conn: Connection, store: Connection, entries: Iterable[FailedMessage]
) -> Iterator[int]:
    """Put back ``entries`` (dead letters held in ``store``'s job store), in batches per
    queue; yield how many each batch put back (see ``FailedStore.retry_batches``).

    An entry goes through its queue's routed connection when that shares ``store``'s job
    store (the row must leave the store the message goes back from); else through
    ``store``'s own broker.
    """
    by_queue: dict[str, list[int]] = {}
    for entry in entries:
        by_queue.setdefault(entry.queue, []).append(entry.id)
    for queue, ids in by_queue.items():
        target = conn.connection_for(queue)
        if target.jobs.url != store.jobs.url:
            target = store
        yield from target.failed.retry_batches(ids)
