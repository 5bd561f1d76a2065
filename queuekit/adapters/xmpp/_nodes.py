"""Pub/sub nodes: created and configured the way queuekit relies on, and subscribed to.

A queue node must persist its items and keep ``max_items`` of them; an existing node is
reconfigured to that, and its cap (how many items the server keeps before it drops the
oldest) is learnt once per connection so publishing can refuse to overflow it. Subscribing
is per full JID and done here for queue consumers and fan-out alike.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from slixmpp.exceptions import IqError

from ...spi.errors import TransportError
from ._connection import Connection
from ._settings import XMPPSettings
from ._stanzas import NODE_CONFIG, PUBSUB, form, iq_error, read_config


@dataclass(slots=True)
class NodeState:
    cap: int | None  # max items the node keeps (None: not persisted)
    depth: int = 0
    sent_since: int = 0
    counted_at: float = 0.0


class Nodes:
    """The nodes this session has made sure of, by name. Runs on the loop thread."""

    def __init__(self, connection: Connection, settings: XMPPSettings) -> None:
        self.connection = connection
        self.settings = settings
        self.states: dict[str, NodeState] = {}

    async def ensure(self, node: str, *, persist: bool) -> NodeState:
        """Create ``node`` if needed with the config queuekit relies on; learn its cap."""
        await self.connection.ensure()  # every operation starts here: reconnect after a loss
        state = self.states.get(node)
        if state is not None:
            return state
        s = self.settings
        config = {"pubsub#persist_items": persist, "pubsub#access_model": "open"}
        if persist:
            config["pubsub#max_items"] = s.max_items
        try:
            await self.connection.iq(
                self.connection.pubsub.create_node(s.pubsub, node, config=form(NODE_CONFIG, config))
            )
        except IqError as exc:
            if exc.condition != "conflict":
                raise iq_error(exc, f"create node {node}") from None
        cap = None
        if persist:
            cap = await self._configure_queue_node(node)
        state = self.states[node] = NodeState(cap=cap)
        return state

    async def _configure_queue_node(self, node: str) -> int:
        """Make sure an existing node persists and keeps max_items; return the number."""
        s, connection = self.settings, self.connection
        try:
            reply = await connection.iq(connection.pubsub.get_node_config(s.pubsub, node))
        except IqError as exc:
            raise iq_error(exc, f"read the config of node {node}") from None
        persist, max_items, range_max = read_config(reply.xml)
        if not persist or max_items != s.max_items:
            config = {"pubsub#persist_items": True, "pubsub#max_items": s.max_items}
            try:
                await connection.iq(
                    connection.pubsub.set_node_config(s.pubsub, node, form(NODE_CONFIG, config))
                )
            except IqError as exc:
                raise iq_error(exc, f"configure node {node} to persist items") from None
        if s.max_items != "max":
            return int(s.max_items)
        if range_max is None:
            raise TransportError(
                f"xmpp: {s.pubsub} does not say how many items node {node} keeps; "
                "set max_items=N in the URL to the server's limit"
            )
        return range_max

    async def delete(self, node: str) -> None:
        await self.connection.ensure()
        self.states.pop(node, None)
        try:
            await self.connection.iq(self.connection.pubsub.delete_node(self.settings.pubsub, node))
        except IqError as exc:
            if exc.condition != "item-not-found":
                raise iq_error(exc, f"delete node {node}") from None

    async def item_ids(self, node: str) -> list[str]:
        connection = self.connection
        reply = await connection.iq(connection.pubsub.get_item_ids(self.settings.pubsub, node))
        return [
            item.get("name", "")
            for item in reply.xml.iter("{http://jabber.org/protocol/disco#items}item")
        ]

    async def subscribe(self, node: str) -> None:
        """Subscribe this full JID; the IQ result means the subscription is active."""
        connection = self.connection
        try:
            reply = await connection.iq(
                connection.pubsub.subscribe(self.settings.pubsub, node, bare=False)
            )
        except IqError as exc:
            raise iq_error(exc, f"subscribe to node {node}") from None
        state = reply.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}subscription")
        if state is not None and state.get("subscription", "subscribed") != "subscribed":
            raise TransportError(
                f"xmpp: subscription to {node} is {state.get('subscription')}, not active"
            )

    async def unsubscribe(self, node: str) -> None:
        with contextlib.suppress(IqError, TransportError):
            await self.connection.iq(
                self.connection.pubsub.unsubscribe(
                    self.settings.pubsub, node, bare=False, timeout=5
                )
            )
