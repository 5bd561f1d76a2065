"""What the pub/sub service supports, read from its service discovery (XEP-0030) features.

XEP-0060 makes most of what a queue needs optional (persisting, listing and retracting
items, node configuration, purging), and servers differ in what they advertise and in how
they behave (docs/xmpp.md, "Servers"). The connection reads the service's features once;
this module turns them into the capabilities the transport declares, so a service without a
feature a capability needs gets that capability declared false with the missing feature
named, never a queue that silently loses items. Behaviour that no feature announces (how
many items a node keeps, which publish-options a server checks) is learnt per node by
``Nodes``.
"""

from __future__ import annotations

from ...spi.capabilities import Capabilities

PUBSUB_FEATURE = "http://jabber.org/protocol/pubsub#"

#: XEP-0060 features a queue node relies on, and what for.
QUEUE_FEATURES = {
    "create-nodes": "creating the queue's nodes",
    "config-node": "making a node persist items and learning how many it keeps",
    "persistent-items": "keeping items until they are acked",
    "retrieve-items": "listing what waits on a node",
    "retract-items": "acking (removing) an item",
    "item-ids": "naming items (the taken-journal records their ids)",
    "subscribe": "hearing of new items",
}
#: What fan-out relies on.
FANOUT_FEATURES = {
    "create-nodes": "creating topic nodes",
    "subscribe": "subscribing to a topic node",
}
#: What ``purge`` relies on beyond a queue.
INSPECT_FEATURES = {"purge-nodes": "purging a queue node"}

#: Reasons that hold on every XMPP service.
REASONS = {
    "competing_consumers": "pub/sub notifies every subscriber of a node and a retract "
    "(the ack) can only follow the work, so two consumers of one queue may both run an "
    "item; run one consumer per queue",
    "topics": "XEP-0060 has no wildcard subscriptions (collection nodes, XEP-0248, take a "
    "whole subtree, not '*' and '#' patterns)",
    "delay": "XMPP pub/sub has no delayed publish; the core's delayed store serves",
    "priority": "items are kept in publish order only",
    "priority_range": "items are kept in publish order only",
    "dedup": "no server-side dedup; the core's job store serves",
}


def missing(features: frozenset[str], needed: dict[str, str]) -> list[str]:
    """The needed features the service does not advertise, as ``pubsub#name (what for)``."""
    return [
        f"pubsub#{name} ({why})"
        for name, why in needed.items()
        if PUBSUB_FEATURE + name not in features
    ]


def queue_gap(features: frozenset[str]) -> str | None:
    """Why this service cannot serve queues, or None when it can."""
    lacking = missing(features, QUEUE_FEATURES)
    return f"the pub/sub service does not advertise {', '.join(lacking)}" if lacking else None


def capabilities(features: frozenset[str], max_message_size: int) -> Capabilities:
    """The capabilities this service backs; each one it cannot gets the missing features."""
    reasons = dict(REASONS)
    queues = queue_gap(features)
    if queues is not None:
        for flag in ("durable", "redelivery", "nack_requeue", "fifo", "inspect"):
            reasons[flag] = queues
    inspect_gap = missing(features, INSPECT_FEATURES)
    if queues is None and inspect_gap:
        reasons["inspect"] = f"the pub/sub service does not advertise {', '.join(inspect_gap)}"
    fanout_gap = missing(features, FANOUT_FEATURES)
    if fanout_gap:
        reasons["fanout"] = f"the pub/sub service does not advertise {', '.join(fanout_gap)}"
    return Capabilities(
        durable=queues is None,
        redelivery=queues is None,
        nack_requeue=queues is None,
        fifo=queues is None,
        fanout=not fanout_gap,
        inspect=queues is None and not inspect_gap,
        max_message_size=max_message_size,
        reasons=reasons,
    )
