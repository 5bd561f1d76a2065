"""The job store contract, on SQLite, PostgreSQL and MariaDB alike.

Every test runs on each backend, on tables no other test sees (a fresh SQLite file, or a
fresh table prefix dropped afterwards). The databases are the machine's own services
(``QUEUEKIT_TEST_POSTGRES`` / ``QUEUEKIT_TEST_MARIADB`` point elsewhere); without one a
test skips by hand and fails when ``CI`` is set.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from queuekit.jobstore import open_jobstore
from queuekit.jobstore.base import FORWARD_LEASE, KEY_GRACE, JobStore, StoreCounts
from queuekit.jobstore.records import JobUpdate
from queuekit.spi.errors import ConfigurationError, MissingDependency
from queuekit.spi.transport import Outgoing, SendOptions


def out(body: bytes, **options: Any) -> Outgoing:
    return Outgoing(body, {"trace": body.decode(errors="replace")}, SendOptions(**options))


class Sent:
    """A ``send`` for ``forward_due``: notes (queue, body) of each message handed over."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.lock = fail, threading.Lock()
        self.items: list[tuple[str, bytes]] = []

    def __call__(self, queue: str, batch: Any) -> None:
        if self.fail:
            raise RuntimeError("broker down")
        with self.lock:
            self.items.extend((queue, o.body) for o in batch)


def clock(monkeypatch: pytest.MonkeyPatch, offset: float) -> None:
    """Every store's ``time.time()`` runs ``offset`` seconds ahead from now on."""
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + offset)


# -- failed store ------------------------------------------------------------------------------


def test_dead_letters_keep_their_bytes_reason_and_final_record(store: JobStore) -> None:
    big = bytes(range(256)) * 400  # 100 KiB: more than MySQL's plain BLOB holds
    record = JobUpdate("m1", "q", "task", "failed", 3, error="ValueError: x", finished_at=1.0)
    first = store.add_failed("q", big, "ValueError: x", message_id="m1", name="task",
                             traceback="Traceback ...", attempts=3, headers={"h": "v"},
                             job=record)  # fmt: skip
    second = store.add_failed("other", b"\x00", "malformed")
    assert second > first
    entry = store.get_failed(first)
    assert entry is not None
    assert (entry.queue, entry.message_id, entry.name, entry.reason, entry.traceback) == (
        "q", "m1", "task", "ValueError: x", "Traceback ...")  # fmt: skip
    assert (entry.attempts, entry.headers, entry.body) == (3, {"h": "v"}, big)
    assert abs(entry.failed_at - time.time()) < 60
    job = store.get_job("m1")
    assert job is not None and (job.state, job.attempts, job.error) == (
        "failed",
        3,
        "ValueError: x",
    )
    assert [f.id for f in store.failed()] == [first, second]
    assert [f.id for f in store.failed("other")] == [second]
    assert [f.id for f in store.failed(limit=1)] == [first]
    assert store.get_failed(second + 1000) is None


def test_removing_and_purging_dead_letters(store: JobStore) -> None:
    ids = [store.add_failed(q, b"x", "r") for q in ("a", "a", "b", "c")]
    assert store.remove_failed(ids[0]) is True
    assert store.remove_failed(ids[0]) is False
    assert store.purge_failed("a") == 1
    assert store.purge_failed() == 2
    assert store.failed() == []


def test_queue_counts_count_delayed_and_failed_per_queue(store: JobStore) -> None:
    assert store.queue_counts() == {}
    for queue in ("a", "a", "b"):
        store.add_failed(queue, b"x", "r")
    store.add_delayed("a", time.time() + 60, [Outgoing(b"1"), Outgoing(b"2")])
    store.add_delayed("c", time.time() + 60, [Outgoing(b"3")])
    assert store.queue_counts() == {
        "a": StoreCounts(delayed=2, failed=2),
        "b": StoreCounts(delayed=0, failed=1),
        "c": StoreCounts(delayed=1, failed=0),
    }


# -- delayed store -----------------------------------------------------------------------------


def test_due_messages_are_forwarded_in_due_order_once(store: JobStore) -> None:
    now = time.time()
    assert store.next_due() is None
    store.add_delayed("q", now - 1, [out(b"second", priority=7, dedup_key="k")])
    store.add_delayed("q", now - 2, [out(b"first")])
    store.add_delayed("r", now - 1.5, [out(b"other")])
    store.add_delayed("q", now + 3600, [out(b"later")])
    assert store.next_due() == pytest.approx(now - 2)
    batches: list[tuple[str, list[Outgoing]]] = []
    assert store.forward_due(lambda q, batch: batches.append((q, list(batch)))) == 3
    assert [(q, [o.body for o in b]) for q, b in batches] == [
        ("q", [b"first", b"second"]), ("r", [b"other"])]  # fmt: skip
    second = batches[0][1][1]
    assert second.options == SendOptions(priority=7, dedup_key="k")
    assert second.headers == {"trace": "second"}
    assert store.forward_due(Sent()) == 0
    assert store.next_due() == pytest.approx(now + 3600)


def test_forward_due_takes_at_most_limit(store: JobStore) -> None:
    store.add_delayed("q", time.time() - 1, [out(str(i).encode()) for i in range(5)])
    sent = Sent()
    assert store.forward_due(sent, limit=2) == 2
    assert store.forward_due(sent, limit=10) == 3
    assert sorted(body for _, body in sent.items) == [b"0", b"1", b"2", b"3", b"4"]


def test_a_failed_forward_keeps_its_claim_until_the_lease_ends(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.add_delayed("q", time.time() - 1, [out(b"m")])
    with pytest.raises(RuntimeError, match="broker down"):
        store.forward_due(Sent(fail=True))
    assert store.forward_due(Sent()) == 0  # still claimed by the forwarder that failed
    clock(monkeypatch, FORWARD_LEASE + 1)
    sent = Sent()
    assert store.forward_due(sent) == 1
    assert sent.items == [("q", b"m")]


# -- dedup keys --------------------------------------------------------------------------------


def test_a_key_is_held_by_one_message_until_released(store: JobStore) -> None:
    assert store.hold_key("q", "k", "m1", ever=False)
    assert not store.hold_key("q", "k", "m2", ever=False)
    assert store.hold_key("other-queue", "k", "m3", ever=False)
    assert store.hold_key("q", "K", "m4", ever=False)  # keys compare exactly
    store.confirm_key("q", "k", "m1")
    store.release_key("q", "k", "m2")  # not the holder: nothing happens
    assert not store.hold_key("q", "k", "m2", ever=False)
    store.release_key("q", "k", "m1")
    assert store.hold_key("q", "k", "m2", ever=False)


def test_an_ever_key_is_released_only_when_its_publish_failed(store: JobStore) -> None:
    assert store.hold_key("q", "once", "m1", ever=True)
    store.confirm_key("q", "once", "m1")
    store.release_key("q", "once", "m1")  # settled: an ever key stays
    assert not store.hold_key("q", "once", "m2", ever=True)
    store.release_key("q", "once", "m1", ever=True)  # the publish failed
    assert store.hold_key("q", "once", "m2", ever=True)


def test_long_keys_are_kept_whole(store: JobStore) -> None:
    stem = "https://example.invalid/" + "x" * 2000
    assert store.hold_key("q", stem + "a", "m1", ever=True)
    assert store.hold_key("q", stem + "b", "m2", ever=True)
    assert not store.hold_key("q", stem + "a", "m3", ever=True)


def test_an_unconfirmed_hold_is_taken_over_after_the_grace(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert store.hold_key("q", "k", "died-before-sending", ever=True)
    assert store.hold_key("q", "c", "confirmed", ever=True)
    store.confirm_key("q", "c", "confirmed")
    clock(monkeypatch, KEY_GRACE + 1)
    assert store.hold_key("q", "k", "next", ever=True)
    assert not store.hold_key("q", "k", "third", ever=True)  # "next" holds it, freshly
    assert not store.hold_key("q", "c", "late", ever=True)  # a confirmed hold is never taken


# -- serial groups -----------------------------------------------------------------------------


def test_a_group_has_one_message_in_flight_and_goes_in_line_order(store: JobStore) -> None:
    store.add_grouped("q", "g", [("a1", out(b"a1", priority=3), None), ("a2", out(b"a2"), 5.0)])
    store.add_grouped("q", "h", [("b1", out(b"b1"), None)])
    store.add_grouped("r", "g", [("c1", out(b"c1"), None)])
    heads = store.claim_group_heads("q")
    assert [(h.group, h.message_id) for h in heads] == [("g", "a1"), ("h", "b1")]
    assert heads[0].outgoing.body == b"a1" and heads[0].outgoing.options.priority == 3
    assert heads[0].outgoing.headers == {"trace": "a1"} and heads[0].due is None
    assert store.claim_group_heads("q") == []  # claimed: the rest waits
    store.mark_sent(heads)
    assert store.claim_group_heads("q") == []  # sent: in flight until finished
    store.finish_grouped("q", "g", "a2")  # still waiting: not finished by this
    store.finish_grouped("q", "g", "a1")
    nxt = store.claim_group_heads("q", "g")
    assert [(h.message_id, h.due) for h in nxt] == [("a2", 5.0)]
    assert [h.message_id for h in store.claim_group_heads()] == ["c1"]


def test_a_head_whose_claimer_died_is_claimed_again_after_the_lease(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.add_grouped("q", "g", [("a", out(b"a"), None), ("b", out(b"b"), None)])
    assert [h.message_id for h in store.claim_group_heads("q")] == ["a"]
    clock(monkeypatch, FORWARD_LEASE + 1)
    assert [h.message_id for h in store.claim_group_heads("q")] == ["a"]  # never "b" first


def test_a_finished_group_takes_new_messages(store: JobStore) -> None:
    store.add_grouped("q", "g", [("a", out(b"a"), None)])
    heads = store.claim_group_heads("q", "g")
    store.mark_sent(heads)
    store.finish_grouped("q", "g", "a")
    assert store.claim_group_heads("q") == []
    store.add_grouped("q", "g", [("b", out(b"b"), None)])
    assert [h.message_id for h in store.claim_group_heads("q", "g")] == ["b"]


# -- job records -------------------------------------------------------------------------------


def test_records_are_written_started_and_finished(store: JobStore) -> None:
    store.write_jobs([JobUpdate("j1", "q", "task", "queued", created_at=100.0),
                      JobUpdate("j2", "q", None, "queued", created_at=200.0)])  # fmt: skip
    store.start_job(JobUpdate("j1", "q", "task", "running", 1, started_at=101.0, worker_pid=7))
    store.write_jobs([JobUpdate("j1", "q", "task", "waiting", 1, error="ValueError: x",
                                traceback="tb", finished_at=102.0)])  # fmt: skip
    job = store.get_job("j1")
    assert job is not None
    assert (job.state, job.error, job.started_at, job.worker_pid) == (
        "waiting", "ValueError: x", 101.0, 7)  # fmt: skip
    store.start_job(JobUpdate("j1", "q", "task", "running", 2, started_at=103.0, worker_pid=8))
    job = store.get_job("j1")
    assert job is not None
    assert (job.state, job.attempts, job.error, job.finished_at, job.worker_pid) == (
        "running",
        2,
        "ValueError: x",
        None,
        8,
    )  # the last error stays while it runs
    store.write_jobs([JobUpdate("j1", "q", "task", "done", 2, result=json.dumps({"n": [1, 2]}),
                                finished_at=104.0, peak_memory=3 * 2**32)])  # fmt: skip
    job = store.get_job("j1")
    assert job is not None
    assert (job.state, job.result, job.created_at, job.started_at) == (
        "done", {"n": [1, 2]}, 100.0, 103.0)  # fmt: skip
    assert (job.peak_memory, job.duration) == (3 * 2**32, 1.0)
    assert store.get_job("nope") is None


def test_listing_records_newest_first(store: JobStore) -> None:
    store.write_jobs([JobUpdate("old", "q", None, "done", created_at=1.0, finished_at=2.0),
                      JobUpdate("new", "q", None, "queued", created_at=3.0),
                      JobUpdate("none", "q", None, "running"),
                      JobUpdate("elsewhere", "r", None, "queued", created_at=2.0)])  # fmt: skip
    assert [j.id for j in store.jobs()] == ["new", "elsewhere", "old", "none"]
    assert [j.id for j in store.jobs("q", state="queued")] == ["new"]
    assert [j.id for j in store.jobs(limit=2)] == ["new", "elsewhere"]


def test_unfinished_counts_recorded_unfinished_ids_only(store: JobStore) -> None:
    ids = [f"id-{i}" for i in range(1200)]  # several chunks
    store.write_jobs([JobUpdate(i, "q", None, "queued") for i in ids])
    store.write_jobs([JobUpdate(i, "q", None, "done", finished_at=1.0) for i in ids[::2]])
    assert store.unfinished([*ids, "never-recorded", ids[1]]) == set(ids[1::2])
    store.delete_jobs(ids[:600])
    assert store.get_job(ids[1]) is None and store.get_job(ids[601]) is not None


def test_clearing_finished_records(store: JobStore) -> None:
    now = time.time()
    store.write_jobs([JobUpdate("long-ago", "q", None, "done", finished_at=now - 3600),
                      JobUpdate("failed-long-ago", "r", None, "failed", finished_at=now - 3600),
                      JobUpdate("just-now", "q", None, "done", finished_at=now),
                      JobUpdate("running", "q", None, "running", finished_at=None)])  # fmt: skip
    assert store.clear_finished(60, queue="q") == 1
    assert store.clear_finished(60) == 1
    assert store.clear_finished() == 1
    assert [j.id for j in store.jobs()] == ["running"]


def test_a_result_that_is_not_json_is_shown_as_stored(store: JobStore) -> None:
    store.write_jobs([JobUpdate("j", "q", None, "done", result="not json", finished_at=1.0)])
    job = store.get_job("j")
    assert job is not None and job.result == "not json"


def test_text_round_trips_exactly(store: JobStore) -> None:
    name = "Zürich 東京 🚀"
    store.write_jobs([JobUpdate("j", name, name, "done", error=name, finished_at=1.0)])
    job = store.get_job("j")
    assert job is not None and (job.queue, job.name, job.error) == (name, name, name)
    assert store.hold_key(name, name, "m", ever=True)
    assert not store.hold_key(name, name, "other", ever=True)


# -- start journal, life -----------------------------------------------------------------------


def test_starts_are_counted_until_the_delivery_ends(store: JobStore) -> None:
    assert [store.begin_delivery("m") for _ in range(3)] == [1, 2, 3]
    assert store.begin_delivery("other") == 1
    store.end_delivery("m")
    assert store.begin_delivery("m") == 1


def test_a_closed_store_reopens_on_use_and_another_store_sees_its_rows(store_url: str) -> None:
    first = open_jobstore(store_url)
    first.write_jobs([JobUpdate("j", "q", None, "queued")])
    first.close()
    first.close()
    assert first.get_job("j") is not None
    second = open_jobstore(store_url)
    try:
        assert second.get_job("j") is not None
        assert first.hold_key("q", "k", "a", ever=True)
        assert not second.hold_key("q", "k", "b", ever=True)
    finally:
        first.close()
        second.close()


def test_a_store_has_one_identity_for_every_opener_and_another_store_another(
    store_url: str, tmp_path: Path
) -> None:
    # Given a store opened by several racing openers (processes, hosts)
    openers = stores(store_url, 4)
    seen: list[str] = []
    try:
        race(4, lambda i: seen.append(openers[i].identity()))
        # Then they all read the one id written when the store was created
        assert len(set(seen)) == 1 and len(seen[0]) == 32
        later = open_jobstore(store_url)
        assert later.identity() == seen[0]
        later.close()
    finally:
        for opened in openers:
            opened.close()
    other = open_jobstore(f"sqlite:///{tmp_path}/other.db")
    try:
        assert other.identity() != seen[0]
    finally:
        other.close()


# -- concurrency: many stores (connections) on one database ------------------------------------


def race(count: int, work: Callable[[int], None]) -> None:
    """Run ``work(i)`` for i in range(count) on threads released together; re-raise errors."""
    barrier, errors = threading.Barrier(count), []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors


def stores(url: str, count: int) -> list[JobStore]:
    return [open_jobstore(url) for _ in range(count)]


def test_publishers_racing_for_keys_get_one_winner_each(store_url: str) -> None:
    racers, keys = stores(store_url, 6), [f"key-{i}" for i in range(40)]
    wins: list[tuple[str, int]] = []
    lock = threading.Lock()

    def publisher(i: int) -> None:
        for key in keys:
            if racers[i].hold_key("q", key, f"m-{i}", ever=True):
                with lock:
                    wins.append((key, i))

    try:
        race(len(racers), publisher)
    finally:
        for one in racers:
            one.close()
    assert sorted(key for key, _ in wins) == sorted(keys)


def test_publishers_racing_to_take_over_expired_holds_get_one_winner_each(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    racers, keys = stores(store_url, 6), [f"key-{i}" for i in range(30)]
    for key in keys:
        assert racers[0].hold_key("q", key, "died", ever=True)
    clock(monkeypatch, KEY_GRACE + 1)
    wins: list[str] = []
    lock = threading.Lock()

    def publisher(i: int) -> None:
        for key in keys:
            if racers[i].hold_key("q", key, f"m-{i}", ever=True):
                with lock:
                    wins.append(key)

    try:
        race(len(racers), publisher)
    finally:
        for one in racers:
            one.close()
    assert sorted(wins) == sorted(keys)


def test_forwarders_racing_hand_each_message_over_once(store_url: str) -> None:
    forwarders = stores(store_url, 4)
    bodies = [f"m-{i}".encode() for i in range(300)]
    forwarders[0].add_delayed("q", time.time() - 1, [Outgoing(b) for b in bodies])
    sent = Sent()

    def forwarder(i: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if forwarders[i].forward_due(sent, limit=7) == 0 and forwarders[i].next_due() is None:
                return

    try:
        race(len(forwarders), forwarder)
    finally:
        for one in forwarders:
            one.close()
    assert sorted(body for _, body in sent.items) == sorted(bodies)


def test_claimers_and_publishers_racing_keep_each_group_serial(store_url: str) -> None:
    """Two publishers add to the same groups while three workers claim, send and finish
    heads: never two messages of a group in flight, each publisher's order kept, none lost."""
    groups, per_publisher = [f"g{i}" for i in range(6)], 6
    actors = stores(store_url, 5)
    lock = threading.Lock()
    in_flight: dict[str, str] = {}
    ran: dict[str, list[str]] = {g: [] for g in groups}
    overlaps: list[str] = []
    published = threading.Event()
    done = threading.Event()
    total = len(groups) * per_publisher * 2

    def publisher(i: int) -> None:
        for n in range(per_publisher):
            for group in groups:
                message = f"p{i}-{n}"
                actors[i].add_grouped("q", group, [(message, Outgoing(message.encode()), None)])
        if i == 1:
            published.set()

    def claimer(i: int) -> None:
        store = actors[i]
        deadline = time.monotonic() + 90
        while not done.is_set() and time.monotonic() < deadline:
            heads = store.claim_group_heads("q", limit=3)
            with lock:
                for head in heads:
                    if head.group in in_flight:
                        overlaps.append(f"{head.message_id} beside {in_flight[head.group]}")
                    in_flight[head.group] = head.message_id
            store.mark_sent(heads)
            for head in heads:
                with lock:  # out of flight before it is finished: the next may come at once
                    del in_flight[head.group]
                    ran[head.group].append(head.message_id)
                    if published.is_set() and sum(map(len, ran.values())) == total:
                        done.set()
                store.finish_grouped("q", head.group, head.message_id)

    def actor(i: int) -> None:
        if i < 2:
            publisher(i)
        else:
            claimer(i)

    try:
        race(len(actors), actor)
    finally:
        for one in actors:
            one.close()
    assert overlaps == []
    for group in groups:
        for i in (0, 1):
            mine = [m for m in ran[group] if m.startswith(f"p{i}-")]
            assert mine == [f"p{i}-{n}" for n in range(per_publisher)], (group, ran[group])


# -- opening -----------------------------------------------------------------------------------


def test_open_jobstore_picks_the_backend_by_scheme(tmp_path: Path) -> None:
    sqlite = open_jobstore(f"sqlite:///{tmp_path}/j.db")
    assert type(sqlite).__name__ == "SQLiteJobStore"
    sqlite.close()
    pytest.importorskip("sqlalchemy")
    for url in ("postgresql://u:secret@127.0.0.1:1/db", "mariadb+pymysql://u@h/db"):
        store = open_jobstore(url)  # opens nothing until used
        assert type(store).__name__ == "SQLJobStore"
        assert "secret" not in repr(store.url)
        store.close()


def test_bad_sql_urls_are_refused(tmp_path: Path) -> None:
    pytest.importorskip("sqlalchemy")
    with pytest.raises(ConfigurationError, match="not supported"):
        open_jobstore("oracle+oracledb://u:p@h/db")
    with pytest.raises(ConfigurationError, match="table_prefix"):
        open_jobstore("postgresql://u@h/db?table_prefix=a;drop")
    with pytest.raises(MissingDependency, match=r"job store needs .*queuekit\[sql\]"):
        open_jobstore("mysql+mysqldb://u@h/db")  # a driver queuekit[sql] does not install


def test_without_sqlalchemy_a_sql_url_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "queuekit.jobstore.sql", raising=False)
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # import sqlalchemy now fails
    with pytest.raises(MissingDependency, match=r"queuekit\[sql\]") as caught:
        open_jobstore("postgresql+psycopg://u@h/db")
    assert caught.value.extra == "sql"


def test_an_unreachable_database_raises_a_recoverable_job_store_error() -> None:
    pytest.importorskip("sqlalchemy")
    from queuekit.jobstore.base import JobStoreError

    store = open_jobstore("postgresql+psycopg://u:secret@127.0.0.1:1/db?connect_timeout=2")
    with pytest.raises(JobStoreError) as caught:
        store.get_job("x")
    assert caught.value.recoverable
    assert "secret" not in str(caught.value)
    store.close()
