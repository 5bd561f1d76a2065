"""What an adapter guarantees natively, declared once and read (never guessed) by the core."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

#: Capability flags in the order tables show them.
FLAGS: tuple[str, ...] = (
    "durable",
    "redelivery",
    "nack_requeue",
    "fifo",
    "competing_consumers",
    "fanout",
    "topics",
    "delay",
    "priority",
    "priority_range",
    "dedup",
    "inspect",
)


@dataclass(frozen=True)
class Capabilities:
    """A frozen declaration of native guarantees.

    - ``durable``: a message the broker accepted survives a broker restart.
    - ``redelivery``: un-acked work comes back when its consumer dies.
    - ``nack_requeue``: ``nack(requeue=True)`` puts the message back; ``False`` drops it.
    - ``fifo``: one producer, one consumer, order kept.
    - ``competing_consumers``: each message goes to exactly one of many consumers.
    - ``fanout``: ``broadcast`` reaches every subscriber.
    - ``topics``: subscriptions take patterns, ``*`` one dot-separated word, ``#`` any words.
    - ``delay``: ``SendOptions.not_before`` is honoured by the broker.
    - ``priority``: with several waiting, higher ``SendOptions.priority`` is received first.
    - ``priority_range``: ``receive_priorities`` takes only messages in a priority range.
      Declared without ``priority`` (RabbitMQ quorum queues), a send's priority still picks
      which ranges' consumers take it, but not its order among the messages waiting.
    - ``priority_bands``: where ranges must fall on band boundaries (the adapter keeps one
      broker queue per band: :class:`~queuekit.spi.priorities.PriorityBands`), where each
      band but the first starts; ``None`` when any range is served.
    - ``dedup``: a second send with a pending ``SendOptions.dedup_key`` is dropped.
    - ``inspect``: ``depth`` and ``purge`` work.
    - ``max_message_size``: bytes of an encoded message, ``None`` when the broker sets no limit.

    ``reasons`` explains, per flag, why it is not declared (shown by the conformance table).
    """

    durable: bool = False
    redelivery: bool = False
    nack_requeue: bool = False
    fifo: bool = False
    competing_consumers: bool = False
    fanout: bool = False
    topics: bool = False
    delay: bool = False
    priority: bool = False
    priority_range: bool = False
    dedup: bool = False
    inspect: bool = False
    priority_bands: tuple[int, ...] | None = None
    max_message_size: int | None = None
    #: Whether a redelivery says so (``Delivery.redelivered`` or ``delivery_count``). When an
    #: adapter declares ``redelivery`` but cannot mark it (gearmand), the worker counts starts
    #: in the job store so an attempt that died with its worker still counts.
    marks_redelivery: bool = True
    reasons: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def takes_priority(self) -> bool:
        """Whether a send may carry ``SendOptions.priority`` (for order, or for ranges)."""
        return self.priority or self.priority_range

    def declared(self) -> tuple[str, ...]:
        """The flags this adapter declares, in table order."""
        return tuple(name for name in FLAGS if getattr(self, name))

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "reasons"}
