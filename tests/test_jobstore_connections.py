"""Connections and workers on a job store in PostgreSQL or MariaDB (SQLite beside them).

A worker on a broker without native delay or dedup (and on sqlite://) writes records,
dead letters, keys, delays and serial groups into the database; a second store opened on
the same URL (another host, in effect) reads them back.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from queuekit import Message, PermanentError, connect
from queuekit.jobstore import open_jobstore
from tests.support import GroupLog, work_in_threads
from tests.workers.transports import NODELAY

SAFETY = 20.0


@pytest.fixture(params=["nodedup", "sqlite"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/queues.db"
    return f"{NODELAY}://{uuid.uuid4().hex}"


def test_a_worker_keeps_records_dead_letters_keys_delays_and_groups_in_the_store(
    broker_url: str, store_url: str, name: str
) -> None:
    with connect(broker_url, jobstore=store_url) as conn:
        queue = conn.queue(name)
        ok = queue.publish("ok", record=True)
        boom = queue.publish("boom", record=True)
        once = queue.publish("once", key="welcome", dedup="ever", record=True)
        queue.publish("twice", key="welcome", dedup="ever")
        later = queue.publish("later", delay=0.3, record=True)
        grouped = [queue.publish(f"g{i}", group="g", record=True) for i in range(3)]
        seen: list[str] = []

        def work(message: Message) -> str:
            seen.append(message.payload)
            if message.payload == "boom":
                raise PermanentError("boom")
            return str(message.payload).upper()

        queue.dispatch(work, max_messages=7, max_seconds=SAFETY, handle_signals=False)
        assert sorted(seen) == ["boom", "g0", "g1", "g2", "later", "ok", "once"]
        assert [p for p in seen if p.startswith("g")] == ["g0", "g1", "g2"]
        queue.publish("thrice", key="welcome", dedup="ever")  # an ever key is never free
        assert queue.dispatch(work, max_seconds=0.5, handle_signals=False) == 0

    other_host = open_jobstore(store_url)
    try:
        records = {i: other_host.get_job(i) for i in (ok, boom, once, later, *grouped)}
        assert {i: (r.state, r.result) for i, r in records.items() if r} == {
            ok: ("done", "OK"), boom: ("failed", None), once: ("done", "ONCE"),
            later: ("done", "LATER"), **{g: ("done", f"G{n}") for n, g in enumerate(grouped)},
        }  # fmt: skip
        dead = other_host.failed(name)
        assert [(d.message_id, d.reason) for d in dead] == [(boom, "permanent error: boom")]
        assert not other_host.hold_key(name, "welcome", "from-another-host", ever=True)
        assert other_host.next_due() is None
        assert other_host.claim_group_heads(name) == []
        assert other_host.unfinished([ok, boom, once, later, *grouped]) == set()
    finally:
        other_host.close()


def test_a_group_runs_in_order_across_workers_on_separate_connections(
    store_url: str, name: str
) -> None:
    """Three workers, each with its own connection (its own store): one host each."""
    url = f"{NODELAY}://{uuid.uuid4().hex}"
    with connect(url, jobstore=store_url) as conn:
        for number in range(6):
            for group in ("a", "b", "c"):
                conn.queue(name).publish((group, number), group=group)
        work = GroupLog(pause=0.005)
        work_in_threads(url, store_url, name, work)
    assert work.order == {g: list(range(6)) for g in ("a", "b", "c")}
    assert work.overlaps == 0
