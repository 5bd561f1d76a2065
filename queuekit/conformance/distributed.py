"""Cases with consumers beside the suite: competing consumers (4), redelivery after a crash
(6) and a broker restart with messages in flight (19)."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
import uuid
from collections.abc import Callable

from ..spi.errors import TransportError
from ..spi.transport import Outgoing, Transport
from .cases import case
from .consumers import Consumer, start_consumer
from .context import CaseFailure, Context, NotApplicable, check, expect, ids_report


@case(4, "competing_consumers", needs="competing_consumers")
def competing_consumers(ctx: Context) -> None:
    """3 consumers (separate processes) share N messages; each is processed once."""
    queue = ctx.queue("compete")
    tag = uuid.uuid4().hex[:8]
    ids = [f"c-{tag}-{i:05d}" for i in range(ctx.settings.messages)]
    consumers = [start_consumer(ctx, queue, work=0.002) for _ in range(3)]
    try:
        for consumer in consumers:
            consumer.wait_for("ready", timeout=60)
        producer = ctx.open()
        for start in range(0, len(ids), 100):
            producer.send_many(queue, [Outgoing(i.encode()) for i in ids[start : start + 100]])
        _wait_for_total(consumers, len(ids), ctx.settings.receive_timeout)
        time.sleep(ctx.settings.quiet)  # listening for late duplicates, not synchronising
    finally:
        for consumer in consumers:
            consumer.stop()
    seen = [b for c in consumers for b in c.bodies()]
    problem = ids_report(ids, seen)
    check(not problem, f"of {len(ids)} messages: {problem}")
    shares = [len(c.bodies()) for c in consumers]
    check(
        sum(1 for n in shares if n) >= 2,
        f"the work was not shared: consumers received {shares} messages",
    )


def _wait_for_total(consumers: list[Consumer], total: int, idle: float) -> None:
    """Wait until the consumers report ``total`` messages, or none for ``idle`` seconds."""
    last, last_change = -1, time.monotonic()
    while True:
        count = sum(len(c.bodies()) for c in consumers)
        if count >= total:
            return
        for consumer in consumers:
            for event in consumer.events:
                if event["event"] in ("error", "exit"):
                    raise CaseFailure(f"a consumer ended early: {event.get('detail')}")
        if count != last:
            last, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > idle:
            return
        time.sleep(0.02)


@case(6, "redelivery", needs="redelivery")
def redelivery(ctx: Context) -> None:
    """A consumer that received but did not ack is killed: the message comes back, marked."""
    queue = ctx.queue("redeliver")
    body = f"r-{uuid.uuid4().hex}".encode()
    ctx.open().send(queue, body, {})
    consumer = start_consumer(ctx, queue, hold=True)
    try:
        got = consumer.wait_for("got", timeout=ctx.settings.receive_timeout)
        check(got[0]["body"] == body.decode(), f"the consumer received {got[0]['body']!r}")
    finally:
        consumer.kill()
    again = ctx.open()
    delivery = expect(
        again, queue, ctx.settings.redelivery_timeout, "the message of the killed consumer"
    )
    again.ack(delivery)
    check(delivery.body == body, f"redelivered body changed: {delivery.body[:40]!r}")
    if delivery.redelivered or (delivery.delivery_count or 0) >= 2:
        return
    unmarked = (
        "the redelivered message is not marked "
        f"(redelivered=False, delivery_count={delivery.delivery_count})"
    )
    # An adapter that counts deliveries must count this one; one whose broker keeps no
    # flag or count at all (Gearman) passes with a warning: work comes back, but a worker
    # cannot tell a message that keeps killing its consumer.
    check(got[0]["count"] is None, unmarked)
    ctx.warnings.append(f"{unmarked}: the broker reports no redeliveries")


class _Traffic:
    """A publisher and a consumer thread that reopen their transport whenever it fails,
    as a supervised worker would, recording what was confirmed and what was received."""

    def __init__(self, ctx: Context, queue: str, total: int) -> None:
        self.ctx, self.queue, self.total = ctx, queue, total
        self.tag = uuid.uuid4().hex[:8]
        self.confirmed: list[str] = []
        self.received: set[str] = set()
        self.reconnects = 0
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._publish, daemon=True),
            threading.Thread(target=self._consume, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _reopen(self, current: Transport | None) -> Transport:
        if current is not None:
            with contextlib.suppress(TransportError):
                current.close()
        while True:
            try:
                return self.ctx.open()
            except TransportError:
                if self.stop.wait(0.5):
                    raise
            finally:
                self.reconnects += 1

    def _publish(self) -> None:
        transport = self._reopen(None)
        for i in range(self.total):
            ident = f"p-{self.tag}-{i:05d}"
            while not self.stop.is_set():
                try:
                    transport.send(self.queue, ident.encode(), {})
                except TransportError:
                    transport = self._reopen(transport)
                else:
                    self.confirmed.append(ident)
                    break
            time.sleep(0.01)  # pacing, so the restart lands mid-stream

    def _consume(self) -> None:
        transport = self._reopen(None)
        while not self.stop.is_set():
            try:
                delivery = transport.receive(self.queue, 0.2)
                if delivery is not None:
                    transport.ack(delivery)
                    self.received.add(delivery.body.decode())
            except TransportError:
                transport = self._reopen(transport)

    def wait(self, condition: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.02)


@case(19, "restart", needs="durable")
def restart(ctx: Context) -> None:
    """The broker restarts with messages in flight: nothing confirmed is lost."""
    command = ctx.settings.restart_command
    if not command:
        raise NotApplicable("needs --restart-command")
    total = 60 if ctx.settings.short else 300
    traffic = _Traffic(ctx, ctx.queue("restart"), total)
    try:
        traffic.wait(lambda: len(traffic.confirmed) >= total // 3, 60)
        result = subprocess.run(
            command, shell=True, capture_output=True, text=True, timeout=180, check=False
        )
        check(
            result.returncode == 0,
            f"restart command failed ({result.returncode}): {result.stderr[-200:]}",
        )
        traffic.threads[0].join(120)
        traffic.wait(
            lambda: set(traffic.confirmed) <= traffic.received, ctx.settings.redelivery_timeout
        )
    finally:
        traffic.stop.set()
        for thread in traffic.threads:
            thread.join(10)
    confirmed = list(traffic.confirmed)
    check(len(confirmed) == total, f"only {len(confirmed)} of {total} publishes were confirmed")
    lost = [i for i in confirmed if i not in traffic.received]
    check(not lost, f"{len(lost)} confirmed messages lost across the restart, e.g. {lost[:3]}")
