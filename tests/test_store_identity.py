"""Messages that depend on the job store carry its identity; a worker on another store
refuses them loudly, and nothing is lost (in process; ``tests/test_job_features.py`` runs the
same with ``worker run`` processes on every broker)."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuekit import Connection, JobRecord, Message, connect
from queuekit.features.envelope import decode
from tests.workers.harness import sqlite_url
from tests.workers.transports import NODELAY

SAFETY = 20.0


@pytest.fixture
def broker() -> str:
    """An in-process broker whose keys live in the job store (no native dedup)."""
    return f"{NODELAY}://{uuid.uuid4().hex}"


@pytest.fixture
def producer(broker: str, tmp_path: Path) -> Iterator[Connection]:
    with connect(broker, jobstore=sqlite_url(tmp_path / "producer.db")) as connection:
        yield connection


def published(conn: Connection, queue: str) -> list[Message]:
    """What waits on ``queue`` (taken off it)."""
    found = []
    while (delivery := conn.transport.receive(queue, 0.1)) is not None:
        found.append(decode(delivery.body))
        conn.transport.ack(delivery)
    return found


def test_only_messages_that_depend_on_the_store_carry_its_identity(
    producer: Connection, name: str
) -> None:
    queue = producer.queue(name)
    queue.publish("plain")
    queue.publish("keyed", key="k")
    queue.publish("once", key="o", dedup="ever")
    queue.publish("grouped", group="g")
    queue.publish("recorded", record=True)
    queue.publish_many(["bulk-recorded"], record=True)
    stores = {m.payload: m.metadata.store for m in published(producer, name)}
    me = producer.jobs.identity()
    assert stores == {"plain": None, "keyed": me, "once": me, "grouped": me,
                      "recorded": me, "bulk-recorded": me}  # fmt: skip


def test_a_worker_on_another_store_refuses_them_and_nothing_is_lost(
    producer: Connection, broker: str, tmp_path: Path, name: str
) -> None:
    # Given messages registered in the producer's store, and a plain one
    queue = producer.queue(name)
    ids = [queue.publish("keyed", key="k"), queue.publish("grouped", group="g"),
           queue.publish("recorded", record=True)]  # fmt: skip
    queue.publish("plain")
    # When a worker on another store works the queue
    ran: list[object] = []
    with connect(broker, jobstore=sqlite_url(tmp_path / "worker.db")) as worker:
        worker.queue(name).dispatch(lambda m: ran.append(m.payload), max_messages=4,
                                    max_seconds=SAFETY, handle_signals=False)  # fmt: skip
        # Then the plain one runs, the others wait in its failed store, saying why
        assert ran == ["plain"]
        refused = worker.failed.list(name)
        assert [f.message_id for f in refused] == ids
        for entry in refused:
            assert f"registered in job store {producer.jobs.identity()}" in entry.reason
            assert f"this worker uses job store {worker.jobs.identity()}" in entry.reason
            assert "QUEUEKIT_JOBSTORE" in entry.reason
        assert "key 'k'" in refused[0].reason and "serial group 'g'" in refused[1].reason
        # When they are retried from that store: they belong to it now and run there
        assert all(worker.failed.retry(entry.id) for entry in refused)
        worker.queue(name).dispatch(lambda m: ran.append(m.payload), max_messages=3,
                                    max_seconds=SAFETY, handle_signals=False)  # fmt: skip
        assert sorted(ran) == ["grouped", "keyed", "plain", "recorded"]
        assert worker.failed.list(name) == []
        record = JobRecord.load(ids[2], connection=worker)
        assert record is not None and record.state == "done"


def test_job_record_load_reads_the_store_of_the_connection_and_writes_nothing_else(
    broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # Given a connection to a server broker with the default job store, in an empty cwd
    cwd = tmp_path / "app"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("QUEUEKIT_JOBSTORE", raising=False)
    with connect(broker) as conn:
        job_id = conn.queue(name).publish({"n": 1}, record=True)
        # When the record is loaded, Then it is the one the connection wrote
        record = JobRecord.load(job_id, connection=conn)
        assert record is not None and record.state == "queued"
    assert os.listdir(cwd) == []  # no stray database in the working directory


def test_a_worker_names_its_store_and_warns_when_it_is_per_host_for_a_remote_broker(
    caplog: pytest.LogCaptureFixture, state_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QUEUEKIT_JOBSTORE", raising=False)
    caplog.set_level(logging.INFO, logger="queuekit.worker")
    # Given a broker on another host (to the URL) and the per-host default store
    with connect(f"{NODELAY}://rabbit.example.com") as conn:
        conn.queue("q").dispatch(lambda m: None, max_messages=0, handle_signals=False)
        identity = conn.jobs.identity()
    # Then the worker says which store it uses, and that other hosts cannot share it
    assert f"job store sqlite:///{state_home}/queuekit/jobs-" in caplog.text
    assert f"(id {identity})" in caplog.text
    [warning] = [r for r in caplog.records if "this host's default" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert "QUEUEKIT_JOBSTORE" in warning.getMessage()
    # On this host, or with a configured store, there is nothing to warn about
    caplog.clear()
    for url in (f"{NODELAY}://localhost", f"{NODELAY}://127.0.0.1:5672"):
        with connect(url) as conn:
            conn.queue("q").dispatch(lambda m: None, max_messages=0, handle_signals=False)
    monkeypatch.setenv("QUEUEKIT_JOBSTORE", f"sqlite:///{state_home}/shared.db")
    with connect(f"{NODELAY}://rabbit.example.com") as conn:
        conn.queue("q").dispatch(lambda m: None, max_messages=0, handle_signals=False)
    assert not [r for r in caplog.records if "job store" in r.getMessage().lower()
                and r.levelno == logging.WARNING]  # fmt: skip


def test_a_schedule_kept_in_a_per_host_store_for_a_remote_broker_is_warned_about(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QUEUEKIT_JOBSTORE", raising=False)
    with connect(f"{NODELAY}://rabbit.example.com") as conn:
        conn.schedule("digest", "mail", {"n": 1}, every="1 day")
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "schedule 'digest'" in warning and "QUEUEKIT_JOBSTORE" in warning
