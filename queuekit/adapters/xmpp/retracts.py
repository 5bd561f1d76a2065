"""Items ejabberd lists but will not retract, and how a queue lives with them.

ejabberd 23.01 (``node_flat``, Mnesia) keeps, besides the items themselves, a list of item
ids per publishing account and node; a retract must find the id in such a list, and
publishes and retracts rewrite the list without isolation (read, change, write). Two
connections of one account at once, as a producer and a consumer of one queue are, can
each write back a list without the other's change: an item whose id was dropped that way
is listed and fetched like any other, but every retract of it answers item-not-found, and
purging or deleting the node leaves it behind (publishing it again under its id does not
help: that updates the item, not the list). Measured here: 469 of 2,001 items published
while a consumer of the same account acked stayed on the node, and without a record of
them every consumer ran them again, for ever.

So a retract answered item-not-found is checked: if the node still has the item, it is
*stuck*, and the consumer records it as settled in the queue's taken-journal
(``TakenJournal.mark_settled``); listings and ``depth`` leave it out from then on.
Prosody never answers item-not-found for an item it lists; there the check costs one IQ.
"""

from __future__ import annotations

from slixmpp.exceptions import IqError

from .connection import Connection
from .settings import XMPPSettings
from .stanzas import PUBSUB, iq_error


async def retract(connection: Connection, settings: XMPPSettings, node: str, item_id: str) -> bool:
    """Retract ``item_id`` from ``node``: False when the server answers item-not-found
    (gone already, or stuck: see :func:`stuck`)."""
    try:
        await connection.iq(connection.pubsub.retract(settings.pubsub, node, item_id))
    except IqError as exc:
        if exc.condition != "item-not-found":
            raise iq_error(exc, f"retract an item of {node}") from None
        return False
    return True


async def stuck(connection: Connection, settings: XMPPSettings, node: str, item_id: str) -> bool:
    """A retract of ``item_id`` answered item-not-found: does the node still have it?"""
    try:
        reply = await connection.iq(
            connection.pubsub.get_items(settings.pubsub, node, item_ids=[item_id])
        )
    except IqError as exc:
        if exc.condition == "item-not-found":
            return False
        raise iq_error(exc, f"read an item of {node}") from None
    return any(e.get("id") == item_id for e in reply.xml.iter(f"{{{PUBSUB}}}item"))
