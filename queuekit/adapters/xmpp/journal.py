"""The taken-journal: which items of a queue consumers took, kept on the server.

A queue node's items never move (that keeps FIFO); what a consumer took is recorded on a
second node, ``taken/NAME``: one journal entry per batch, listing item ids, written before
any of them is handed out. A later consumer that finds an id there knows the item was
delivered before (``redelivered``, ``delivery_count``), and ``depth`` does not count taken
items. An entry is retracted once all its items are settled. A *settled* entry lists items
acked but stuck on the node (ejabberd, see ``retracts``): listings and ``depth`` skip them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from xml.etree import ElementTree as ET

from slixmpp.exceptions import IqError

from ...spi.errors import TransportError
from .connection import Connection
from .nodes import Nodes
from .queue_consumer import QueueConsumer
from .retracts import retract
from .settings import NS, XMPPSettings
from .stanzas import PUBSUB, iq_error, new_id

_TAKEN = f"{{{NS}}}taken"
_SETTLED = f"{{{NS}}}settled"


@dataclass(slots=True)
class Entries:
    """A journal as read: entry id -> the item ids it lists, by kind."""

    taken: dict[str, list[str]] = field(default_factory=dict)
    settled: dict[str, list[str]] = field(default_factory=dict)

    def settled_among(self, present: set[str]) -> set[str]:
        return {i for ids in self.settled.values() for i in ids if i in present}


class TakenJournal:
    """Runs on the loop thread."""

    def __init__(self, connection: Connection, nodes: Nodes, settings: XMPPSettings) -> None:
        self.connection = connection
        self.nodes = nodes
        self.settings = settings

    async def mark(self, consumer: QueueConsumer) -> None:
        """Record on the server that this consumer took every buffered item, before any is
        handed out: one journal item listing their ids, on the queue's journal node.

        One write per batch, not per message. One journal write runs at a time per
        consumer (a mark-ahead and a ``next_item`` must not both record the same items).
        """
        async with consumer.marking:
            await self._mark_buffered(consumer)

    async def _mark_buffered(self, consumer: QueueConsumer) -> None:
        # A snapshot: the consumer thread may pop from the left meanwhile (list() of a
        # deque runs without releasing the GIL).
        todo = [item for item in list(consumer.buffer) if not item.marked]
        if not todo:
            return
        generation = consumer.generation
        entry = new_id()
        payload = ET.Element(_TAKEN)
        payload.text = " ".join(item.id for item in todo)
        await self.nodes.publish_one(consumer.journal, entry, payload)
        if consumer.generation != generation:  # purged meanwhile: those items are gone
            await self.retract_quietly(consumer.journal, entry)
            return
        consumer.batches[entry] = {item.id for item in todo}
        for item in todo:
            item.taken, item.marked = item.taken + 1, True
            consumer.batch_of[item.id] = entry

    @staticmethod
    def settled(consumer: QueueConsumer, item_id: str) -> str | None:
        """An item is gone from the node: the journal entry to retract, once all of its
        items are (the caller retracts it), else None."""
        entry = consumer.batch_of.pop(item_id, None)
        waiting = consumer.batches.get(entry) if entry is not None else None
        if entry is None or waiting is None:
            return None
        waiting.discard(item_id)
        if not waiting:
            del consumer.batches[entry]
            return entry
        return None

    async def mark_settled(self, journal: str, item_ids: list[str]) -> None:
        """Record acked items that the node keeps anyway (stuck, see ``retracts``)."""
        payload = ET.Element(_SETTLED)
        payload.text = " ".join(item_ids)
        await self.nodes.publish_one(journal, new_id(), payload)

    async def retract_quietly(self, node: str, item_id: str) -> None:
        with contextlib.suppress(TransportError):  # retract() maps IqError to it
            await retract(self.connection, self.settings, node, item_id)

    async def entries(self, journal: str) -> Entries:
        """The journal's entries, taken and settled."""
        connection = self.connection
        try:
            reply = await connection.iq(connection.pubsub.get_items(self.settings.pubsub, journal))
        except IqError as exc:
            if exc.condition == "item-not-found":
                return Entries()
            raise iq_error(exc, f"list node {journal}") from None
        entries = Entries()
        for element in reply.xml.iter(f"{{{PUBSUB}}}item"):
            for tag, kind in ((_TAKEN, entries.taken), (_SETTLED, entries.settled)):
                listed = element.find(tag)
                if listed is not None:
                    kind[element.get("id", "")] = (listed.text or "").split()
        return entries

    async def taken_counts(
        self, journal: str, present: set[str], entries: Entries
    ) -> dict[str, int]:
        """How often each present item was taken (this consumer's own entries included);
        entries whose items are all gone are retracted on the way. ``entries`` is the journal
        as read (before the node, see ``Inspection.depth``)."""
        counts: dict[str, int] = {}
        for entry, ids in [*entries.taken.items(), *entries.settled.items()]:
            if not any(i in present for i in ids):
                await self.retract_quietly(journal, entry)
        for ids in entries.taken.values():
            for item_id in ids:
                if item_id in present:
                    counts[item_id] = counts.get(item_id, 0) + 1
        return counts
