"""Publishing items: many IQs in flight, and never past what a queue node keeps.

``publish`` keeps up to ``inflight`` publish IQs outstanding and returns when the server
answered every one. Before publishing to a queue node it checks the node's room: a server
silently drops the oldest items of a full node, so a publish that would overflow it is
refused with ``QueueFull`` instead (docs/xmpp.md, "full nodes"). The first queue publish of
a connection goes alone, to learn which publish-options the server checks (``Nodes``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from slixmpp.exceptions import IqError, IqTimeout

from ...spi.errors import ConnectionLost, QueueFull
from .connection import Connection
from .nodes import Nodes, NodeState
from .settings import XMPPSettings, encode_payload
from .stanzas import iq_error, new_id

#: Re-count a queue node at least this often while publishing to it (other publishers).
RECOUNT_SECONDS = 5.0


class Publisher:
    """Runs on the loop thread."""

    def __init__(self, connection: Connection, nodes: Nodes, settings: XMPPSettings) -> None:
        self.connection = connection
        self.nodes = nodes
        self.settings = settings

    async def publish(
        self, node: str, messages: Sequence[tuple[bytes, Any]], *, queue: bool
    ) -> None:
        """Publish every message, keeping up to ``inflight`` IQs outstanding."""
        state = await self.nodes.ensure(node, persist=queue or self.settings.persist_topics)
        if queue and state.cap is not None:
            await self._check_room(node, state, len(messages))
        first = 0
        if queue and not self.nodes.preconditions_known:
            body, headers = messages[0]
            await self.nodes.publish_one(node, new_id(), encode_payload(body, headers))
            first = 1
        options = self.nodes.publish_options(node) if queue else None
        pubsub, service = self.connection.pubsub, self.settings.pubsub
        outstanding = self.connection.iqs
        window: set[asyncio.Future[Any]] = set()
        try:
            for body, headers in messages[first:]:
                if len(window) >= self.settings.inflight:
                    done, window = await asyncio.wait(window, return_when=asyncio.FIRST_COMPLETED)
                    outstanding.difference_update(done)
                    _raise_first(done, node)
                future = pubsub.publish(
                    service,
                    node,
                    id=new_id(),
                    payload=encode_payload(body, headers),
                    options=options,
                    timeout=self.settings.timeout,
                )
                window.add(future)
                outstanding.add(future)
            if window:
                done, _ = await asyncio.wait(window)
                _raise_first(done, node)
        finally:
            for future in window:
                outstanding.discard(future)
                if not future.done():
                    future.cancel()
        state.sent_since += len(messages)

    async def _check_room(self, node: str, state: NodeState, count: int) -> None:
        """Refuse to publish past the node's cap: the server would drop the oldest items.

        The depth is re-counted when this publisher's estimate passes half the cap and at
        least every RECOUNT_SECONDS (other publishers add items too); where the server does
        not check max_items on publish, the node's config is re-read then as well.
        """
        assert state.cap is not None
        now = time.monotonic()
        estimate = state.depth + state.sent_since + count
        if estimate * 2 > state.cap or now - state.counted_at > RECOUNT_SECONDS:
            await self.nodes.check_max_items(node, state)
            state.depth = len(await self.nodes.item_ids(node))
            state.sent_since, state.counted_at = 0, now
        if state.depth + state.sent_since + count > state.cap:
            raise QueueFull(
                f"xmpp: node {node} holds {state.depth} of at most {state.cap} items; "
                f"publishing {count} more would make the server drop the oldest"
            )


def _raise_first(done: set[asyncio.Future[Any]], node: str) -> None:
    for future in done:
        exc = future.exception()
        if exc is None:
            continue
        if isinstance(exc, IqError):
            raise iq_error(exc, f"publish to {node}")
        if isinstance(exc, IqTimeout):
            raise ConnectionLost("xmpp: the server did not answer a publish in time")
        raise exc
