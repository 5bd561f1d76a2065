"""``memory://name``: an in-process broker for tests and embedded use.

Every transport opened on the same ``name`` in one process shares one broker, so a test can
publish through one connection and consume through another. It keeps the full contract
(priorities, delays, dedup while pending, redelivery of un-acked work when a transport is
closed, topics), which makes it the stand-in a user's own test suite can run against.
Nothing survives the process: it is not ``durable``.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ..spi.capabilities import Capabilities
from ..spi.priorities import PriorityRange
from ..spi.topics import topic_matches
from ..spi.transport import (
    NO_OPTIONS,
    Delivery,
    Headers,
    Outgoing,
    QueueStats,
    SendOptions,
    Transport,
)
from ..spi.urls import TransportURL

_sequence = itertools.count()


@dataclass
class _Entry:
    body: bytes
    headers: dict[str, str]
    priority: int
    key: str | None
    available_at: float  # when it became receivable: due messages are received in due order
    deliveries: int = 0
    seq: int = field(default_factory=lambda: next(_sequence))


@dataclass
class _Queue:
    ready: list[tuple[int, float, int, _Entry]] = field(default_factory=list)
    delayed: list[tuple[float, int, _Entry]] = field(default_factory=list)  # (due, seq, entry)
    keys: set[str] = field(default_factory=set)  # dedup keys waiting or in flight

    def push(self, entry: _Entry) -> None:
        heapq.heappush(self.ready, (-entry.priority, entry.available_at, entry.seq, entry))

    def pop(self, priorities: PriorityRange | None) -> _Entry | None:
        """The first ready entry, or the first with a priority in ``priorities`` (a scan:
        memory:// is for tests, not for millions waiting)."""
        if priorities is None:
            return heapq.heappop(self.ready)[3] if self.ready else None
        wanted = [item for item in self.ready if item[3].priority in priorities]
        if not wanted:
            return None
        first = min(wanted)
        self.ready.remove(first)
        heapq.heapify(self.ready)
        return first[3]

    def promote_due(self, now: float) -> float | None:
        """Move due delayed entries to ready; return when the next one falls due."""
        while self.delayed and self.delayed[0][0] <= now:
            self.push(heapq.heappop(self.delayed)[2])
        return self.delayed[0][0] if self.delayed else None


class _Broker:
    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.queues: dict[str, _Queue] = {}
        self.subscriptions: dict[str, str] = {}  # subscription queue -> pattern

    def queue(self, name: str) -> _Queue:
        found = self.queues.get(name)
        if found is None:
            found = self.queues[name] = _Queue()
        return found


_brokers: weakref.WeakValueDictionary[str, _Broker] = weakref.WeakValueDictionary()
_brokers_lock = threading.Lock()


def _broker(name: str) -> _Broker:
    with _brokers_lock:
        broker = _brokers.get(name)
        if broker is None:
            broker = _brokers[name] = _Broker()
        return broker


class MemoryTransport(Transport):
    """In-process transport; see the module docstring."""

    name = "memory"
    process_local = True
    capabilities = Capabilities(
        redelivery=True,
        nack_requeue=True,
        fifo=True,
        competing_consumers=True,
        fanout=True,
        topics=True,
        delay=True,
        priority=True,
        priority_range=True,
        dedup=True,
        inspect=True,
        reasons={"durable": "messages live in this process's memory only"},
    )

    def __init__(self, url: TransportURL, *, prefetch: int = 16) -> None:
        super().__init__(url, prefetch=prefetch)
        # Keep a strong reference: the broker lives while any transport uses it.
        self._broker = _broker(url.hosts[0].name if url.hosts else url.path or "default")
        self._unacked: dict[int, tuple[str, _Entry]] = {}
        self._subscriptions: set[str] = set()

    def send_many(self, queue: str, messages: Sequence[Outgoing]) -> None:
        self.check_open()
        with self._broker.changed:
            target = self._broker.queue(queue)
            for message in messages:
                self._enqueue(target, message.body, dict(message.headers), message.options)
            self._broker.changed.notify_all()

    @staticmethod
    def _enqueue(target: _Queue, body: bytes, headers: dict[str, str], opts: SendOptions) -> None:
        if opts.dedup_key is not None:
            if opts.dedup_key in target.keys:
                return
            target.keys.add(opts.dedup_key)
        entry = _Entry(bytes(body), headers, opts.priority or 0, opts.dedup_key, 0.0)
        MemoryTransport._schedule(target, entry, opts.not_before)

    @staticmethod
    def _schedule(target: _Queue, entry: _Entry, not_before: float | None) -> None:
        now = time.time()
        entry.available_at = due = not_before if not_before is not None else now
        if due > now:
            heapq.heappush(target.delayed, (due, entry.seq, entry))
        else:
            target.push(entry)

    def receive(self, queue: str, timeout: float) -> Delivery | None:
        return self._receive(queue, timeout, None)

    def receive_priorities(
        self, queue: str, timeout: float, priorities: PriorityRange
    ) -> Delivery | None:
        return self._receive(queue, timeout, priorities)

    def _receive(
        self, queue: str, timeout: float, priorities: PriorityRange | None
    ) -> Delivery | None:
        self.check_open()
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._broker.changed:
            target = self._broker.queue(queue)
            while True:
                if self.closed:
                    return None
                next_due = target.promote_due(time.time())
                entry = target.pop(priorities)
                if entry is not None:
                    entry.deliveries += 1
                    self._unacked[id(entry)] = (queue, entry)
                    return Delivery(
                        queue=queue,
                        body=entry.body,
                        headers=dict(entry.headers),
                        redelivered=entry.deliveries > 1,
                        delivery_count=entry.deliveries,
                        handle=id(entry),
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                if next_due is not None:
                    remaining = min(remaining, max(next_due - time.time(), 0.001))
                self._broker.changed.wait(remaining)

    def ack(self, delivery: Delivery) -> None:
        self.check_open()
        self._settle(delivery, requeue=False)

    def nack(self, delivery: Delivery, *, requeue: bool) -> None:
        self.check_open()
        self._settle(delivery, requeue=requeue)

    def requeue(
        self, delivery: Delivery, body: bytes, *, options: SendOptions = NO_OPTIONS
    ) -> None:
        """The next attempt keeps the entry's dedup key taken while it waits."""
        self.check_open()
        self.require(options)
        with self._broker.changed:
            held = self._unacked.pop(delivery.handle, None)
            if held is None:
                return
            queue, entry = held
            retry = replace(entry, body=bytes(body), priority=options.priority or 0,
                            deliveries=0, seq=next(_sequence))  # fmt: skip
            self._schedule(self._broker.queue(queue), retry, options.not_before)
            self._broker.changed.notify_all()

    def _settle(self, delivery: Delivery, *, requeue: bool) -> None:
        with self._broker.changed:
            held = self._unacked.pop(delivery.handle, None)
            if held is None:
                return
            queue, entry = held
            target = self._broker.queue(queue)
            if requeue:
                target.push(entry)
                self._broker.changed.notify_all()
            elif entry.key is not None:
                target.keys.discard(entry.key)

    def close(self) -> None:
        with self._broker.changed:
            if self.closed:
                return
            self.closed = True
            for queue, entry in self._unacked.values():
                self._broker.queue(queue).push(entry)
            self._unacked.clear()
            for subscription in self._subscriptions:
                self._broker.subscriptions.pop(subscription, None)
            self._broker.changed.notify_all()

    def depth(self, queue: str) -> int:
        self.check_open()
        with self._broker.changed:
            target = self._broker.queue(queue)
            due = sum(1 for when, _, _ in target.delayed if when <= time.time())
            return len(target.ready) + due  # ready (Transport.depth), not the delayed

    def stats(self, queue: str) -> QueueStats:
        """Ready and delayed; what other transports of the broker hold un-acked is theirs
        alone, so in flight and latency are not known here."""
        self.check_open()
        with self._broker.changed:
            target = self._broker.queue(queue)
            due = sum(1 for when, _, _ in target.delayed if when <= time.time())
            return QueueStats(ready=len(target.ready) + due, delayed=len(target.delayed) - due)

    def purge(self, queue: str) -> int:
        self.check_open()
        with self._broker.changed:
            target = self._broker.queue(queue)
            count = len(target.ready) + len(target.delayed)
            target.ready.clear()
            target.delayed.clear()
            target.keys.clear()
            return count

    def delete(self, queue: str) -> None:
        self.check_open()
        with self._broker.changed:
            self._broker.queues.pop(queue, None)
            self._broker.subscriptions.pop(queue, None)

    def broadcast(self, topic: str, body: bytes, headers: Headers) -> None:
        self.check_open()
        with self._broker.changed:
            for subscription, pattern in self._broker.subscriptions.items():
                if topic_matches(pattern, topic):
                    self._enqueue(self._broker.queue(subscription), body, dict(headers), NO_OPTIONS)
            self._broker.changed.notify_all()

    def subscribe(self, pattern: str) -> str:
        self.check_open()
        subscription = f"subscription.{next(_sequence)}.{pattern}"
        with self._broker.changed:
            self._broker.subscriptions[subscription] = pattern
            self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: str) -> None:
        with self._broker.changed:
            self._broker.subscriptions.pop(subscription, None)
            self._broker.queues.pop(subscription, None)
            self._subscriptions.discard(subscription)
