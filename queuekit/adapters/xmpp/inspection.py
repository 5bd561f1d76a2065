"""``depth`` and ``purge`` of a queue: its node's items that no consumer has taken.

Counting needs the queue node and its taken-journal read in the right order, after every
pipelined ack is answered; purging empties both and drops the local copies of a consumer
of the queue in this transport.
"""

from __future__ import annotations

import contextlib

from slixmpp.exceptions import IqError

from .acks import Acks
from .connection import Connection
from .consuming import QueueReader
from .journal import Entries, TakenJournal
from .nodes import Nodes
from .settings import XMPPSettings
from .stanzas import iq_error


class Inspection:
    """Runs on the loop thread."""

    def __init__(
        self,
        *,
        connection: Connection,
        nodes: Nodes,
        journal: TakenJournal,
        acks: Acks,
        reader: QueueReader,
        settings: XMPPSettings,
    ) -> None:
        self.connection = connection
        self.nodes = nodes
        self.journal = journal
        self.acks = acks
        self.reader = reader
        self.settings = settings

    async def depth(self, queue: str, node: str) -> int:
        """Items on the node that no consumer has taken or settled (see ``TakenJournal``)."""
        count, _ = await self._count(queue, node)
        return count

    async def _count(self, queue: str, node: str) -> tuple[int, Entries]:
        """``depth``, and the journal as read for it."""
        await self.nodes.ensure(node, persist=True)
        await self.acks.flush()
        # The journal first: an ack retracts the item, then its journal entry, in that order
        # on one stream, so an entry gone from the journal means its items are gone too.
        # Read the other way round, an item acked in between looks present and untaken.
        journal = self.settings.journal_node(queue)
        entries = await self.journal.entries(journal)
        try:
            ids = set(await self.nodes.item_ids(node))
        except IqError as exc:
            raise iq_error(exc, f"count node {node}") from None
        taken = await self.journal.taken_counts(journal, ids, entries)
        return len(ids - entries.settled_among(ids) - taken.keys()), entries

    async def purge(self, queue: str, node: str) -> int:
        """Purge the node and its journal. Items recorded as settled but stuck on the node
        (ejabberd, see ``retracts``) survive a purge: they are recorded again."""
        count, settled = await self._count(queue, node)
        journal = self.settings.journal_node(queue)
        connection = self.connection
        try:
            await connection.iq(connection.pubsub.purge(self.settings.pubsub, node))
        except IqError as exc:
            raise iq_error(exc, f"purge node {node}") from None
        with contextlib.suppress(IqError):
            await connection.iq(connection.pubsub.purge(self.settings.pubsub, journal))
        stuck = settled.settled_among(set(await self.nodes.item_ids(node)))
        if stuck:
            await self.journal.mark_settled(journal, sorted(stuck))
        consumer = self.reader.consumers.get(queue)
        if consumer is not None:
            consumer.reset()
            consumer.batches.clear()
            consumer.batch_of.clear()
        state = self.nodes.states.get(node)
        if state is not None:
            state.depth = state.sent_since = 0
        return count
