"""Consuming queue nodes: list, buffer up to ``prefetch``, hand out in order.

The first ``next_item`` on a queue subscribes to its node and lists what is already there,
oldest first; new items then arrive as notifications (``QueueConsumer.offer``). No item is
handed out before the taken-journal records it. ``take_ready`` is the consumer thread's
fast path; when it has emptied half the buffer, a mark-ahead on the loop tops the buffer up
and records the new items in the background (docs/xmpp.md, Performance).
"""

from __future__ import annotations

import asyncio
import logging
import time

from slixmpp.exceptions import IqError

from .connection import Connection
from .journal import TakenJournal
from .nodes import Nodes
from .queue_consumer import QueueConsumer
from .settings import XMPPSettings
from .stanzas import PUBSUB, Item, iq_error, parse_items

log = logging.getLogger("queuekit.adapters.xmpp")

#: How many listed items a consumer keeps in memory beyond its prefetch (the rest as ids).
KEEP_LISTED = 4096


class QueueReader:
    """The queues this transport consumes, by name. Runs on the loop thread, except
    ``take_ready`` (see there)."""

    def __init__(
        self,
        connection: Connection,
        nodes: Nodes,
        journal: TakenJournal,
        settings: XMPPSettings,
        prefetch: int,
    ) -> None:
        self.connection = connection
        self.nodes = nodes
        self.journal = journal
        self.settings = settings
        self.prefetch = prefetch
        self.consumers: dict[str, QueueConsumer] = {}
        self.queue_of_node: dict[str, str] = {}
        self._ahead: set[asyncio.Task[None]] = set()

    async def next_item(
        self, queue: str, node: str, timeout: float
    ) -> tuple[QueueConsumer, Item] | None:
        deadline = time.monotonic() + timeout
        consumer = self.consumers.get(queue)
        if consumer is None:
            journal = self.settings.journal_node(queue)
            consumer = QueueConsumer(node=node, journal=journal, limit=self.prefetch)
            self.consumers[queue] = consumer
            self.queue_of_node[node] = queue
        while True:
            await self.connection.ensure()
            if not consumer.ready:
                await self.nodes.ensure(node, persist=True)
                await self.nodes.ensure(consumer.journal, persist=True)
                await self.nodes.subscribe(node)
                consumer.ready = consumer.stale = True
            if consumer.buffer:
                await self.journal.mark(consumer)
                if not consumer.buffer:
                    continue
                item = consumer.buffer.popleft()
                consumer.delivered.add(item.id)
                return consumer, item
            if consumer.backlog:
                await self._refill(consumer)
                continue
            if consumer.stale:
                await self._relist(consumer)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            consumer.wakeup.clear()
            try:
                await asyncio.wait_for(consumer.wakeup.wait(), remaining)
            except TimeoutError:
                return None

    def consumer_of(self, node: str) -> QueueConsumer | None:
        """The ready consumer of a queue node, if this transport consumes it."""
        queue = self.queue_of_node.get(node)
        consumer = self.consumers.get(queue) if queue is not None else None
        return consumer if consumer is not None and consumer.ready else None

    def forget(self, queue: str) -> None:
        consumer = self.consumers.pop(queue, None)
        if consumer is not None:
            self.queue_of_node.pop(consumer.node, None)

    async def stop_marking_ahead(self) -> None:
        ahead = list(self._ahead)
        for task in ahead:
            task.cancel()
        await asyncio.gather(*ahead, return_exceptions=True)

    async def _relist(self, consumer: QueueConsumer) -> None:
        """Fetch the node's items (oldest first); keep ``limit`` bodies, the rest as ids."""
        consumer.listing, consumer.stale = True, False
        connection = self.connection
        try:
            reply = await connection.iq(
                connection.pubsub.get_items(self.settings.pubsub, consumer.node)
            )
            items = list(parse_items(reply.xml.iter(f"{{{PUBSUB}}}item")))
            present = {item.id for item in items}
            entries = await self.journal.entries(consumer.journal)
            settled = entries.settled_among(present)  # acked, but stuck on the node
            items = [item for item in items if item.id not in settled]
            counts = await self.journal.taken_counts(consumer.journal, present, entries)
            consumer.taken_before = counts
            for item in items:
                item.taken = counts.get(item.id, 0)
                self._take(consumer, item)
        except IqError as exc:
            consumer.stale = True
            raise iq_error(exc, f"list node {consumer.node}") from None
        except BaseException:
            consumer.stale = True
            raise
        finally:
            consumer.listing = False
        pending, consumer.pending = consumer.pending, []
        for item in pending:
            consumer.offer(item)

    @staticmethod
    def _take(consumer: QueueConsumer, item: Item) -> None:
        if item.id in consumer.known:
            return
        consumer.known.add(item.id)
        if len(consumer.buffer) < consumer.limit and not consumer.backlog:
            consumer.buffer.append(item)
        elif len(consumer.backlog) < KEEP_LISTED:
            consumer.backlog.append(item)
        else:
            consumer.backlog.append(item.id)

    @staticmethod
    def _top_up(consumer: QueueConsumer) -> None:
        """Move listed items kept in memory from the backlog to the buffer (up to limit)."""
        backlog = consumer.backlog
        while backlog and isinstance(backlog[0], Item) and len(consumer.buffer) < consumer.limit:
            item = backlog.popleft()
            assert isinstance(item, Item)
            consumer.buffer.append(item)

    async def _refill(self, consumer: QueueConsumer) -> None:
        backlog = consumer.backlog
        self._top_up(consumer)
        if consumer.buffer or not backlog:
            return
        room = max(1, consumer.limit - len(consumer.buffer))
        ids = [str(backlog.popleft()) for _ in range(min(room, len(backlog)))]
        connection = self.connection
        try:
            reply = await connection.iq(
                connection.pubsub.get_items(self.settings.pubsub, consumer.node, item_ids=ids)
            )
        except BaseException:
            consumer.backlog.extendleft(reversed(ids))
            raise
        found = {item.id: item for item in parse_items(reply.xml.iter(f"{{{PUBSUB}}}item"))}
        for item_id in ids:
            if item_id in found:
                found[item_id].taken = consumer.taken_before.get(item_id, 0)
                consumer.buffer.append(found[item_id])
            else:  # settled elsewhere meanwhile
                consumer.known.discard(item_id)

    # The consumer thread's fast path (no loop round trip). It touches only what that
    # thread owns while the loop cannot be inside ``next_item`` (the same thread would be
    # waiting on it): the left end of ``buffer`` and ``delivered``.

    def take_ready(
        self, queue: str, loop: asyncio.AbstractEventLoop
    ) -> tuple[QueueConsumer, Item] | None:
        """Pop a buffered item that is already recorded as taken, from the consumer thread."""
        consumer = self.consumers.get(queue)
        connection = self.connection
        if consumer is None or not consumer.ready or not connection.connected or connection.closing:
            return None
        try:
            item = consumer.buffer[0]
            if not item.marked:
                return None
            consumer.buffer.popleft()  # only this thread takes from the left
        except IndexError:  # emptied by a purge notification meanwhile
            return None
        consumer.delivered.add(item.id)
        if (
            not consumer.ahead
            and len(consumer.buffer) * 2 <= consumer.limit
            and consumer.backlog
            and isinstance(consumer.backlog[0], Item)
        ):
            consumer.ahead = True  # cleared on the loop when the mark-ahead is done
            loop.call_soon_threadsafe(self._start_mark_ahead, consumer)
        return consumer, item

    def _start_mark_ahead(self, consumer: QueueConsumer) -> None:
        task = asyncio.ensure_future(self._mark_ahead(consumer))
        self._ahead.add(task)
        task.add_done_callback(self._ahead.discard)

    async def _mark_ahead(self, consumer: QueueConsumer) -> None:
        """Half the buffer is gone: top it up from the listed backlog and record the new
        items as taken now, in the background, so the consumer thread finds them marked
        instead of waiting for the journal write behind its own queued retracts. At most
        ``limit`` items are buffered (marked or not), as before."""
        try:
            if self.connection.connected and not self.connection.closing and consumer.ready:
                self._top_up(consumer)
                await self.journal.mark(consumer)
        except Exception as exc:  # next_item marks (and reports) them again
            log.debug("xmpp: mark-ahead on %s failed: %s", consumer.node, exc)
        finally:
            consumer.ahead = False
