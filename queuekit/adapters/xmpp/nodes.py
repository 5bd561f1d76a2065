"""Pub/sub nodes: created and configured the way queuekit relies on, and subscribed to.

A queue node must persist its items and keep as many as the server allows; an existing node
is reconfigured to that, and its cap (how many items the server keeps before it drops the
oldest) is learnt once per connection so publishing can refuse to overflow it. Servers
differ here (docs/xmpp.md, "Servers"): Prosody states its bound in the config form
(an XEP-0122 range on ``pubsub#max_items``); ejabberd does not, but refuses a larger value
than its ``max_items_node``, so the bound is found by asking, on a scratch node of its own:
never on a queue node, whose items a smaller max_items drops at the next publish (ejabberd
did, while a killed consumer left a queue node at a probe's 1024 or 99968: docs/xmpp.md,
"Servers"). Which publish-options a server
checks is learnt on the first publish. Nodes never send their last item on subscribe
(ejabberd's default does): a topic subscriber is owed only what is published after
``subscribe`` returns. Subscribing is per full JID and done here for queue consumers and
fan-out alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree as ET

from slixmpp.exceptions import IqError

from ...spi.errors import TransportError
from .connection import Connection
from .retracts import retract
from .service import PUBSUB_FEATURE
from .settings import XMPPSettings
from .stanzas import (
    NODE_CONFIG,
    PUBSUB,
    NodeConfig,
    form,
    iq_error,
    precondition_failed,
    publish_options,
    read_config,
)

log = logging.getLogger("queuekit.adapters.xmpp")

#: Tries at a node's create, configure or delete the server failed (``Nodes._administer``).
_ADMIN_ATTEMPTS = 4
#: Conditions a server answers a max_items it will not keep with (ejabberd:
#: resource-constraint; Prosody: bad-request).
_REFUSED = frozenset({"bad-request", "not-acceptable", "resource-constraint", "policy-violation"})
#: Stop looking for a bound past this many items: a server accepting it keeps "enough".
PROBE_LIMIT = 1 << 30


@dataclass(slots=True)
class NodeState:
    cap: int | None  # max items the node keeps (None: not persisted)
    max_items: str = "max"  # what the node is configured to (its publish precondition)
    depth: int = 0
    sent_since: int = 0
    counted_at: float = 0.0


class Nodes:
    """The nodes this session has made sure of, by name. Runs on the loop thread."""

    def __init__(self, connection: Connection, settings: XMPPSettings) -> None:
        self.connection = connection
        self.settings = settings
        self.states: dict[str, NodeState] = {}
        self.service_cap: int | None = None  # found by asking, where the form does not say
        #: Whether the server checks max_items as a publish precondition (known after the
        #: first publish; see ``publish_one``). When it does not, publishers re-read it.
        self.checks_max_items = True
        self.preconditions_known = False

    async def ensure(self, node: str, *, persist: bool) -> NodeState:
        """Create ``node`` if needed with the config queuekit relies on; learn its cap."""
        await self.connection.ensure()  # every operation starts here: reconnect after a loss
        state = self.states.get(node)
        if state is not None:
            return state
        s = self.settings
        config: dict[str, Any] = {
            "pubsub#persist_items": persist,
            "pubsub#access_model": "open",
            "pubsub#send_last_published_item": "never",
        }
        if persist:
            config["pubsub#max_items"] = s.max_items
        await self._create(node, config)
        state = NodeState(cap=None)
        if persist:
            state.cap, state.max_items = await self._configure_queue_node(node)
        self.states[node] = state
        return state

    async def _create(self, node: str, config: dict[str, Any]) -> None:
        """Create ``node``; one that exists already is fine."""
        pubsub, service = self.connection.pubsub, self.settings.pubsub
        try:
            await self._administer(
                lambda: pubsub.create_node(service, node, config=form(NODE_CONFIG, config))
            )
        except IqError as exc:
            if exc.condition != "conflict":
                raise iq_error(exc, f"create node {node}") from None

    async def _administer(self, send: Callable[[], Awaitable[Any]]) -> None:
        """Send a node's create, configure or delete IQ (``send()`` sends it anew each
        call). ejabberd 23.01 fails such IQs of connections that administer nodes at once
        (a producer and workers starting together, each also creating a scratch node) with
        internal-server-error "Database failure" for some of them (Mnesia transactions
        aborted; seen in CI and in tests/test_xmpp.py): those are asked again."""
        for attempt in range(_ADMIN_ATTEMPTS):
            try:
                await self.connection.iq(send())
                return
            except IqError as exc:
                if exc.condition != "internal-server-error" or attempt + 1 == _ADMIN_ATTEMPTS:
                    raise
            await asyncio.sleep(0.1 * (attempt + 1))

    async def read_config(self, node: str) -> NodeConfig:
        connection = self.connection
        try:
            reply = await connection.iq(
                connection.pubsub.get_node_config(self.settings.pubsub, node)
            )
        except IqError as exc:
            raise iq_error(exc, f"read the config of node {node}") from None
        return read_config(reply.xml)

    async def _configure_queue_node(self, node: str) -> tuple[int, str]:
        """Make sure an existing node persists, keeps as many items as asked (or as the
        server allows) and sends no last item; return its cap and max_items value."""
        s = self.settings
        found = await self.read_config(node)
        if s.max_items != "max":
            cap, value = int(s.max_items), s.max_items
        elif found.range_max is not None:
            cap, value = found.range_max, "max"
        else:  # "max" would mean a bound the server does not tell: find it, and use it
            cap = self.service_cap = self.service_cap or await self._find_cap()
            value = str(cap)
        wanted: dict[str, Any] = {}
        if not found.persist:
            wanted["pubsub#persist_items"] = True
        if found.max_items != value:
            wanted["pubsub#max_items"] = value
        if found.send_last not in (None, "never"):
            wanted["pubsub#send_last_published_item"] = "never"
        if wanted:
            await self._set_config(node, wanted, "persist items")
        return cap, value

    async def _set_config(self, node: str, values: dict[str, Any], why: str) -> None:
        pubsub, service = self.connection.pubsub, self.settings.pubsub
        try:
            await self._administer(
                lambda: pubsub.set_node_config(service, node, form(NODE_CONFIG, values))
            )
        except IqError as exc:
            raise iq_error(exc, f"configure node {node} to {why}") from None

    async def _find_cap(self) -> int:
        """The largest max_items the server accepts: its bound on how many items a node
        keeps (ejabberd's ``max_items_node``), which its config form does not state.

        Asked on a scratch node created for it and deleted after, never on the node to
        configure: each accepted guess *is* that node's max_items until the next one, and
        ejabberd drops a node's oldest items beyond it at the next publish (another
        connection's), or keeps a guess for good if this process dies in between. Doubling
        from 1024, then bisecting: a few dozen config IQs, once per connection.
        """
        scratch = self.settings.scratch_node()
        connection, service = self.connection, self.settings.pubsub
        config = form(NODE_CONFIG, {"pubsub#persist_items": True})
        try:
            await self._administer(
                lambda: connection.pubsub.create_node(service, scratch, config=config)
            )
        except IqError as exc:
            raise iq_error(exc, f"create node {scratch} (to learn its max_items bound)") from None
        try:
            return await self._bisect_cap(scratch)
        finally:
            with contextlib.suppress(IqError, TransportError):
                await connection.iq(connection.pubsub.delete_node(service, scratch))

    async def _bisect_cap(self, scratch: str) -> int:
        low, high = 0, 1024
        while high <= PROBE_LIMIT and await self._accepts(scratch, high):
            low, high = high, high * 2
        if low >= PROBE_LIMIT:
            return low
        while high - low > 1:
            middle = (low + high) // 2
            if await self._accepts(scratch, middle):
                low = middle
            else:
                high = middle
        if low == 0:
            raise TransportError(
                f"xmpp: {self.settings.pubsub} accepts no max_items for a node; "
                "set max_items=N in the URL to the server's limit"
            )
        return low

    async def _accepts(self, node: str, max_items: int) -> bool:
        connection = self.connection
        values = form(NODE_CONFIG, {"pubsub#max_items": str(max_items)})
        try:
            await self._administer(
                lambda: connection.pubsub.set_node_config(self.settings.pubsub, node, values)
            )
        except IqError as exc:
            if exc.condition in _REFUSED:
                return False
            raise iq_error(exc, f"configure node {node}") from None
        return True

    def publish_options(self, node: str) -> Any:
        """The preconditions for a queue item on ``node``: persisted, and its max_items if
        the server checks that (otherwise publishers re-read it, see ``Publisher``)."""
        if PUBSUB_FEATURE + "publish-options" not in self.connection.features:
            self.checks_max_items = False
            return None
        preconditions: dict[str, Any] = {"pubsub#persist_items": True}
        if self.checks_max_items:
            state = self.states.get(node)
            preconditions["pubsub#max_items"] = state.max_items if state else "max"
        return publish_options(preconditions)

    async def publish_one(self, node: str, item_id: str, payload: ET.Element) -> None:
        """Publish one queue item; the first time, learn which preconditions the server takes.

        XEP-0060 lets publish-options name any node config field, but a server may check
        only some: ejabberd 23.01 refuses ``pubsub#max_items`` there (resource-constraint,
        "Unknown field"). A refusal other than a failed precondition is retried once without
        max_items; if that is stored, the server checks persist_items only (nothing was
        stored by the refused publish). Else the first refusal is raised.
        """
        pubsub, s = self.connection.pubsub, self.settings

        def publish() -> Any:
            return pubsub.publish(
                s.pubsub, node, id=item_id, payload=payload,
                options=self.publish_options(node), timeout=s.timeout,
            )  # fmt: skip

        try:
            await self.connection.iq(publish())
        except IqError as exc:
            if (
                self.preconditions_known
                or precondition_failed(exc)
                or exc.condition not in _REFUSED
            ):
                raise iq_error(exc, f"publish to {node}") from None
            self.checks_max_items = False
            try:
                await self.connection.iq(publish())
            except IqError:
                self.checks_max_items = True
                raise iq_error(exc, f"publish to {node}") from None
        self.preconditions_known = True

    async def check_max_items(self, node: str, state: NodeState) -> None:
        """Where the server does not check max_items on publish: has an owner changed it?"""
        if self.checks_max_items:
            return
        found = await self.read_config(node)
        if found.max_items != state.max_items or not found.persist:
            raise TransportError(
                f"xmpp: node {node} was reconfigured (max_items {found.max_items}, not "
                f"{state.max_items}); the server would drop items queuekit has not counted"
            )

    async def delete(self, node: str) -> bool:
        """Retract every item, then delete the node; False: the node was kept.

        ejabberd 23.01 (Mnesia) can leave items of a deleted node behind and then show them
        in a new node that reuses its index (seen here: a fresh node listing another queue's
        items); retracting them one by one first removes each item record itself. Stuck
        items (``retracts``) cannot be removed at all: a node that still lists items after
        the retracts is kept (empty but for them), so that they stay where they are
        recorded as settled instead of turning up in the next node created.
        """
        await self.connection.ensure()
        self.states.pop(node, None)
        connection, service = self.connection, self.settings.pubsub
        try:
            ids = await self.item_ids(node)
            await asyncio.gather(*(retract(connection, self.settings, node, i) for i in ids))
            if ids and await self.item_ids(node):
                log.warning("xmpp: node %s keeps items it will not retract; not deleted", node)
                return False
            await self._administer(lambda: connection.pubsub.delete_node(service, node))
        except IqError as exc:
            if exc.condition != "item-not-found":
                raise iq_error(exc, f"delete node {node}") from None
        return True

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
