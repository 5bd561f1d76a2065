"""Fan-out subscriptions: topic nodes whose notifications fill local buffers.

Several subscriptions of this transport may share one topic node (one server-side
subscription per node). A subscription's buffer is filled on the loop thread and read
directly by the consumer thread, so no loop round trip per message; past its bound it drops
notifications and logs how many (XMPP has no flow control for them).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field

from .nodes import Nodes
from .settings import XMPPSettings
from .stanzas import Item

log = logging.getLogger("queuekit.adapters.xmpp")


@dataclass(slots=True)
class Subscription:
    """A fan-out subscription's buffer: filled on the loop thread, read directly by the
    consumer thread (no loop round trip per message), hence a thread condition."""

    name: str
    node: str
    limit: int
    buffer: deque[Item] = field(default_factory=deque)
    dropped: int = 0
    closed: bool = False
    ready: threading.Condition = field(default_factory=threading.Condition)

    def take(self, timeout: float) -> Item | None:
        with self.ready:
            if not self.buffer and not self.closed:
                self.ready.wait_for(lambda: self.buffer or self.closed, timeout)
            return self.buffer.popleft() if self.buffer else None

    def end(self) -> None:
        with self.ready:
            self.closed = True
            self.ready.notify_all()

    def offer(self, item: Item) -> None:
        if len(self.buffer) >= self.limit:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "xmpp subscription %s: local buffer full (%d), %d notification(s) dropped",
                    self.name,
                    self.limit,
                    self.dropped,
                )
            return
        with self.ready:
            self.buffer.append(item)
            self.ready.notify()


class Fanout:
    """This transport's subscriptions, by name and by node. Runs on the loop thread;
    ``subscriptions`` is read from the consumer thread (a dict lookup)."""

    def __init__(self, nodes: Nodes, settings: XMPPSettings, prefetch: int) -> None:
        self.nodes = nodes
        self.settings = settings
        self.prefetch = prefetch
        self.subscriptions: dict[str, Subscription] = {}
        self.by_node: dict[str, list[Subscription]] = {}

    async def subscribe(self, name: str, node: str) -> None:
        await self.nodes.ensure(node, persist=self.settings.persist_topics)
        limit = max(self.prefetch, self.settings.fanout_buffer)
        if node not in self.by_node:
            await self.nodes.subscribe(node)
            self.by_node.setdefault(node, [])
        sub = Subscription(name=name, node=node, limit=limit)
        self.by_node[node].append(sub)
        self.subscriptions[name] = sub

    async def unsubscribe(self, name: str) -> None:
        sub = self.subscriptions.pop(name, None)
        if sub is None:
            return
        sub.end()
        subs = self.by_node.get(sub.node, [])
        if sub in subs:
            subs.remove(sub)
        if not subs:
            self.by_node.pop(sub.node, None)
            if self.nodes.connection.connected:
                await self.nodes.unsubscribe(sub.node)

    def end_all(self) -> None:
        """Closing: every ``take`` waiting in another thread returns."""
        for sub in self.subscriptions.values():
            sub.end()
        self.subscriptions.clear()
        self.by_node.clear()
