"""The transactional outbox: publish in the application's transaction, send after commit.

::

    with outbox(session):                       # SQLAlchemy Session/Connection, or sqlite3
        session.add(order)
        queue.publish({"order": order.id})      # a row in queuekit_outbox, in this transaction

Inside the block (this thread or task: a context variable), ``Queue.publish`` and
``publish_many`` prepare the message as usual (envelope, id, checks) and, instead of
sending it, insert it into the outbox table of the database ``session`` writes to, in the
caller's open transaction. Commit, and the message will be sent; roll back, and it never
existed. The block neither begins nor commits: the application does, as it always does.

A **relay** sends committed rows to their queues (:func:`relay`): every worker started with
an outbox URL (``worker run --outbox URL``, or ``QUEUEKIT_OUTBOX``) relays its own queue's
rows with its other periodic work (every half second), and ``worker relay --db URL`` relays
every queue's. Per queue, a relay first takes the queue's lease in the outbox database
(``LEASE`` seconds, renewed each batch), then reads rows in id order, sends them through the
:class:`~.broker.Broker` (delays, keys, groups and records as for any publish), deletes
them, and lets the lease go. One relay at a time sends a queue, so its messages go out in
the order they were written; two transactions committing at the same moment on one queue
go in either order.

At least once: a relay that dies after sending a batch and before deleting it leaves the
rows and its lease; when the lease ends another relay sends them again, with their same
message ids, which the consumer's inbox (:mod:`.inbox`) recognises and drops.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..jobstore.outbox import OutboxRow, OutboxTable, OutboxWriter, outbox_writer
from ..spi.errors import MalformedMessage
from ..spi.transport import Outgoing
from . import keys
from .broker import Broker, Prepared, future
from .envelope import decode
from .signing import envelope_of

log = logging.getLogger("queuekit")

#: Seconds a relay's lease on a queue lasts without renewal (a dead relay's rows wait this).
LEASE = 30.0
BATCH = 500

_active: contextvars.ContextVar[OutboxWriter | None] = contextvars.ContextVar(
    "queuekit_outbox", default=None
)


@contextmanager
def outbox(transaction: object) -> Iterator[OutboxWriter]:
    """Publishes inside the block go into ``transaction``'s outbox table (module docstring)."""
    box = outbox_writer(transaction)
    token = _active.set(box)
    try:
        yield box
    finally:
        _active.reset(token)


def active_outbox() -> OutboxWriter | None:
    """The outbox this thread or task publishes into, if it is inside an ``outbox()`` block."""
    return _active.get()


def write(box: OutboxWriter, queue: str, prepared: Prepared) -> None:
    box.add(queue, prepared.message.id, prepared.outgoing, prepared.due)


def holder_id() -> str:
    """Who holds a lease: host, process and a random part (a restarted pid differs)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


def relay(
    table: OutboxTable,
    broker_for: Callable[[str], Broker],
    holder: str,
    *,
    queue: str | None = None,
    batch: int = BATCH,
    lease: float = LEASE,
) -> int:
    """Send the committed rows of ``queue`` (else of every queue) to
    ``broker_for(queue)``; return how many were sent. One cheap read when there are none."""
    sent = 0
    for name in table.queues(queue):
        if not table.lease(name, holder, lease):
            continue  # another relay is sending this queue
        try:
            while True:
                rows = table.pending(name, batch)
                if rows:
                    broker = broker_for(name)
                    good, bad = _prepared(broker, name, rows)
                    broker.send_prepared(name, good)
                    for row, reason in bad:  # not an envelope: kept with its reason
                        broker.jobs.add_failed(name, row.body, reason, message_id=row.message_id,
                                               headers=row.headers)  # fmt: skip
                    table.remove([row.id for row in rows])
                    sent += len(rows)
                if len(rows) < batch or not table.lease(name, holder, lease):
                    break
        finally:
            table.release(name, holder)
    if sent:
        log.info("relayed %d message(s) from the outbox", sent)
    return sent


def _prepared(
    broker: Broker, queue: str, rows: list[OutboxRow]
) -> tuple[list[Prepared], list[tuple[OutboxRow, str]]]:
    """Rows as ``Broker.send_prepared`` takes them, with this broker's send options; and
    the rows that are no envelope (written by something else) or, with signing keys, not
    signed for ``queue`` by one of them, with the reason, for the failed store: such a row
    neither blocks its queue nor is lost."""
    batch: list[Prepared] = []
    bad: list[tuple[OutboxRow, str]] = []
    for row in rows:
        try:
            message = decode(envelope_of(broker.signer, queue, row.body))
        except MalformedMessage as exc:
            bad.append((row, f"outbox row {row.id}: {exc.reason}"))
            continue
        meta = message.metadata
        due = future(row.due)
        options = broker.send_options(due, row.priority, meta.key)
        keyed = keys.held_in_store(meta, broker.transport.capabilities)
        batch.append(Prepared(message, Outgoing(row.body, row.headers, options), due, keyed))
    return batch, bad
