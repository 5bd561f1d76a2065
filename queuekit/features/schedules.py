"""Recurring jobs: a message published to a queue every interval, fired by its workers.

::

    conn.schedule("nightly-report", "reports", {"kind": "sales"}, every="1 day",
                  start=datetime(2026, 11, 23, 2, 0))
    worker schedule add nightly-report reports '{"kind": "sales"}' --every "1 day"
    conn.schedule("health-check", "health", {"device": 7}, cron="*/10 * * * *")
    worker schedule add health-check health '{"device": 7}' --cron "*/10 * * * *"

A schedule lives in the job store. Every worker of its queue checks for due runs with its
other periodic work (every half second; one cheap read when nothing is due), so runs fire
while at least one worker of the queue runs, whatever the broker. Firing is one job-store
transaction: the schedule moves to its next run and the due run goes into the delayed
store, from where it is sent like any delayed message. So a run is never fired twice by
two workers, and never lost between firing and sending. Runs missed while no worker ran
are not replayed: one run fires for them, then the schedule goes on from now. A ``cron``
schedule runs at each slot of its expression in its time zone (:mod:`.cron`, extra
``queuekit[cron]``), with the same guarantees: each slot fires once. Each run is
a fresh message (its own id), created at its run time, so it has the usual retries,
failed store and records.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..jobstore.base import Schedule, next_run_after
from ..spi.transport import Outgoing, SendOptions
from . import cron as crontab
from .delays import Delay, due_time
from .envelope import Message, Metadata, encode
from .signing import Signer

if TYPE_CHECKING:
    from .broker import Broker

log = logging.getLogger("queuekit")


def make_run(schedule: Schedule, run_time: float, signer: Signer | None = None) -> Outgoing:
    """The message of one run of ``schedule`` (signed for its queue by ``signer``)."""
    template = schedule.template
    meta = Metadata(
        name=template.get("name", ""),
        priority=template.get("priority"),
        headers=dict(template.get("headers") or {}),
        created_at=run_time,
    )
    options = SendOptions(priority=meta.priority)
    body = encode(Message(template["payload"], meta))
    if signer is not None:
        body = signer.sign(schedule.queue, body)
    return Outgoing(body, {}, options)


def add(
    broker: Broker,
    name: str,
    queue: str,
    payload: Any,
    every: Delay | None = None,
    *,
    cron: str | None = None,
    timezone: str | None = None,
    start: datetime | None = None,
    job_name: str = "",
    priority: int | None = None,
    headers: dict[str, str] | None = None,
) -> Schedule:
    """Create or replace schedule ``name``: first run at ``start`` (else now), then every
    ``every`` (seconds, ``"1 day"``, ``"PT6H"``); or with ``cron``, at its first slot at or
    after ``start`` (else after now), then at each slot, in ``timezone`` (default UTC)."""
    if (every is None) == (cron is None):
        raise ValueError("a schedule needs either every= or cron=, not both or neither")
    if timezone is not None and cron is None:
        raise ValueError("timezone= applies to cron= schedules (every= is an interval)")
    if isinstance(every, datetime):
        raise TypeError("every is an interval (seconds, '1 day', 'PT6H'), not a moment")
    interval = 0.0
    if every is not None:
        interval = due_time(every, now=0.0)
        if interval <= 0:
            raise ValueError(f"every must be more than 0 seconds, not {every!r}")
    if isinstance(payload, bytes | bytearray | memoryview):
        raise TypeError("a schedule's payload must be JSON (bytes are not kept in schedules)")
    broker.check_priority(priority)
    template = {"payload": payload, "name": job_name, "priority": priority,
                "headers": dict(headers or {})}  # fmt: skip
    first = time.time() if start is None else due_time(start)
    if cron is not None:
        crontab.check(cron, timezone)
        first = crontab.next_slot(cron, timezone, first if start is None else first - 1e-6)
    schedule = Schedule(name, queue, interval, first, template, cron, timezone)
    make_run(schedule, first)  # a payload JSON cannot carry is refused here, not at a run
    broker.jobs.set_schedule(schedule)
    warning = broker.jobstore_warning()
    if warning is not None:  # only workers on this host will ever fire it
        log.warning("schedule %r is kept where only workers on this host see it: %s",
                    name, warning)  # fmt: skip
    return schedule


def next_run(schedule: Schedule, now: float) -> float:
    """The first run time of a fired ``schedule`` after ``now``: its next interval or slot."""
    if schedule.cron is not None:
        return crontab.next_slot(schedule.cron, schedule.timezone, now)
    return next_run_after(schedule, now)


def fire(broker: Broker, queue: str) -> int:
    """Fire ``queue``'s due runs into the delayed store (a worker's periodic work)."""
    signer = broker.signer
    return broker.jobs.fire_schedules(queue, lambda s, t: make_run(s, t, signer), next_run)
