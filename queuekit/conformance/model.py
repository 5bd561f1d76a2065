"""Case 18: random sequences of publish, receive, ack, nack and reconnect, checked against a
reference model of the semantics the adapter declares.

The model keeps, per message body, whether it *must* still arrive (``pending``), *may* arrive
(un-acked when the consumer reconnected, on an adapter without ``redelivery``), or is held
un-acked by the consumer (``in_flight``). A receive that brings anything else (an acked,
dropped or never published message) or nothing while something must arrive is a failure;
at the end everything that must arrive does, and nothing else.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ..spi.transport import Delivery
from .cases import case
from .context import CaseFailure, Context, check
from .strategies import ci_settings


def machine_for(ctx: Context) -> type[RuleBasedStateMachine]:
    """The state machine class bound to the adapter under test."""
    redelivers = ctx.declares("redelivery")
    requeues = ctx.declares("nack_requeue")
    wait = ctx.settings.receive_timeout

    class TransportModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.queue = ctx.queue("model")
            self.producer = ctx.open()
            self.consumer = ctx.open()
            self.pending: Counter[bytes] = Counter()
            self.maybe: Counter[bytes] = Counter()
            self.in_flight: list[Delivery] = []
            self.published = 0
            self.steps: list[str] = []

        def _fail(self, what: str) -> None:
            raise CaseFailure(f"{what} (after: {', '.join(self.steps[-12:])})")

        @rule(count=st.integers(min_value=1, max_value=3))
        def publish(self, count: int) -> None:
            for _ in range(count):
                self.published += 1
                body = f"m{self.published}".encode()
                self.producer.send(self.queue, body, {})
                self.pending[body] += 1
            self.steps.append(f"publish {count}")

        @rule()
        def receive(self) -> None:
            expecting = sum(self.pending.values()) > 0
            delivery = self.consumer.receive(self.queue, wait if expecting else 0.05)
            self.steps.append("receive")
            if delivery is None:
                if expecting:
                    self._fail(f"nothing received while {sorted(self.pending.elements())} wait")
                return
            body = delivery.body
            if self.pending[body] > 0:
                self.pending[body] -= 1
            elif self.maybe[body] > 0:
                self.maybe[body] -= 1
            else:
                self._fail(f"received {body!r}, which was acked, dropped or never published")
            self.in_flight.append(delivery)

        @precondition(lambda self: bool(self.in_flight))
        @rule(index=st.integers(min_value=0, max_value=15))
        def ack(self, index: int) -> None:
            delivery = self.in_flight.pop(index % len(self.in_flight))
            self.consumer.ack(delivery)
            self.steps.append(f"ack {delivery.body.decode()}")

        @precondition(lambda self: bool(self.in_flight) and requeues)
        @rule(index=st.integers(min_value=0, max_value=15))
        def nack_requeue(self, index: int) -> None:
            delivery = self.in_flight.pop(index % len(self.in_flight))
            self.consumer.nack(delivery, requeue=True)
            self.pending[delivery.body] += 1
            self.steps.append(f"nack(requeue) {delivery.body.decode()}")

        @precondition(lambda self: bool(self.in_flight))
        @rule(index=st.integers(min_value=0, max_value=15))
        def nack_drop(self, index: int) -> None:
            delivery = self.in_flight.pop(index % len(self.in_flight))
            self.consumer.nack(delivery, requeue=False)
            self.steps.append(f"nack(drop) {delivery.body.decode()}")

        @rule()
        def reconnect(self) -> None:
            self.consumer.close()
            for delivery in self.in_flight:
                (self.pending if redelivers else self.maybe)[delivery.body] += 1
            self.in_flight.clear()
            self.consumer = ctx.open()
            self.steps.append("reconnect")

        @invariant()
        def counts_never_negative(self) -> None:
            check(all(n >= 0 for n in self.pending.values()), "model bookkeeping broke")

        def teardown(self) -> None:
            for delivery in self.in_flight:
                self.consumer.ack(delivery)
            self.in_flight.clear()
            while sum(self.pending.values()) > 0:
                left = self.consumer.receive(self.queue, wait)
                if left is None:
                    self._fail(f"at the end, {sorted(self.pending.elements())} never arrived")
                    return
                self.consumer.ack(left)
                if self.pending[left.body] > 0:
                    self.pending[left.body] -= 1
                elif self.maybe[left.body] > 0:
                    self.maybe[left.body] -= 1
                else:
                    self._fail(f"at the end, unexpected {left.body!r} arrived")
            extra = self.consumer.receive(self.queue, 0.05 if not self.maybe else wait / 10)
            if extra is not None and self.maybe[extra.body] <= 0:
                self._fail(f"at the end, unexpected {extra.body!r} arrived")
            self.producer.close()
            self.consumer.close()

    return TransportModel


@case(18, "model")
def model(ctx: Context) -> None:
    """Random publish/receive/ack/nack/reconnect sequences match the reference model."""
    settings = ci_settings(
        ctx.settings.model_examples, stateful_step_count=ctx.settings.model_steps
    )
    run_state_machine_as_test(machine_for(ctx), settings=settings)
