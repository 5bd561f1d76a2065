"""The asyncio side of the XMPP transport: its parts, wired together, and their life cycle.

Everything here runs on the transport's loop thread, so no locks are needed. A queue is a
persisted node: publishing adds an item (``Publisher``), consuming lists and subscribes
(``QueueReader``), recording what was taken on the queue's journal node (``TakenJournal``),
and ``ack`` retracts (``Acks``). A topic is a node whose notifications feed local
subscriptions (``Fanout``). The session routes the server's notifications to those parts,
restores subscriptions after a reconnect, and runs and cancels the blocking API's
operations.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from .acks import Acks
from .connection import Connection
from .consuming import QueueReader
from .fanout import Fanout
from .inspection import Inspection
from .journal import TakenJournal
from .nodes import Nodes
from .publishing import Publisher
from .settings import XMPPSettings
from .stanzas import EVENT, Item, parse_items

T = TypeVar("T")


class Session:
    """Owns one connection and everything that uses it. Every method runs on the loop
    thread; the parts' fast paths for the consumer thread say so themselves."""

    def __init__(self, settings: XMPPSettings, prefetch: int) -> None:
        self.settings = settings
        prefetch = max(1, prefetch)
        self.connection = Connection(
            settings,
            restore=self._restore,
            notifications={
                "pubsub_publish": self._on_publish,
                "pubsub_purge": lambda m: self._on_reset(m, "purge"),
                "pubsub_delete": lambda m: self._on_reset(m, "delete"),
            },
        )
        self.nodes = Nodes(self.connection, settings)
        self.publisher = Publisher(self.connection, self.nodes, settings)
        self.journal = TakenJournal(self.connection, self.nodes, settings)
        self.acks = Acks(self.connection, self.journal, settings)
        self.reader = QueueReader(self.connection, self.nodes, self.journal, settings, prefetch)
        self.consumers = self.reader.consumers  # by queue name
        self.inspection = Inspection(
            connection=self.connection,
            nodes=self.nodes,
            journal=self.journal,
            acks=self.acks,
            reader=self.reader,
            settings=settings,
        )
        self.fanout = Fanout(self.nodes, settings, prefetch)
        self._operations: set[asyncio.Task[Any]] = set()

    async def run(self, operation: Awaitable[T]) -> T:
        """Run one operation of the blocking API, so ``close`` can cancel it."""
        task = asyncio.current_task()
        assert task is not None
        if self.connection.closing:  # the transport maps this to its closed error
            raise asyncio.CancelledError
        self._operations.add(task)
        try:
            return await operation
        finally:
            self._operations.discard(task)

    async def close(self) -> None:
        connection = self.connection
        connection.closing = True
        running = [task for task in self._operations if not task.done()]
        for task in running:
            task.cancel()  # a receive blocked in another thread returns None
        await asyncio.gather(*running, return_exceptions=True)
        await self.reader.stop_marking_ahead()
        if connection.connected:
            await self.acks.flush()
        if connection.connected:
            waits = [self.nodes.unsubscribe(c.node) for c in self.consumers.values() if c.ready]
            waits += [self.nodes.unsubscribe(node) for node in self.fanout.by_node]
            if waits:
                await asyncio.wait_for(
                    asyncio.gather(*waits, return_exceptions=True), self.settings.timeout
                )
        self.consumers.clear()
        self.fanout.end_all()
        await connection.drop_client()

    async def _restore(self) -> None:
        """After (re)connecting: subscribe again to what this transport listens to."""
        for consumer in self.consumers.values():
            if consumer.ready:
                await self.nodes.subscribe(consumer.node)
                consumer.stale = True
        for node in list(self.fanout.by_node):
            await self.nodes.subscribe(node)

    # -- notifications ----------------------------------------------------------------------

    def _on_reset(self, msg: Any, kind: str) -> None:
        """Another connection purged or deleted a queue node we consume.

        Prosody sends this before it answers any later request of ours, so the journal
        write (a round trip before items are handed out) always sees it in time.
        """
        if msg["from"].bare != self.settings.pubsub:
            return
        event = msg.xml.find(f"{EVENT}event/{EVENT}{kind}")
        node = "" if event is None else event.get("node", "")
        consumer = self.reader.consumer_of(node)
        if consumer is None:
            return
        consumer.reset()
        if kind == "delete":
            self.nodes.states.pop(node, None)
            consumer.ready = False  # create and subscribe again on the next receive

    def _on_publish(self, msg: Any) -> None:
        if msg["from"].bare != self.settings.pubsub:
            return
        event = msg.xml.find(f"{EVENT}event/{EVENT}items")
        if event is None:
            return
        node = event.get("node", "")
        subs = self.fanout.by_node.get(node)
        consumer = None if subs else self.reader.consumer_of(node)
        if not subs and consumer is None:
            return
        for item in parse_items(event.iterfind(f"{EVENT}item")):
            if consumer is not None:
                consumer.offer(item)
            for sub in subs or ():
                sub.offer(Item(item.id, item.body, dict(item.headers)))
