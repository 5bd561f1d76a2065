"""Deliberately broken adapters: each breaks one promise it declares, so the conformance
suite must fail the matching case. They prove the suite can fail.

They wrap the real memory:// and sqlite:// adapters through public methods only and are
registered under their own schemes with ``register_transport`` when this module is imported.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

from queuekit.adapters.memory import MemoryTransport
from queuekit.adapters.sqlite import SQLiteTransport
from queuekit.spi.priorities import PriorityRange
from queuekit.spi.registry import register_transport
from queuekit.spi.transport import NO_OPTIONS, Delivery, Headers, Outgoing, SendOptions


class LossyTransport(MemoryTransport):
    """Drops every 100th message it is asked to send (and says nothing)."""

    name = "lossy"
    _counter = itertools.count(1)

    def send_many(self, queue: str, messages: Sequence[Outgoing]) -> None:
        kept = [m for m in messages if next(self._counter) % 100]
        if kept:
            super().send_many(queue, kept)


class AtMostOnceMemory(MemoryTransport):
    """Settles every message as it hands it out: a crashed consumer's work never returns."""

    name = "at-most-once"

    def receive(self, queue: str, timeout: float) -> Delivery | None:
        delivery = super().receive(queue, timeout)
        if delivery is not None:
            super().ack(delivery)
        return delivery


class AtMostOnceSQLite(SQLiteTransport):
    """The same flaw on a file shared by processes (huey's delete-on-fetch)."""

    name = "at-most-once-sqlite"

    def receive(self, queue: str, timeout: float) -> Delivery | None:
        delivery = super().receive(queue, timeout)
        if delivery is not None:
            super().ack(delivery)
            with self._transaction() as db:  # acks are grouped: delete now, as huey does
                self._commit_acks(db)
        return delivery


class NoPriorityTransport(MemoryTransport):
    """Declares priority but ignores it."""

    name = "no-priority"

    def send(
        self, queue: str, body: bytes, headers: Headers, *, options: SendOptions = NO_OPTIONS
    ) -> None:
        super().send(queue, body, headers, options=dataclasses.replace(options, priority=None))

    def send_many(self, queue: str, messages: Sequence[Outgoing]) -> None:
        plain = [dataclasses.replace(m, options=dataclasses.replace(m.options, priority=None))
                 for m in messages]  # fmt: skip
        super().send_many(queue, plain)


class AnyPriorityTransport(MemoryTransport):
    """Declares priority ranges but hands a restricted consumer any priority."""

    name = "any-priority"

    def receive_priorities(
        self, queue: str, timeout: float, priorities: PriorityRange
    ) -> Delivery | None:
        return super().receive(queue, timeout)


class SilentDelayTransport(MemoryTransport):
    """Does not declare delay, yet silently sends a delayed message at once."""

    name = "silent-delay"
    capabilities = dataclasses.replace(MemoryTransport.capabilities, delay=False)

    def send_many(self, queue: str, messages: Sequence[Outgoing]) -> None:
        now = [dataclasses.replace(m, options=dataclasses.replace(m.options, not_before=None))
               for m in messages]  # fmt: skip
        super().send_many(queue, now)


class HeaderDroppingTransport(MemoryTransport):
    """Loses the headers of every message."""

    name = "header-dropping"

    def send_many(self, queue: str, messages: Sequence[Outgoing]) -> None:
        super().send_many(queue, [dataclasses.replace(m, headers={}) for m in messages])


class LifoTransport(MemoryTransport):
    """Declares fifo but hands out the newest message first."""

    name = "lifo"
    _counter = itertools.count()

    def send_many(self, queue: str, messages: Sequence[Outgoing]) -> None:
        newest_first = [
            dataclasses.replace(
                m, options=dataclasses.replace(m.options, priority=next(self._counter))
            )
            for m in messages
        ]
        super().send_many(queue, newest_first)


class OneWordHashTransport(MemoryTransport):
    """Treats ``#`` like ``*`` (one word), a classic topic-matching slip."""

    name = "one-word-hash"

    def subscribe(self, pattern: str) -> str:
        return super().subscribe(pattern.replace("#", "*"))


BROKEN = {
    "lossy": LossyTransport,
    "at-most-once": AtMostOnceMemory,
    "at-most-once-sqlite": AtMostOnceSQLite,
    "no-priority": NoPriorityTransport,
    "any-priority": AnyPriorityTransport,
    "silent-delay": SilentDelayTransport,
    "header-dropping": HeaderDroppingTransport,
    "lifo": LifoTransport,
    "one-word-hash": OneWordHashTransport,
}
for _scheme, _factory in BROKEN.items():
    register_transport(_scheme, _factory)
