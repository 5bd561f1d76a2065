"""Recurring jobs: schedules in the job store, fired by the workers of their queue."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from queuekit import Connection, Message, Unsupported, connect
from queuekit.features.schedules import make_run, next_run
from queuekit.jobstore import open_jobstore
from queuekit.jobstore.base import JobStore, Schedule, next_run_after
from queuekit.spi.transport import SendOptions
from tests.support import FEATURE_BROKERS, feature_connection
from tests.workers.harness import run_worker


@pytest.fixture(params=FEATURE_BROKERS)
def conn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Connection]:
    yield from feature_connection(request.param, tmp_path)


def test_a_due_run_fires_once_and_the_schedule_moves_on(conn: Connection, name: str) -> None:
    item = conn.schedule("tick", name, {"kind": "tick"}, every="1 hour", job_name="Ticker")
    runs: list[Message] = []
    conn.queue(name).dispatch(runs.append, max_seconds=1.2)
    [run] = runs
    assert (run.payload, run.metadata.name) == ({"kind": "tick"}, "Ticker")
    assert run.metadata.created_at == item.next_run  # a run is created at its run time
    [moved] = conn.schedules()
    assert moved.next_run == item.next_run + 3600


def test_two_workers_never_fire_a_run_twice(conn: Connection, name: str) -> None:
    for n in range(10):
        conn.schedule(f"s{n}", name, n, every="1 hour")
    runs: list[object] = []
    url, jobs = conn.url.render(reveal=True), conn.jobs.url.render(reveal=True)

    def worker() -> None:
        with connect(url, jobstore=jobs) as own:
            own.queue(name).dispatch(lambda m: runs.append(m.payload),
                                     max_seconds=1.5, handle_signals=False)  # fmt: skip

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(runs) == list(range(10))  # type: ignore[type-var]


def test_a_later_start_waits_and_missed_runs_are_not_replayed(conn: Connection, name: str) -> None:
    later = datetime.now() + timedelta(hours=1)
    item = conn.schedule("later", name, 1, every="1 day", start=later)
    assert item.next_run == pytest.approx(later.timestamp())
    assert conn.queue(name).dispatch(lambda m: None, max_seconds=0.6) == 0
    behind = Schedule("behind", name, 10.0, time.time() - 95, {"payload": 2})
    conn.jobs.set_schedule(behind)  # ten runs were missed while no worker ran
    seen: list[object] = []
    conn.queue(name).dispatch(lambda m: seen.append(m.payload), max_seconds=0.6)
    assert seen == [2]
    [moved] = [s for s in conn.schedules() if s.name == "behind"]
    assert moved.next_run == pytest.approx(behind.next_run + 100)


def test_schedules_are_listed_replaced_and_removed(conn: Connection, name: str) -> None:
    conn.schedule("b", name, 1, every=60)
    conn.schedule("a", name, 2, every="PT1H")
    conn.schedule("b", name, 3, every="1 day")  # replaces
    assert [(s.name, s.every, s.template["payload"]) for s in conn.schedules()] == [
        ("a", 3600.0, 2),
        ("b", 86400.0, 3),
    ]
    assert conn.unschedule("a") and not conn.unschedule("a")
    assert [s.name for s in conn.schedules()] == ["b"]


def test_bad_schedules_are_refused_where_they_are_written(conn: Connection, name: str) -> None:
    with pytest.raises(ValueError, match="more than 0"):
        conn.schedule("x", name, 1, every=0)
    with pytest.raises(TypeError, match="interval"):
        conn.schedule("x", name, 1, every=datetime.now())
    with pytest.raises(TypeError, match="JSON"):
        conn.schedule("x", name, b"raw", every=1)
    with pytest.raises(TypeError, match="JSON"):
        conn.schedule("x", name, {1, 2}, every=1)
    if not conn.transport.capabilities.priority:
        with pytest.raises(Unsupported):
            conn.schedule("x", name, 1, every=1, priority=5)
    assert conn.schedules() == []


def test_next_run_after_skips_to_the_first_future_run() -> None:
    item = Schedule("s", "q", 10.0, 100.0, {"payload": 1})
    assert next_run_after(item, 100.0) == 110.0
    assert next_run_after(item, 105.0) == 110.0
    assert next_run_after(item, 195.0) == 200.0
    assert make_run(item, 100.0).body.startswith(b'{"payload":1,')
    urgent = Schedule("s", "q", 10.0, 100.0, {"payload": 1, "priority": 200})
    assert make_run(urgent, 100.0).options == SendOptions(priority=200)  # its band, at once


def test_firing_races_on_every_job_store(store_url: str) -> None:
    """Four stores (hosts) fire one queue's schedules at once: each run fires once."""
    stores = [open_jobstore(store_url) for _ in range(4)]
    try:
        past = time.time() - 0.5
        for n in range(20):
            stores[0].set_schedule(Schedule(f"s{n}", "q", 3600.0, past, {"payload": n}))
        barrier = threading.Barrier(len(stores))
        fired: list[int] = []

        def fire(store: JobStore) -> None:
            barrier.wait()
            fired.append(store.fire_schedules("q", make_run, next_run))

        threads = [threading.Thread(target=fire, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(fired) == 20
        sent: list[bytes] = []
        stores[1].forward_due(lambda queue, batch: sent.extend(m.body for m in batch))
        assert sorted(json.loads(b)["payload"] for b in sent) == list(range(20))
        assert all(s.next_run > time.time() for s in stores[2].schedules())
    finally:
        for store in stores:
            store.close()


def test_worker_schedule_cli_round_trip(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/q.db"
    added = run_worker("schedule", "add", "digest", "mail", '{"to": "team"}', "--every",
                       "1 day", "--start", "2030-01-01T09:00:00", "--url", url,
                       cwd=tmp_path)  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "every 86400s on 'mail', next 2030-01-01T09:00:00" in added.stdout
    listed = run_worker("schedule", "list", "--url", url, cwd=tmp_path)
    assert 'digest\tmail\tevery 86400s\tnext 2030-01-01T09:00:00\t{"to": "team"}' in listed.stdout
    bad = run_worker("schedule", "add", "x", "--queue", "mail", "--payload", "{", "--every",
                     "1", "--url", url, cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2 and "Expecting property name" in bad.stderr, bad.stderr
    removed = run_worker("schedule", "remove", "digest", "--url", url, cwd=tmp_path)
    assert removed.returncode == 0, removed.stderr
    again = run_worker("schedule", "remove", "digest", "--url", url, cwd=tmp_path)
    assert again.returncode == 2 and "no schedule digest" in again.stderr
