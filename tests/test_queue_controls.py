"""Paused queues and throughput buckets in the job store, on SQLite, PostgreSQL and MariaDB,
and the worker's meter that fills the buckets."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

from queuekit import Connection
from queuekit.features.throughput import Meter, minute_of, series
from queuekit.jobstore import open_jobstore
from queuekit.jobstore.base import JobStore, ThroughputBucket
from tests.support import wait_until
from tests.workers.harness import run_worker, sqlite_url


def test_a_queue_is_paused_until_resumed(store: JobStore) -> None:
    # Given an empty store, When a queue is paused twice
    assert store.paused_queues() == {}
    store.pause_queue("q1")
    first = store.paused_queues()["q1"]
    store.pause_queue("q1")
    # Then it is paused once, since the first time
    assert store.paused_queues() == {"q1": first}
    # When it is resumed, Then it is no longer paused, and resuming again says so
    assert store.resume_queue("q1") is True
    assert store.resume_queue("q1") is False
    assert store.paused_queues() == {}


def test_throughput_counts_add_up_per_queue_and_minute(store: JobStore) -> None:
    # Given counts added twice to one minute and once to the next, on two queues
    store.add_throughput([ThroughputBucket("a", 600, 3, 1), ThroughputBucket("b", 600, 5, 0)])
    store.add_throughput([ThroughputBucket("a", 600, 2, 0), ThroughputBucket("a", 660, 7, 2)])
    # Then they are summed per bucket, by queue then minute
    assert store.throughput(0) == [
        ThroughputBucket("a", 600, 5, 1),
        ThroughputBucket("a", 660, 7, 2),
        ThroughputBucket("b", 600, 5, 0),
    ]
    assert store.throughput(660) == [ThroughputBucket("a", 660, 7, 2)]
    assert store.throughput(0, "b") == [ThroughputBucket("b", 600, 5, 0)]
    # When the old ones are pruned, Then only the newer remain
    assert store.prune_throughput(660) == 2
    assert store.throughput(0) == [ThroughputBucket("a", 660, 7, 2)]


def test_concurrent_writers_lose_no_count(store_url: str) -> None:
    # Given six stores (connections) adding to one bucket at once
    racers = [open_jobstore(store_url) for _ in range(6)]
    barrier = threading.Barrier(len(racers))
    errors: list[BaseException] = []

    def add(racer: JobStore) -> None:
        try:
            barrier.wait(timeout=30)
            for _ in range(10):
                racer.add_throughput([ThroughputBucket("race", 120, 1, 1)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(r,)) for r in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    try:
        # Then every count is there
        assert not errors, errors
        assert racers[0].throughput(0, "race") == [ThroughputBucket("race", 120, 60, 60)]
    finally:
        for racer in racers:
            racer.close()


def test_a_meter_writes_the_increase_per_minute_in_one_flush(store: JobStore) -> None:
    # Given a worker's meter that saw its totals grow across two minutes
    meter, start = Meter(store, "work"), minute_of(time.time()) - 120
    meter.tally(3, 0, now=start + 10.0)
    meter.tally(5, 1, now=start + 50.0)
    meter.tally(9, 1, now=start + 100.0)
    assert store.throughput(0) == []  # nothing written before the flush
    # When it flushes, twice
    meter.flush()
    meter.flush()
    # Then each minute has the increase seen in it, written once
    assert store.throughput(0) == [
        ThroughputBucket("work", start, 5, 1),
        ThroughputBucket("work", start + 60, 4, 0),
    ]


def test_series_fills_minutes_without_a_bucket_with_zeros() -> None:
    buckets = [ThroughputBucket("a", 120, 4, 1), ThroughputBucket("zz", 120, 9, 9)]
    (only,) = series(buckets, ["a"], 60.0, 179.0)
    assert (only.start, only.processed, only.failed) == (60, (0, 4), (0, 1))
    assert minute_of(179.9) == 120


def test_a_worker_takes_nothing_while_its_queue_is_paused_and_counts_its_throughput(
    conn: Connection, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="queuekit.worker")
    done: list[int] = []
    queue = conn.queue(name)
    # Given a paused queue with two messages, and a worker on it
    conn.jobs.pause_queue(name)
    queue.publish_many([{"n": 1}, {"n": 2}])
    worker = threading.Thread(target=queue.dispatch, args=(lambda m: done.append(m.payload["n"]),),
                              kwargs={"max_messages": 2, "max_seconds": 60,
                                      "handle_signals": False})  # fmt: skip
    worker.start()
    try:
        # Then it says it is paused, and over three of its pause checks takes nothing
        wait_until(lambda: "is paused" in caplog.text, 10, "the worker to see the pause")
        seen = time.monotonic()
        while time.monotonic() - seen < 3.0:
            assert done == []
            time.sleep(0.05)
        # When the queue is resumed, Then it takes both
        assert conn.jobs.resume_queue(name)
        wait_until(lambda: sorted(done) == [1, 2], 10, "both messages")
    finally:
        worker.join(timeout=30)
    # And the throughput it wrote when it stopped counts them
    assert sum(b.processed for b in conn.jobs.throughput(0, name)) == 2


def test_worker_pause_and_resume_show_in_worker_status(tmp_path: Path) -> None:
    url, env = sqlite_url(tmp_path / "q.db"), {"QUEUEKIT_JOBSTORE": sqlite_url(tmp_path / "j.db")}

    def paused() -> bool:
        done = run_worker("status", "--url", url, "--json", "mail", cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
        (row,) = json.loads(done.stdout)["queues"]
        return bool(row["paused"])

    assert paused() is False
    assert run_worker("pause", "mail", "--url", url, cwd=tmp_path, env=env).returncode == 0
    assert paused() is True
    table = run_worker("status", "--url", url, "mail", cwd=tmp_path, env=env).stdout
    assert "paused" in table.splitlines()[2].split()
    resumed = run_worker("resume", "mail", "--url", url, cwd=tmp_path, env=env)
    assert (resumed.returncode, resumed.stderr.strip()) == (0, "mail: resumed")
    assert paused() is False
    again = run_worker("resume", "mail", "--url", url, cwd=tmp_path, env=env)
    assert again.stderr.strip() == "mail: was not paused"
