"""The job store's process instances, on SQLite, PostgreSQL and MariaDB alike: a step
commits all or nothing, once per message, on the version it read."""

from __future__ import annotations

import threading
import time

import pytest

from queuekit.jobstore.base import (
    COMMITTED,
    CONFLICT,
    DUPLICATE,
    JobStore,
    ProcessStep,
)
from queuekit.spi.transport import Outgoing
from tests.test_jobstore import Sent, clock, race, stores


def step(message: str | None, version: int, state: object, **fields: object) -> ProcessStep:
    values: dict[str, object] = {"completed": False, "timeouts": {}, "sends": ()}
    values.update(fields)
    return ProcessStep("Orders", "o-1", message, version, state, **values)  # type: ignore[arg-type]


def test_a_step_starts_an_instance_and_the_next_moves_it_on(store: JobStore) -> None:
    assert store.load_process("Orders", "o-1", "m-1") == (None, False)
    assert store.commit_process(step("m-1", 0, {"lines": []}, timeouts={"t": 5.0})) == COMMITTED
    instance, handled = store.load_process("Orders", "o-1", "m-1")
    assert handled and instance is not None
    assert (instance.state, instance.version, instance.completed) == ({"lines": []}, 1, False)
    assert instance.next_timeout == 5.0
    assert store.commit_process(step("m-2", 1, {"lines": ["a"]})) == COMMITTED
    instance, handled = store.load_process("Orders", "o-1", "m-3")
    assert not handled and instance is not None
    assert (instance.state, instance.version, instance.next_timeout) == ({"lines": ["a"]}, 2, None)


def test_a_message_is_handled_once_and_a_stale_version_changes_nothing(store: JobStore) -> None:
    assert store.commit_process(step("m-1", 0, {"n": 1})) == COMMITTED
    assert store.commit_process(step("m-1", 1, {"n": 99})) == DUPLICATE
    assert store.commit_process(step("m-2", 0, {"n": 99})) == CONFLICT  # it exists
    assert store.commit_process(step("m-2", 5, {"n": 99})) == CONFLICT  # not that version
    instance, handled = store.load_process("Orders", "o-1", "m-2")
    assert instance is not None and instance.state == {"n": 1} and not handled
    assert store.commit_process(step("m-2", 1, {"n": 2})) == COMMITTED


def test_sends_go_to_the_delayed_store_only_with_their_step(store: JobStore) -> None:
    due = time.time() - 1
    sends = [("checks", due, Outgoing(b"check-1"))]
    assert store.commit_process(step("m-1", 0, {}, sends=sends)) == COMMITTED
    assert store.commit_process(step("m-1", 1, {}, sends=[("checks", due, Outgoing(b"x"))])) == (
        DUPLICATE
    )
    assert store.commit_process(step("m-2", 7, {}, sends=[("checks", due, Outgoing(b"y"))])) == (
        CONFLICT
    )
    sent = Sent()
    store.forward_due(sent)
    assert sent.items == [("checks", b"check-1")]


def test_a_completed_instance_takes_no_more_steps_and_can_be_purged(store: JobStore) -> None:
    store.commit_process(step("m-1", 0, {}))
    assert store.commit_process(step("m-2", 1, {"done": True}, completed=True)) == COMMITTED
    assert store.commit_process(step("m-3", 2, {})) == CONFLICT
    instance, _ = store.load_process("Orders", "o-1", "m-3")
    assert instance is not None and instance.completed and instance.version == 2
    assert [i.key for i in store.processes("Orders", completed=True)] == ["o-1"]
    assert store.processes("Orders", completed=False) == []
    assert store.purge_processes("Orders", older_than=3600) == 0
    assert store.purge_processes("Orders") == 1
    assert store.processes() == []


def test_steps_racing_on_one_instance_commit_one_per_version(store_url: str) -> None:
    """Eight stores (connections), each adding its own ten messages to one counter with
    read, step, commit and retry on conflict: every message counts once, none is lost."""
    racers = stores(store_url, 8)
    racers[0].commit_process(step("start", 0, {"seen": []}))
    conflicts = [0]
    lock = threading.Lock()

    def stepper(i: int) -> None:
        for n in range(10):
            message = f"m-{i}-{n}"
            while True:
                instance, handled = racers[i].load_process("Orders", "o-1", message)
                assert instance is not None and not handled
                seen = [*instance.state["seen"], message]
                outcome = racers[i].commit_process(step(message, instance.version, {"seen": seen}))
                if outcome == COMMITTED:
                    break
                assert outcome == CONFLICT
                with lock:
                    conflicts[0] += 1

    try:
        race(len(racers), stepper)
        instance, _ = racers[0].load_process("Orders", "o-1", "-")
    finally:
        for one in racers:
            one.close()
    assert instance is not None
    assert sorted(instance.state["seen"]) == sorted(
        f"m-{i}-{n}" for i in range(8) for n in range(10)
    )
    assert instance.version == 81


def test_a_timeout_step_records_no_id_and_old_ids_are_forgotten(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert store.commit_process(step("m-1", 0, {}, timeouts={"t-1": 1.0})) == COMMITTED
    assert store.commit_process(step(None, 1, {"t": 1})) == COMMITTED  # a timeout's step
    assert store.commit_process(step(None, 2, {"t": 2})) == COMMITTED
    assert store.load_process("Orders", "o-1", "m-1")[1]
    assert store.purge_processes("Orders", older_than=60) == 0
    assert store.load_process("Orders", "o-1", "m-1")[1]  # not old enough to forget
    clock(monkeypatch, 120)
    assert store.purge_processes("Orders", older_than=60) == 0  # running: not deleted
    instance, handled = store.load_process("Orders", "o-1", "m-1")
    assert not handled and instance is not None and instance.version == 3
