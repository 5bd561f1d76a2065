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
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..jobstore.base import GroupHead
from ..spi.errors import QueuekitError
from ..spi.transport import Outgoing

if TYPE_CHECKING:
    from .broker import Broker

log = logging.getLogger("queuekit")


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
