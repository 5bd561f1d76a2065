"""The order-tracking story end to end, with real worker processes:
``python -m examples.order_tracking.demo`` (SQLite in ``var/``; ``QUEUEKIT_URL`` for
another broker, e.g. ``amqp://guest:guest@127.0.0.1:5672/``; ``--twice`` sends every event
twice, ``--workers 2`` starts two of each worker, ``--kill`` SIGKILLs an ``OrderTracking``
worker while the line events are in hand and starts another: on SQLite its messages come
back when their lease ends, ``?lease=2`` on the URL makes that quick).

1. Three workers start: the ``OrderTracking`` manager (``-c 8``), the ``OrderStates``
   command handler (it asks the fake print provider, ``var/partner.json``) and the
   ``DeviceHealth`` manager; waits are shortened to 0.5 s.
2. Order o-1 (two lines) and o-2 go to production; o-1's lines are picked, printed and
   packaged; printer-7 is registered.
3. The partner keeps saying "in production": checks that find no change go on (the
   stalled case). Then o-1 ships (the partner says so) and o-2 is canceled.
4. printer-7's health check runs every 0.5 s, one pending at a time; it is retired.
5. A late event for o-1 is dropped; once nothing is left to run, the provider's log shows
   no check chain going on after an order completed (at most the one check already on its
   way when it ended).
6. The timeline: what happened when, the provider's answers included; then
   ``worker processes list`` shows the instances.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from queuekit import Connection, Unsupported, connect
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

URL = os.environ.get("QUEUEKIT_URL", f"sqlite:///{Path('var/orders.db').resolve()}")
PARTNER = Path("var/partner.json")
WORKERS = ("OrderTracking -c 8", "OrderStates", "DeviceHealth")
#: What happened when: (seconds since the start, what), printed at the end.
TIMELINE: list[tuple[float, str]] = []
START = time.time()


def instance(conn: Connection, manager: str, key: str) -> ProcessInstance | None:
    return next((i for i in conn.jobs.processes(manager) if i.key == key), None)


def wait(what: str, condition: Callable[[], object], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.1)
    TIMELINE.append((time.time() - START, what))
    print(f"- {what}")


def partner_says(states: dict[str, str]) -> None:
    PARTNER.write_text(json.dumps(states), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--twice", action="store_true", help="send every event twice")
    parser.add_argument("--workers", type=int, default=1, help="of each class (default 1)")
    parser.add_argument("--kill", action="store_true",
                        help="SIGKILL an OrderTracking worker, start another")  # fmt: skip
    args = parser.parse_args()
    Path("var").mkdir(exist_ok=True)
    for leftover in [*Path("var").glob("orders.db*"), Path(f"{PARTNER}.log")]:
        leftover.unlink(missing_ok=True)
    partner_says({"o-1": "in production", "o-2": "in production"})
    env = {**os.environ, "QUEUEKIT_URL": URL, "ORDER_CHECK_DELAY": "0.5",
           "HEALTH_CHECK_EVERY": "0.5", "PARTNER_FILE": str(PARTNER.resolve())}  # fmt: skip
    with connect(URL) as conn:
        for cls in (OrderTracking, OrderStates, DeviceHealth):
            with contextlib.suppress(Unsupported):  # STOMP cannot; the demo deletes them
                conn.queue(cls.queue).purge()
        workers = [start(spec, env) for spec in WORKERS for _ in range(args.workers)]
        print(f"started {len(workers)} workers on {conn.url.redacted()}")

        def kill() -> None:  # workers[0] is an OrderTracking worker
            workers[0].kill()
            workers[0].wait()
            workers[0] = start(WORKERS[0], env)
            TIMELINE.append((time.time() - START, "SIGKILLed an OrderTracking worker"))

        try:
            story(conn, copies=2 if args.twice else 1, kill=kill if args.kill else None)
            asked_late = settle(conn)
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                worker.wait(timeout=60)
        failed = conn.failed.list()
        for cls in (OrderTracking, OrderStates, DeviceHealth):  # a broker keeps queues
            conn.transport.delete(cls.queue)
    print_timeline()
    for late in asked_late:
        print(f"asked again after completion: {late}")
    print("$ worker processes list")
    listing = [sys.executable, "-m", "queuekit", "processes", "list", "--url", URL]
    listed = subprocess.run(listing, env=env, check=False).returncode
    for entry in failed:
        print(f"failed store: {entry.queue} {entry.message_id}: {entry.reason}")
    return listed or int(bool(failed) or bool(asked_late))


def start(spec: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``worker run`` one class of the example (``spec``: the class and its options)."""
    cls, *options = spec.split()
    target = f"examples.order_tracking.tracking:{cls}"
    return subprocess.Popen([sys.executable, "-m", "queuekit", "run", target, *options], env=env)


def story(conn: Connection, copies: int, kill: Callable[[], None] | None) -> None:
    """``copies``: how many times each event is published (each copy its own message, as a
    producer that sends again after a timeout would); ``kill`` runs once the line events
    are sent."""
    tracking, devices = OrderTracking(conn), DeviceHealth(conn)

    def send(manager: OrderTracking | DeviceHealth, event: object, **options: Any) -> str:
        ids = [manager.publish(event, **options) for _ in range(copies)]
        TIMELINE.append((time.time() - START, f"sent {type(event).__name__} x{copies}"))
        return ids[0]

    send(tracking, OrderSentToProduction("o-1", ["front", "back"]))
    send(tracking, OrderSentToProduction("o-2", ["mug"]))
    send(devices, DeviceRegistered("printer-7"))
    wait("o-1 and o-2 tracked", lambda: len(conn.jobs.processes("OrderTracking")) == 2)
    for line in ("front", "back"):
        for event in (OrderLinePicked, OrderLinePrinted, OrderLinePackaged):
            send(tracking, event("o-1", line))
    if kill is not None:
        kill()

    def stalled() -> bool:
        found = instance(conn, "OrderTracking", "o-1")
        return found is not None and found.state["unchanged"] >= 2

    wait("o-1 stalled: two checks found no change, and the checks go on", stalled)
    partner_says({"o-1": "shipped", "o-2": "in production"})
    TIMELINE.append((time.time() - START, "the provider now says o-1 shipped"))
    send(tracking, OrderCanceled("o-2"))

    def ended(key: str) -> Callable[[], bool]:
        return lambda: getattr(instance(conn, "OrderTracking", key), "completed", False)

    wait("o-1 shipped: its check saw it and completed the instance", ended("o-1"))
    wait("o-2 canceled", ended("o-2"))

    def checked_thrice() -> bool:
        found = instance(conn, "DeviceHealth", "printer-7")
        return found is not None and found.state["checks"] >= 3

    wait("printer-7 checked three times, one check pending at a time", checked_thrice)
    send(devices, DeviceRetired("printer-7"))
    wait("printer-7 retired", lambda: getattr(instance(conn, "DeviceHealth", "printer-7"),
                                              "completed", False))  # fmt: skip
    late = send(tracking, OrderLinePackaged("o-1", "front"), record=True)
    wait(f"a late event for o-1 ({late}) dropped",
         lambda: getattr(conn.job(late), "state", None) == "done")  # fmt: skip


def settle(conn: Connection) -> list[str]:
    """Wait until nothing is due or queued (a broker that cannot count a queue, STOMP:
    nothing due), then the questions asked about an order after its instance completed
    that should not have been: a check already sent to ``OrderStates`` when the order ended
    may still ask once (a message on its way is not called back), but nothing after it,
    since its answer and every pending timeout are dropped."""
    queues = [conn.queue(cls.queue) for cls in (OrderTracking, OrderStates, DeviceHealth)]

    def idle() -> bool:
        try:
            return conn.jobs.next_due() is None and all(q.depth() == 0 for q in queues)
        except Unsupported:
            return conn.jobs.next_due() is None

    wait("nothing left to run", idle)
    ended = {i.key: i.updated_at for i in conn.jobs.processes("OrderTracking")}
    late = [a for a in asked() if a["at"] > ended[a["order"]]]
    return [f"{a['order']} at +{a['at'] - START:.1f}s" for a in late
            if sum(b["order"] == a["order"] for b in late) > 1]  # fmt: skip


def asked() -> list[dict[str, Any]]:
    """The fake provider's log: each question, when, and its answer."""
    log = Path(f"{PARTNER}.log")
    lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    return [json.loads(line) for line in lines]


def print_timeline() -> None:
    answers = [(a["at"] - START, f"provider asked about {a['order']}: {a['answer']}")
               for a in asked()]  # fmt: skip
    print("timeline (seconds since the start; a milestone when the demo saw it):")
    for at, what in sorted(TIMELINE + answers):
        print(f"  +{at:5.1f}s  {what}")


if __name__ == "__main__":
    sys.exit(main())
