"""Settling delivered queue items: ``ack`` as a pipelined retract, ``nack`` with requeue.

The retract goes out at once and its answer is awaited in the background (like an AMQP
basic.ack, which the broker never answers), keeping at most ``inflight`` outstanding;
``close``, ``depth`` and ``purge`` wait for them (:meth:`Acks.flush`). A confirmed retract
settles the item's taken-journal entry. A queue item's retract answered item-not-found is
checked in a task (outstanding until done): an item the node keeps anyway (ejabberd, see
``retracts``) is recorded as settled in the journal. ``ack_nowait`` is the consumer
thread's fast path.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from slixmpp.exceptions import IqError

from ...spi.errors import QueuekitError
from .connection import Connection
from .journal import TakenJournal
from .queue_consumer import QueueConsumer
from .retracts import stuck
from .settings import XMPPSettings
from .stanzas import Item

log = logging.getLogger("queuekit.adapters.xmpp")


class Acks:
    """Runs on the loop thread, except ``ack_nowait`` (see there)."""

    def __init__(
        self, connection: Connection, journal: TakenJournal, settings: XMPPSettings
    ) -> None:
        self.connection = connection
        self.journal = journal
        self.settings = settings
        self.outstanding: set[asyncio.Future[Any]] = set()  # sent retracts, not yet answered

    async def retract(self, consumer: QueueConsumer, item: Item) -> None:
        """The ack: retract a delivered item from its node, pipelined.

        Until the server confirms, the item stays known here, so a re-listing cannot
        deliver it again. If the retract is lost with the connection, the item is delivered
        again (at least once). Settling twice is a no-op.
        """
        if item.id not in consumer.delivered:
            return
        await self.connection.ensure()
        consumer.delivered.discard(item.id)
        self.start_retract(consumer, item.id)
        if len(self.outstanding) >= self.settings.inflight:
            await asyncio.wait(set(self.outstanding), return_when=asyncio.FIRST_COMPLETED)

    def ack_nowait(
        self, consumer: QueueConsumer, item: Item, loop: asyncio.AbstractEventLoop
    ) -> bool:
        """Schedule the retract from the consumer thread; False: take the slow path.

        It touches only what that thread owns while the loop cannot be inside ``next_item``
        (the same thread would be waiting on it): ``delivered``.
        """
        connection = self.connection
        if (
            item.id not in consumer.delivered
            or not connection.connected
            or connection.closing
            or len(self.outstanding) >= self.settings.inflight // 2
        ):
            return False
        consumer.delivered.discard(item.id)
        loop.call_soon_threadsafe(self.start_retract, consumer, item.id)
        return True

    def start_retract(self, consumer: QueueConsumer, item_id: str) -> None:
        """Send the retract now (on the loop) and confirm it in the background."""
        if self.connection.client is None or not self.connection.connected:
            consumer.known.discard(item_id)  # still on the node: the re-listing finds it
            return
        self._send_retract(consumer.node, item_id, consumer)

    def _send_retract(self, node: str, item_id: str, consumer: QueueConsumer | None) -> None:
        """Send a retract and confirm it from a done-callback (no task per ack)."""
        future = self.connection.pubsub.retract(
            self.settings.pubsub, node, item_id, timeout=self.settings.timeout
        )
        outstanding, iqs = self.outstanding, self.connection.iqs
        outstanding.add(future)
        iqs.add(future)

        def settled(_: object = None) -> None:
            if consumer is not None:  # until now a notification of it is not a new item
                consumer.known.discard(item_id)
                entry = self.journal.settled(consumer, item_id)
                if entry is not None:
                    self._send_retract(consumer.journal, entry, None)

        def confirmed(done: asyncio.Future[Any]) -> None:
            outstanding.discard(done)
            iqs.discard(done)
            exc = None if done.cancelled() else done.exception()
            if isinstance(exc, IqError) and exc.condition == "item-not-found":
                if consumer is not None and self.connection.connected:  # gone, or stuck
                    task = asyncio.ensure_future(self._settle_stuck(consumer, item_id))
                    outstanding.add(task)
                    task.add_done_callback(outstanding.discard)
                    task.add_done_callback(settled)
                    return
            elif isinstance(exc, IqError):
                log.warning("xmpp: retract on %s failed: %s", node, exc.condition)
            elif exc is not None or done.cancelled():
                log.info("xmpp: retract on %s lost (%s); it will be redelivered", node, exc)
            settled()

        future.add_done_callback(confirmed)

    async def _settle_stuck(self, consumer: QueueConsumer, item_id: str) -> None:
        """The retract found no item: record it as settled if the node keeps it anyway."""
        node = consumer.node
        try:
            if await stuck(self.connection, self.settings, node, item_id):
                await self.journal.mark_settled(consumer.journal, [item_id])
                log.info(
                    "xmpp: item %s of %s cannot be retracted; recorded as settled", item_id, node
                )
        except (QueuekitError, IqError) as exc:
            log.warning(
                "xmpp: item %s of %s stays (%s); it will be redelivered", item_id, node, exc
            )

    async def flush(self) -> None:
        """Wait until every pipelined ack is answered."""
        deadline = asyncio.get_running_loop().time() + self.settings.timeout
        while self.outstanding:  # a retract's check of a stuck item joins it when answered
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            await asyncio.wait(set(self.outstanding), timeout=left)

    @staticmethod
    def requeue(consumer: QueueConsumer, item: Item) -> None:
        """Put a delivered item back in front of this consumer's buffer (it never left)."""
        if item.id in consumer.delivered:
            consumer.delivered.discard(item.id)
            item.requeued += 1
            consumer.buffer.appendleft(item)
            consumer.wakeup.set()
