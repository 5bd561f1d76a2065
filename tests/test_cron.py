"""Cron schedules: slots in a time zone, each fired once across workers, missed ones skipped."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import pytest

from queuekit import Connection, connect
from queuekit.features import schedules
from queuekit.features.cron import next_slot
from queuekit.jobstore import open_jobstore
from queuekit.jobstore.base import JobStore, Schedule
from tests.support import FEATURE_BROKERS, feature_connection
from tests.workers.harness import run_worker

EVERY_SECOND = "* * * * * *"  # croniter's sixth field: seconds


@pytest.fixture(params=FEATURE_BROKERS)
def conn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Connection]:
    yield from feature_connection(request.param, tmp_path)


def test_slots_are_wall_clock_times_in_the_schedules_time_zone() -> None:
    winter = datetime(2027, 1, 10, tzinfo=UTC).timestamp()
    summer = datetime(2027, 7, 10, tzinfo=UTC).timestamp()
    assert (
        next_slot("0 9 * * *", "Europe/Paris", winter)
        == datetime(2027, 1, 10, 8, tzinfo=UTC).timestamp()
    )
    assert (
        next_slot("0 9 * * *", "Europe/Paris", summer)
        == datetime(2027, 7, 10, 7, tzinfo=UTC).timestamp()
    )
    assert next_slot("0 9 * * *", None, winter) == datetime(2027, 1, 10, 9, tzinfo=UTC).timestamp()
    on_the_slot = datetime(2027, 1, 10, 9, tzinfo=UTC).timestamp()
    assert next_slot("*/10 * * * *", None, on_the_slot) == on_the_slot + 600  # strictly after


def test_a_cron_schedule_starts_at_its_first_slot(conn: Connection, name: str) -> None:
    start = datetime(2030, 1, 1, 9, 5, tzinfo=UTC)
    item = conn.schedule("health", name, {"device": 7}, cron="*/10 * * * *",
                         timezone="Europe/Paris", start=start)  # fmt: skip
    assert item.next_run == datetime(2030, 1, 1, 9, 10, tzinfo=UTC).timestamp()
    exact = conn.schedule("exact", name, 1, cron="*/10 * * * *", start=start.replace(minute=0))
    assert exact.next_run == start.replace(minute=0).timestamp()  # a slot at start is the first
    [listed, _] = sorted(conn.schedules(), key=lambda s: s.name != "health")
    assert (listed.cron, listed.timezone, listed.every) == ("*/10 * * * *", "Europe/Paris", 0.0)


def test_bad_cron_schedules_are_refused(conn: Connection, name: str) -> None:
    with pytest.raises(ValueError, match="not a cron expression"):
        conn.schedule("x", name, 1, cron="61 * * * *")
    with pytest.raises(ValueError, match="unknown time zone"):
        conn.schedule("x", name, 1, cron="* * * * *", timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="either every= or cron="):
        conn.schedule("x", name, 1, every=60, cron="* * * * *")
    with pytest.raises(ValueError, match="either every= or cron="):
        conn.schedule("x", name, 1)
    with pytest.raises(ValueError, match="timezone= applies"):
        conn.schedule("x", name, 1, every=60, timezone="UTC")
    assert conn.schedules() == []


def test_three_workers_fire_each_slot_once(conn: Connection, name: str) -> None:
    conn.schedule("tick", name, "tick", cron=EVERY_SECOND)
    slots: list[float] = []
    url, jobs = conn.url.render(reveal=True), conn.jobs.url.render(reveal=True)

    def worker() -> None:
        with connect(url, jobstore=jobs) as own:
            own.queue(name).dispatch(lambda m: slots.append(m.metadata.created_at),
                                     max_seconds=3.5, handle_signals=False)  # fmt: skip

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(slots) >= 2, slots
    assert len(set(slots)) == len(slots), f"a slot fired twice: {sorted(slots)}"
    ordered = sorted(slots)
    assert all(b - a == 1.0 for a, b in pairwise(ordered)), ordered


def test_three_stores_firing_at_once_fire_each_slot_once(store_url: str) -> None:
    """Three workers (hosts, each with its own store) fire a per-second cron schedule for
    2.5 s on every job-store database: the store's transaction fires each slot once."""
    stores = [open_jobstore(store_url) for _ in range(3)]
    try:
        first = next_slot(EVERY_SECOND, None, time.time())
        stores[0].set_schedule(Schedule("tick", "q", 0.0, first, {"payload": 1}, EVERY_SECOND))
        until = first + 2.5

        def fire(store: JobStore) -> None:
            while time.time() < until:
                store.fire_schedules("q", schedules.make_run, schedules.next_run)
                time.sleep(0.01)

        threads = [threading.Thread(target=fire, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sent: list[float] = []
        while stores[1].next_due() is not None:
            stores[1].forward_due(
                lambda queue, batch: sent.extend(
                    json.loads(m.body)["metadata"]["created_at"] for m in batch
                )
            )
        assert sorted(sent) == [first, first + 1, first + 2], sent
    finally:
        for store in stores:
            store.close()


def test_missed_slots_are_not_replayed(conn: Connection, name: str) -> None:
    behind = time.time() - 600  # ten minutes of per-minute slots missed while no worker ran
    conn.jobs.set_schedule(Schedule("m", name, 0.0, behind, {"payload": "m"}, "* * * * *"))
    seen: list[object] = []
    conn.queue(name).dispatch(lambda m: seen.append(m.payload), max_seconds=0.6)
    assert seen == ["m"]
    [moved] = conn.schedules()
    assert time.time() < moved.next_run <= time.time() + 60
    assert moved.next_run % 60 == 0


def test_worker_schedule_add_cron_from_the_command_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/q.db"
    added = run_worker("schedule", "add", "health-check", "health", '{"device": 7}', "--cron",
                       "*/10 * * * *", "--timezone", "Europe/Paris", "--start",
                       "2030-01-01T09:05:00+00:00", "--url", url, cwd=tmp_path)  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "health-check: cron '*/10 * * * *' Europe/Paris on 'health'" in added.stdout
    listed = run_worker("schedule", "list", "--url", url, cwd=tmp_path)
    assert "health-check\thealth\tcron '*/10 * * * *' Europe/Paris\tnext " in listed.stdout
    assert listed.stdout.rstrip().endswith('{"device": 7}')
    bad = run_worker("schedule", "add", "x", "health", "1", "--cron", "nope", "--url", url,
                     cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2 and "not a cron expression" in bad.stderr, bad.stderr
    both = run_worker("schedule", "add", "x", "health", "1", "--cron", "* * * * *", "--every",
                      "60", "--url", url, cwd=tmp_path)  # fmt: skip
    assert both.returncode == 2 and "not allowed with" in both.stderr, both.stderr
