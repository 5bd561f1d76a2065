"""The failed store (dead letters) as a connection shows it: list, inspect, retry, purge.

The rows live in the job store; retrying puts a message back on its queue through the
connection, with its attempts reset.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from ..jobstore.base import FailedMessage
from ..jobstore.records import QUEUED, JobUpdate
from ..spi.errors import MalformedMessage
from ..spi.transport import Outgoing
from . import storeid
from .envelope import decode
from .signing import envelope_of

if TYPE_CHECKING:
    from .broker import Broker

#: Dead letters of one queue put back per ``send_many`` (as a ``bulk()`` block sends).
RETRY_BATCH = 500
_Entries = list[FailedMessage]  # `list` in the class below is its method


class FailedStore:
    """The dead letters of a connection's job store, and putting them back to work."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def list(self, queue: str | None = None, *, limit: int = 1000) -> list[FailedMessage]:
        return self._broker.jobs.failed(queue, limit=limit)

    def get(self, failed_id: int) -> FailedMessage | None:
        return self._broker.jobs.get_failed(failed_id)

    def retry(self, failed_id: int) -> bool:
        """Put a dead letter back on its queue with attempts reset; ``False`` if unknown.

        A body that never decoded, or whose signature this connection's keys do not verify,
        goes back as it was, for a fixed worker to judge: retrying never signs a message
        that was not signed by a listed key.
        """
        return sum(self.retry_batches([failed_id])) == 1

    def retry_batches(self, failed_ids: Iterable[int], size: int = RETRY_BATCH) -> Iterator[int]:
        """Put these dead letters back as :meth:`retry` does, up to ``size`` of one queue
        per ``send_many`` (one round trip where the adapter batches); yield how many each
        batch put back, once the broker has them and their rows are gone.

        Counting what was yielded is exact when a send fails: that batch's rows stay in
        the failed store (some of it may have reached the broker: at least once, as
        ever) and the error is raised. Unknown ids are skipped.
        """
        batch: _Entries = []
        for failed_id in failed_ids:
            entry = self._broker.jobs.get_failed(failed_id)
            if entry is None:
                continue
            if batch and (len(batch) >= size or entry.queue != batch[0].queue):
                yield self._send_back(batch)
                batch = []
            batch.append(entry)
        if batch:
            yield self._send_back(batch)

    def _send_back(self, batch: _Entries) -> int:
        queue = batch[0].queue
        outgoing: list[Outgoing] = []
        updates: list[JobUpdate] = []
        for entry in batch:
            try:
                message = decode(envelope_of(self._broker.signer, queue, entry.body))
            except MalformedMessage:
                outgoing.append(Outgoing(entry.body, entry.headers))
                continue
            meta = message.metadata
            meta.attempts = 0
            storeid.adopt(meta, self._broker.jobs)
            if meta.record:
                updates.append(JobUpdate(message.id, queue, meta.name or None, QUEUED,
                                         created_at=meta.created_at))  # fmt: skip
            # As Broker.resend: no dedup key (the original holds it), no lining up again.
            prepared = self._broker.prepare(queue, message.payload, meta, None, meta.priority,
                                            fresh=False)  # fmt: skip
            outgoing.append(prepared.outgoing)
        if updates:
            self._broker.jobs.write_jobs(updates)
        self._broker.send(queue, outgoing, None)
        for entry in batch:
            self._broker.jobs.remove_failed(entry.id)
        return len(batch)

    def purge(self, queue: str | None = None) -> int:
        return self._broker.jobs.purge_failed(queue)
