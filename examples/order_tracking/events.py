"""The messages of the story: events of orders and devices, and the check command."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class OrderSentToProduction:
    order_id: str
    lines: list[str] = field(default_factory=list)


@dataclass
class OrderLinePicked:
    order_id: str
    line: str


@dataclass
class OrderLinePrinted:
    order_id: str
    line: str


@dataclass
class OrderLinePackaged:
    order_id: str
    line: str


@dataclass
class OrderShipped:
    order_id: str


@dataclass
class OrderDeclined:
    order_id: str
    reason: str = ""


@dataclass
class OrderCanceled:
    order_id: str


@dataclass
class UpdateOrderState:
    """The command: ask the production partner where the order is (``known``: the state
    the tracker knows, so the answer can say whether it changed)."""

    order_id: str
    known: str


@dataclass
class OrderStateChecked:
    order_id: str
    state: str
    changed: bool


@dataclass
class DeviceRegistered:
    device: str


@dataclass
class HealthCheckDue:
    device: str


@dataclass
class DeviceRetired:
    device: str
