"""Serial groups: messages with the same group run one at a time, in publish order.

No broker we support orders work per key across competing consumers, so the core does it
for every adapter, through the job store: a grouped message is lined up there, and only
the head of its group is on the broker. When a worker settles the head for good (done, or
failed), it removes it and sends the next one; a retry keeps the head in place, so the
group waits for it. Other groups go on in parallel.

Nothing is held in worker memory, and nothing is lost: ``publish`` returns once the job
store holds the message (like a delayed one); a head whose send failed, or whose sender
died, is sent again by a worker's periodic sweep once its claim expires (at worst twice,
never lost). That needs an adapter that redelivers: a head lost with its worker would stop
its group for ever, so groups are refused where ``redelivery`` is not declared.

A grouped message also carries its group and id outside its body, in transport headers
(:func:`headers_for`; every adapter carries string headers): a worker that cannot decode
the body (a newer producer's envelope, a corrupted message) still knows which group waits
for it, and releases that group when it puts the message in the failed store
(:func:`release_undecodable`). Without that, one bad message would stall its group for ever.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..jobstore.base import GroupHead
from ..spi.errors import QueuekitError
from ..spi.transport import Outgoing

if TYPE_CHECKING:
    from .broker import Broker

log = logging.getLogger("queuekit")

#: Transport headers of a grouped message: its group and its message id.
GROUP_HEADER, ID_HEADER = "queuekit-group", "queuekit-id"


def headers_for(group: str, message_id: str) -> dict[str, str]:
    """The transport headers a grouped message is sent with."""
    return {GROUP_HEADER: group, ID_HEADER: message_id}


def release_undecodable(broker: Broker, queue: str, headers: Mapping[str, str]) -> bool:
    """A delivery whose body does not decode is settled for good: when its headers name a
    group, send the next message of that group. Returns whether they named one.

    Only the message that is its group's head in flight can free it (``finish_grouped``
    ignores a message id it does not hold), so the headers of a stray message free nothing.
    """
    group, message_id = headers.get(GROUP_HEADER), headers.get(ID_HEADER)
    if group is None or message_id is None:
        return False
    log.warning("message %s of group %r does not decode: its group goes on without it",
                message_id, group)  # fmt: skip
    advance(broker, queue, group, message_id)
    return True


def line_up(
    broker: Broker,
    queue: str,
    grouped: dict[str, list[tuple[str, Outgoing, float | None]]],
) -> None:
    """Store each group's new messages behind its earlier ones; send heads now free."""
    jobs = broker.jobs
    heads: list[GroupHead] = []
    for group, items in grouped.items():
        jobs.add_grouped(queue, group, items)
        heads.extend(jobs.claim_group_heads(queue, group))
    send_heads(broker, heads)


def advance(broker: Broker, queue: str, group: str, message_id: str) -> None:
    """``message_id`` is settled for good: send the next message of its group."""
    jobs = broker.jobs
    jobs.finish_grouped(queue, group, message_id)
    send_heads(broker, jobs.claim_group_heads(queue, group))


def sweep(broker: Broker, queue: str) -> int:
    """Send heads of ``queue``'s groups that nobody sent (a publisher or worker died, or
    the broker refused); return how many."""
    heads = broker.jobs.claim_group_heads(queue)
    send_heads(broker, heads)
    return len(heads)


def send_heads(broker: Broker, heads: Sequence[GroupHead]) -> None:
    """Send claimed heads; one that fails stays claimed until the sweep tries it again."""
    sent = []
    for head in heads:
        try:
            broker.forward(head.queue, head.outgoing, head.due)
        except QueuekitError as exc:
            log.warning("message %s of group %r not sent yet (%s); a worker retries it",
                        head.message_id, head.group, exc)  # fmt: skip
            continue
        sent.append(head)
    if sent:
        broker.jobs.mark_sent(sent)
