"""The worker registry: the job-store contract on SQLite, PostgreSQL and MariaDB, and the
features-layer ``Registration`` a worker keeps its row fresh with.

Given workers registering, beating and leaving, the store lists who is alive; given a
workers limit, racing claimers on separate connections (hosts, in effect) never hold more
slots than the limit, and a dead worker's slot frees after the timeout.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuekit.features.registry import (
    OVER_LIMIT_EXIT,
    Registration,
    WorkersLimitReached,
    hostname,
    worker_timeout,
)
from queuekit.jobstore import open_jobstore
from queuekit.jobstore.base import JobStore, JobStoreError, WorkerInfo
from queuekit.spi.errors import ConfigurationError
from tests.test_jobstore import clock, race, stores


def info(queue: str = "q", host: str = "h1", pid: int = 1, **fields: object) -> WorkerInfo:
    return WorkerInfo(uuid.uuid4().hex, queue, host, pid, concurrency=1, started_at=time.time(),
                      **fields)  # type: ignore[arg-type]  # fmt: skip


# -- the job-store contract --------------------------------------------------------------------


def test_workers_register_beat_and_leave(store: JobStore) -> None:
    first, second, other = info(pid=1), info(host="h2", pid=2), info("other", pid=3)
    for worker in (first, second, other):
        assert store.register_worker(worker, timeout=30)
    assert [w.pid for w in store.workers("q")] == [1, 2]
    assert [w.pid for w in store.workers()] == [1, 2, 3]
    listed = store.workers("q")[1]
    assert (listed.id, listed.host, listed.concurrency, listed.slot) == (second.id, "h2", 1, False)
    assert listed.started_at == pytest.approx(second.started_at)
    assert abs(listed.last_seen - time.time()) < 60

    current = ["m-1", "m-2"]
    assert store.heartbeat_worker(first.id, processed=7, failed=2, current=current, rss=2**33)
    beat = store.workers("q")[0]
    assert (beat.processed, beat.failed, beat.current, beat.rss) == (7, 2, ("m-1", "m-2"), 2**33)
    assert store.heartbeat_worker(first.id, processed=8)
    assert store.workers("q")[0].current == ()

    store.deregister_worker(first.id)
    store.deregister_worker(first.id)
    assert [w.pid for w in store.workers("q")] == [2]
    assert not store.heartbeat_worker(first.id, processed=9)


def test_a_worker_not_heard_from_within_the_timeout_is_not_alive(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    quiet, beating = info(pid=1), info(pid=2)
    store.register_worker(quiet, timeout=30)
    store.register_worker(beating, timeout=30)
    clock(monkeypatch, 20)
    store.heartbeat_worker(beating.id, processed=1)
    clock(monkeypatch, 20)  # 40 s after the first registered, 20 s after the beat
    assert [w.pid for w in store.workers("q", timeout=30)] == [2]
    assert [w.pid for w in store.workers("q")] == [1, 2]  # listed, until a register clears it
    store.register_worker(info(pid=3), timeout=30)
    assert [w.pid for w in store.workers("q")] == [2, 3]


def test_a_limit_hands_out_that_many_slots(store: JobStore) -> None:
    holders = [info(pid=i) for i in range(2)]
    assert all(store.register_worker(w, timeout=30, limit=2) for w in holders)
    assert store.register_worker(info("other"), timeout=30, limit=2)  # per queue
    assert store.register_worker(info(pid=9), timeout=30)  # without a limit: no slot
    late = info(pid=3)
    assert not store.register_worker(late, timeout=30, limit=2)
    assert late.id not in {w.id for w in store.workers("q")}
    assert [(w.pid, w.slot) for w in store.workers("q")] == [(0, True), (1, True), (9, False)]
    store.deregister_worker(holders[0].id)
    assert store.register_worker(late, timeout=30, limit=2)


def test_a_dead_workers_slot_frees_after_the_timeout(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead, alive = info(pid=1), info(pid=2)
    store.register_worker(dead, timeout=30, limit=2)
    store.register_worker(alive, timeout=30, limit=2)
    assert not store.register_worker(info(pid=3), timeout=30, limit=2)
    clock(monkeypatch, 20)
    store.heartbeat_worker(alive.id, processed=0)
    clock(monkeypatch, 11)  # the dead one silent for 31 s, the live one for 11 s
    assert not store.register_worker(info(pid=3), timeout=60, limit=2)  # not dead for 60 s
    assert store.register_worker(info(pid=3), timeout=30, limit=2)
    assert [w.pid for w in store.workers("q")] == [2, 3]  # the dead one is cleaned up
    assert not store.heartbeat_worker(dead.id, processed=5)  # it must register again


def test_registering_again_replaces_the_row(store: JobStore) -> None:
    worker = info()
    assert store.register_worker(worker, timeout=30, limit=1)
    assert store.register_worker(worker, timeout=30, limit=1)  # its own slot does not count
    assert len(store.workers("q")) == 1


def test_claimers_racing_never_hold_more_slots_than_the_limit(store_url: str) -> None:
    """Eight workers on their own connections claim, hold and give back slots of a queue
    whose limit is 3, over and over: the slots fill up, at no moment do more than 3 hold
    one, and every racer gets its turns."""
    racers, limit, rounds = stores(store_url, 8), 3, 6
    changed = threading.Condition()
    holding, most = 0, 0
    turns = [0] * len(racers)

    def full() -> bool:
        return holding >= limit

    def claimer(i: int) -> None:
        nonlocal holding, most
        store, won = racers[i], 0
        deadline = time.monotonic() + 90
        while won < rounds and time.monotonic() < deadline:
            worker = info(pid=i)
            if not store.register_worker(worker, timeout=60, limit=limit):
                continue
            held = sum(w.slot for w in store.workers("q"))  # as the database sees it
            with changed:
                holding += 1
                most = max(most, held)
                changed.notify_all()
                # Hold the slot until the queue is full, so the others race for a full queue
                # and then, all at once, for the slots it frees (the timeout only ends the
                # last rounds, when too few racers are left to fill it).
                changed.wait_for(full, timeout=0.2)
                holding -= 1
            store.deregister_worker(worker.id)
            won += 1
        turns[i] = won

    try:
        race(len(racers), claimer)
        assert racers[0].workers("q") == []
    finally:
        for one in racers:
            one.close()
    assert most == limit
    assert turns == [rounds] * len(racers)


# -- the features layer: Registration ----------------------------------------------------------


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[JobStore]:
    opened = open_jobstore(f"sqlite:///{tmp_path}/jobs.db")
    try:
        yield opened
    finally:
        opened.close()


class Stops:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)


def test_the_hostname_and_timeout_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QUEUEKIT_HOSTNAME", "host-b")
    monkeypatch.setenv("QUEUEKIT_WORKER_TIMEOUT", "4.5")
    assert (hostname(), worker_timeout()) == ("host-b", 4.5)
    monkeypatch.setenv("QUEUEKIT_WORKER_TIMEOUT", "soon")
    with pytest.raises(ConfigurationError, match="QUEUEKIT_WORKER_TIMEOUT"):
        worker_timeout()


def test_a_registration_beats_at_most_every_interval_and_leaves(sqlite_store: JobStore) -> None:
    registration = Registration(sqlite_store, "q", stop=Stops(), timeout=30)
    registration.register(lambda: False)
    [row] = sqlite_store.workers("q")
    assert (row.host, row.slot, row.processed) == (hostname(), False, 0)
    registration.beat(processed=2, rss=lambda: 500)  # just registered: not written
    assert sqlite_store.workers("q")[0].processed == 0
    registration.every = 0.0
    registration.beat(processed=3, rss=lambda: 1000)
    registration.every = 60.0
    registration.beat(processed=4, rss=lambda: 2000)  # within the interval: not written
    [row] = sqlite_store.workers("q")
    assert (row.processed, row.rss) == (3, 1000)
    registration.deregister()
    assert sqlite_store.workers("q") == []


def test_over_the_limit_registering_raises_and_names_the_holders(
    sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for host, pid in (("host-a", 11), ("host-b", 22)):
        sqlite_store.register_worker(info(host=host, pid=pid), timeout=30, limit=2)
    registration = Registration(sqlite_store, "q", stop=Stops(), limit=2, timeout=30)
    with pytest.raises(WorkersLimitReached) as raised:
        registration.register(lambda: False)
    assert raised.value.exit_code == OVER_LIMIT_EXIT
    assert str(raised.value) == (
        "queue 'q' has its limit of 2 workers already (host-a pid 11, host-b pid 22)"
    )


def test_waiting_for_a_slot_says_so_once_and_gives_up_when_stopped(
    sqlite_store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    sqlite_store.register_worker(info(host="host-a", pid=11), timeout=30, limit=1)
    registration = Registration(sqlite_store, "q", stop=Stops(), limit=1, wait=True, timeout=30)
    asked = 0

    def stopping() -> bool:
        nonlocal asked
        asked += 1
        return asked > 10  # a few polls, then a stop signal

    with caplog.at_level(logging.WARNING, "queuekit"):
        assert not registration.register(stopping)
    waiting = [r.getMessage() for r in caplog.records if "waits for a slot" in r.getMessage()]
    assert waiting == [
        "queue 'q' has its limit of 1 worker already (host-a pid 11): this worker waits for a slot"
    ]
    assert len(sqlite_store.workers("q")) == 1


def test_a_worker_presumed_dead_registers_again_or_stops_when_its_slot_is_gone(
    sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    stops = Stops()
    registration = Registration(sqlite_store, "q", stop=stops, limit=1, timeout=30)
    registration.register(lambda: False)
    registration.every = 0.0
    clock(monkeypatch, 31)  # it seemed dead (a long pause): another worker takes the slot
    assert sqlite_store.register_worker(info(pid=99), timeout=30, limit=1)
    registration.beat(processed=1)
    assert len(stops.reasons) == 1 and "slot" in stops.reasons[0]

    free = Registration(sqlite_store, "r", stop=stops, timeout=30)
    free.register(lambda: False)
    free.every = 0.0
    sqlite_store.deregister_worker(free.info.id)  # cleaned up as dead by someone else
    free.beat(processed=2)
    assert [w.processed for w in sqlite_store.workers("r")] == [0]  # registered again
    assert len(stops.reasons) == 1


def test_a_failing_job_store_is_logged_and_never_stops_an_unlimited_worker(
    sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> bool:
        raise JobStoreError("database is locked", recoverable=True)

    stops = Stops()
    registration = Registration(sqlite_store, "q", stop=stops, timeout=30)
    registration.every = 0.0
    monkeypatch.setattr(sqlite_store, "register_worker", broken)
    monkeypatch.setattr(sqlite_store, "heartbeat_worker", broken)
    with caplog.at_level(logging.WARNING, "queuekit"):
        assert registration.register(lambda: False)
        registration.beat(processed=1)
    assert stops.reasons == []
    assert [r.getMessage().count("database is locked") for r in caplog.records] == [1, 1]
    limited = Registration(sqlite_store, "q", stop=stops, limit=1, timeout=30)
    with pytest.raises(JobStoreError):  # a limit cannot be kept without the store
        limited.register(lambda: False)
