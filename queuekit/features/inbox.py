"""The inbox: a consumer drops a message it has already processed, by its message id.

At-least-once delivery sends a message twice now and then: a broker redelivers work whose
worker died, an outbox relay killed between sending and deleting sends its batch again
(:mod:`.outbox`). Each copy carries the same message id, so a consumer whose work must not
happen twice asks the job store first::

    inbox = conn.inbox("billing")
    def work(message):
        with inbox.once(message) as first:
            if first:
                charge(message.payload)

``once`` claims the id for the consumer (one transaction): the first claimer runs the
block and the id is marked processed when it ends without an exception; a copy that comes
later gets ``first == False`` and is simply acked. If the block raises, the claim is
forgotten, so the message's retry runs it again. A copy that arrives while another worker
is inside the block raises :class:`RetryLater`: it comes back after that worker finishes.
A claim whose worker died (SIGKILL) blocks the id for ``lease`` seconds, then the next copy
runs. The block and the mark are not one transaction: a crash between the end of the work
and the mark lets one duplicate through (keep the work itself idempotent where that costs
money). Processed ids are kept until :meth:`Inbox.prune`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..jobstore.base import INBOX_DONE, INBOX_NEW, JobStore
from ..spi.errors import RetryLater
from .envelope import Message

#: Seconds a claim whose worker died keeps a message id from running again.
INBOX_LEASE = 300.0


class Inbox:
    """The processed message ids of one ``consumer`` (a name of the caller's choosing: a
    queue, a handler), kept in ``jobs``. Thread-safe as the job store is."""

    def __init__(self, jobs: JobStore, consumer: str, *, lease: float = INBOX_LEASE) -> None:
        self.jobs, self.consumer, self.lease = jobs, consumer, lease

    @contextmanager
    def once(self, message: Message | str) -> Iterator[bool]:
        """``True`` for the block that should do the work of ``message`` (or a message
        id); ``False`` for a duplicate of a processed one. See the module docstring."""
        message_id = message if isinstance(message, str) else message.id
        state = self.jobs.inbox_claim(self.consumer, message_id, lease=self.lease)
        if state == INBOX_DONE:
            yield False
            return
        if state != INBOX_NEW:
            raise RetryLater(5.0, f"message {message_id} is being processed by another worker")
        try:
            yield True
        except BaseException:
            self.jobs.inbox_release(self.consumer, message_id)
            raise
        self.jobs.inbox_done(self.consumer, message_id)

    def prune(self, older_than: float) -> int:
        """Forget ids processed more than ``older_than`` seconds ago (every consumer's)."""
        return self.jobs.inbox_prune(older_than)
