"""The failed store (dead letters) as a connection shows it: list, inspect, retry, purge.

The rows live in the job store; retrying puts a message back on its queue through the
connection, with its attempts reset.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..jobstore.base import FailedMessage
from ..jobstore.records import QUEUED, JobUpdate
from ..spi.errors import MalformedMessage
from . import storeid
from .envelope import decode
from .signing import envelope_of

if TYPE_CHECKING:
    from .broker import Broker


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
        entry = self._broker.jobs.get_failed(failed_id)
        if entry is None:
            return False
        try:
            message = decode(envelope_of(self._broker.signer, entry.queue, entry.body))
        except MalformedMessage:
            self._broker.transport.send(entry.queue, entry.body, entry.headers)
        else:
            message.metadata.attempts = 0
            storeid.adopt(message.metadata, self._broker.jobs)
            if message.metadata.record:
                update = JobUpdate(message.id, entry.queue, message.metadata.name or None,
                                   QUEUED, created_at=message.metadata.created_at)  # fmt: skip
                self._broker.jobs.write_jobs([update])
            self._broker.resend(entry.queue, message)
        self._broker.jobs.remove_failed(failed_id)
        return True

    def purge(self, queue: str | None = None) -> int:
        return self._broker.jobs.purge_failed(queue)
