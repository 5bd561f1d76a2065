"""The worker side: ``worker run examples.order_tracking.tracking:OrderTracking`` (the
process manager), ``...:OrderStates`` (the check command's handler) and ``...:DeviceHealth``.

The waits come from the environment so the demo and the tests run in seconds:
``ORDER_CHECK_DELAY`` (default 30 minutes) and ``HEALTH_CHECK_EVERY`` (10 minutes). The
print provider (the production partner) is a fake: its answers are a JSON file,
``PARTNER_FILE`` (``{order_id: state}``), and every question asked is a line appended to
``PARTNER_FILE`` + ``.log`` (time, order, answer), so the demo can show when it was asked.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from queuekit import AbstractQueue, Message, ProcessManager

from .events import (
    DeviceRegistered,
    DeviceRetired,
    HealthCheckDue,
    OrderCanceled,
    OrderDeclined,
    OrderLinePackaged,
    OrderLinePicked,
    OrderLinePrinted,
    OrderSentToProduction,
    OrderShipped,
    OrderStateChecked,
    UpdateOrderState,
)

CHECK_DELAY = os.environ.get("ORDER_CHECK_DELAY", "30 minutes")
HEALTH_EVERY = os.environ.get("HEALTH_CHECK_EVERY", "10 minutes")
PARTNER = Path(os.environ.get("PARTNER_FILE", "var/partner.json"))
#: States after which the partner has nothing more to say about an order.
TERMINAL = {"shipped", "declined", "canceled"}
#: A line's steps in production: events may arrive out of order (many workers), so a
#: line only ever moves forward.
LINE_STEPS = ("sent", "picked", "printed", "packaged")
#: An instance's state: a JSON object, changed in place by the handlers.
State = dict[str, Any]


def by_order(event: Any) -> str:
    return str(event.order_id)


class OrderTracking(ProcessManager):
    """One instance per order, from production to a terminal event."""

    queue = "order-tracking"
    started_by = {OrderSentToProduction: by_order}
    handles = {
        OrderLinePicked: by_order,
        OrderLinePrinted: by_order,
        OrderLinePackaged: by_order,
        OrderStateChecked: by_order,
        OrderShipped: by_order,
        OrderDeclined: by_order,
        OrderCanceled: by_order,
    }

    def on_order_sent_to_production(self, event: OrderSentToProduction, state: State) -> None:
        state.update(status="in production", lines=dict.fromkeys(event.lines, "sent"),
                     checks=0, unchanged=0)  # fmt: skip
        self.check(event.order_id, state)

    def on_order_line_picked(self, event: OrderLinePicked, state: State) -> None:
        advance(state, event.line, "picked")

    def on_order_line_printed(self, event: OrderLinePrinted, state: State) -> None:
        advance(state, event.line, "printed")

    def on_order_line_packaged(self, event: OrderLinePackaged, state: State) -> None:
        advance(state, event.line, "packaged")

    def on_order_state_checked(self, event: OrderStateChecked, state: State) -> None:
        """The missing puzzle piece: a check that finds no change still schedules the next
        one, or a stalled order would never be looked at again."""
        state["checks"] += 1
        state["unchanged"] = 0 if event.changed else state["unchanged"] + 1
        state["status"] = event.state
        if event.state in TERMINAL:
            self.complete()
        else:
            self.check(event.order_id, state)

    def on_order_shipped(self, event: OrderShipped, state: State) -> None:
        state["status"] = "shipped"
        self.complete()

    def on_order_declined(self, event: OrderDeclined, state: State) -> None:
        state.update(status="declined", reason=event.reason)
        self.complete()

    def on_order_canceled(self, event: OrderCanceled, state: State) -> None:
        state["status"] = "canceled"
        self.complete()

    def check(self, order_id: str, state: State) -> None:
        command = UpdateOrderState(order_id, known=state["status"])
        self.schedule(command, delay=CHECK_DELAY, queue=OrderStates.queue)


def advance(state: State, line: str, step: str) -> None:
    """Move ``line`` on to ``step``, never back (a late "picked" after "packaged")."""
    now = state["lines"].get(line, "sent")
    if LINE_STEPS.index(step) > LINE_STEPS.index(now):
        state["lines"][line] = step


class OrderStates(AbstractQueue):
    """Handles ``UpdateOrderState``: asks the partner, answers ``OrderStateChecked``.

    The answer is published with the command's id as an "ever" key: a command delivered
    twice (it is at least once) answers once, so one check never becomes two."""

    queue = "order-states"

    def work(self, message: Message) -> str:
        command = UpdateOrderState(**message.payload)
        now = ask_partner(command.order_id, command.known)
        answer = OrderStateChecked(command.order_id, now, changed=now != command.known)
        OrderTracking(self.connection).publish(answer, key=f"checked:{message.id}",
                                               dedup="ever")  # fmt: skip
        return now


def ask_partner(order_id: str, known: str) -> str:
    """The fake print provider: the order's state in ``PARTNER_FILE`` (else ``known``),
    and a line in its log saying it was asked."""
    partner = json.loads(PARTNER.read_text(encoding="utf-8")) if PARTNER.exists() else {}
    now = str(partner.get(order_id, known))
    asked = {"at": time.time(), "order": order_id, "answer": now}
    with open(f"{PARTNER}.log", "a", encoding="utf-8") as log:
        log.write(json.dumps(asked) + "\n")
    return now


class DeviceHealth(ProcessManager):
    """A device's health check every ``HEALTH_CHECK_EVERY``: each check schedules the
    next, so there is always exactly one pending, until the device is retired."""

    queue = "device-health"
    started_by = {DeviceRegistered: lambda e: e.device}
    handles = {HealthCheckDue: lambda e: e.device, DeviceRetired: lambda e: e.device}

    def on_device_registered(self, event: DeviceRegistered, state: State) -> None:
        state["checks"] = 0
        self.schedule(HealthCheckDue(event.device), delay=HEALTH_EVERY)

    def on_health_check_due(self, event: HealthCheckDue, state: State) -> None:
        state["checks"] += 1  # a real check would ping the device here (through a command)
        self.schedule(HealthCheckDue(event.device), delay=HEALTH_EVERY)

    def on_device_retired(self, event: DeviceRetired, state: State) -> None:
        self.complete()
