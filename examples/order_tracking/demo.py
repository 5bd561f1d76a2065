"""The order-tracking story end to end, with real worker processes:
``python -m examples.order_tracking.demo`` (SQLite in ``var/``; ``QUEUEKIT_URL`` for
another broker, e.g. ``amqp://guest:guest@127.0.0.1:5672/``).

1. Three workers start: the ``OrderTracking`` manager (``-c 8``), the ``OrderStates``
   command handler and the ``DeviceHealth`` manager; waits are shortened to 0.5 s.
2. Order o-1 (two lines) and o-2 go to production; o-1's lines are picked, printed and
   packaged; printer-7 is registered.
3. The partner keeps saying "in production": checks that find no change go on (the
   stalled case). Then o-1 ships (the partner says so) and o-2 is canceled.
4. printer-7's health check runs every 0.5 s, one pending at a time; it is retired.
5. A late event for o-1 is dropped; ``worker processes list`` shows the instances.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from queuekit import Connection, connect
from queuekit.jobstore.base import ProcessInstance

from .events import (
    DeviceRegistered,
    DeviceRetired,
    OrderCanceled,
    OrderLinePackaged,
    OrderLinePicked,
    OrderLinePrinted,
    OrderSentToProduction,
)
from .tracking import DeviceHealth, OrderStates, OrderTracking

URL = os.environ.get("QUEUEKIT_URL", "sqlite:///var/orders.db")
PARTNER = Path("var/partner.json")
WORKERS = ("OrderTracking -c 8", "OrderStates", "DeviceHealth")


def instance(conn: Connection, manager: str, key: str) -> ProcessInstance | None:
    return next((i for i in conn.jobs.processes(manager) if i.key == key), None)


def wait(what: str, condition: Callable[[], object], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.1)
    print(f"- {what}")


def partner_says(states: dict[str, str]) -> None:
    PARTNER.write_text(json.dumps(states), encoding="utf-8")


def main() -> int:
    Path("var").mkdir(exist_ok=True)
    for leftover in Path("var").glob("orders.db*"):
        leftover.unlink()
    partner_says({"o-1": "in production", "o-2": "in production"})
    env = {**os.environ, "QUEUEKIT_URL": URL, "ORDER_CHECK_DELAY": "0.5",
           "HEALTH_CHECK_EVERY": "0.5", "PARTNER_FILE": str(PARTNER.resolve())}  # fmt: skip
    with connect(URL) as conn:
        for cls in (OrderTracking, OrderStates, DeviceHealth):
            conn.queue(cls.queue).purge()
        workers = [start(spec, env) for spec in WORKERS]
        print(f"started {len(workers)} workers on {conn.url.redacted()}")
        try:
            story(conn)
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                worker.wait(timeout=60)
        failed = conn.failed.list()
        for cls in (OrderTracking, OrderStates, DeviceHealth):  # a broker keeps queues
            conn.transport.delete(cls.queue)
    print("$ worker processes list")
    listing = [sys.executable, "-m", "queuekit", "processes", "list", "--url", URL]
    listed = subprocess.run(listing, env=env, check=False).returncode
    for entry in failed:
        print(f"failed store: {entry.queue} {entry.message_id}: {entry.reason}")
    return listed or int(bool(failed))


def start(spec: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``worker run`` one class of the example (``spec``: the class and its options)."""
    cls, *options = spec.split()
    target = f"examples.order_tracking.tracking:{cls}"
    return subprocess.Popen([sys.executable, "-m", "queuekit", "run", target, *options], env=env)


def story(conn: Connection) -> None:
    tracking, devices = OrderTracking(conn), DeviceHealth(conn)
    tracking.publish(OrderSentToProduction("o-1", ["front", "back"]))
    tracking.publish(OrderSentToProduction("o-2", ["mug"]))
    devices.publish(DeviceRegistered("printer-7"))
    wait("o-1 and o-2 tracked", lambda: len(conn.jobs.processes("OrderTracking")) == 2)
    for line in ("front", "back"):
        for event in (OrderLinePicked, OrderLinePrinted, OrderLinePackaged):
            tracking.publish(event("o-1", line))

    def stalled() -> bool:
        found = instance(conn, "OrderTracking", "o-1")
        return found is not None and found.state["unchanged"] >= 2

    wait("o-1 stalled: two checks found no change, and the checks go on", stalled)
    partner_says({"o-1": "shipped", "o-2": "in production"})
    tracking.publish(OrderCanceled("o-2"))

    def ended(key: str) -> Callable[[], bool]:
        return lambda: getattr(instance(conn, "OrderTracking", key), "completed", False)

    wait("o-1 shipped: its check saw it and completed the instance", ended("o-1"))
    wait("o-2 canceled", ended("o-2"))

    def checked_thrice() -> bool:
        found = instance(conn, "DeviceHealth", "printer-7")
        return found is not None and found.state["checks"] >= 3

    wait("printer-7 checked three times, one check pending at a time", checked_thrice)
    devices.publish(DeviceRetired("printer-7"))
    wait("printer-7 retired", lambda: getattr(instance(conn, "DeviceHealth", "printer-7"),
                                              "completed", False))  # fmt: skip
    late = tracking.publish(OrderLinePackaged("o-1", "front"))
    wait(f"a late event for o-1 ({late}) dropped", lambda: conn.queue(tracking.queue).depth() == 0)


if __name__ == "__main__":
    sys.exit(main())
