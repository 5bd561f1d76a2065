"""Job records: opt-in per message, per handler class or per worker; state, attempts, result,
error, timings, pid and memory, written in one transaction when an attempt starts and one
when it ends; ``unfinished``, ``clear-finished`` and ``worker job`` over real processes."""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from queuekit import (
    AbstractQueue,
    Connection,
    JobRecord,
    Message,
    PermanentError,
    Repeat,
    RetryLater,
    connect,
)
from queuekit.features.envelope import decode, encode
from queuekit.jobstore import open_jobstore
from queuekit.jobstore.records import CUT, PAYLOAD_LIMIT, JobUpdate
from queuekit.spi.urls import TransportURL
from tests.workers.harness import run_worker, sqlite_url, start_worker, stop
from tests.workers.transports import NODELAY

SAFETY = 20.0


def test_the_record_flag_travels_in_the_envelope_only_when_set() -> None:
    plain = Message("x")
    assert b"record" not in encode(plain)
    plain.metadata.record = True
    assert decode(encode(plain)).metadata.record is True


def test_a_recorded_message_goes_from_queued_to_done_with_its_result(
    conn: Connection, name: str
) -> None:
    queue = conn.queue(name)
    before = time.time()
    job_id = queue.publish({"n": 2}, name="double", record=True)
    queued = conn.job(job_id)
    assert queued is not None
    assert (queued.state, queued.queue, queued.name, queued.attempts) == ("queued", name,
                                                                          "double", 0)  # fmt: skip
    assert not queued.is_completed() and not queued.is_finished()
    assert conn.jobs.unfinished([job_id, "unknown"]) == {job_id}

    seen: list[JobRecord | None] = []

    def work(message: Message) -> object:
        seen.append(conn.job(message.id))
        return {"doubled": message.payload["n"] * 2}

    assert queue.dispatch(work, max_messages=1, max_seconds=SAFETY) == 1
    [running] = seen
    assert running is not None and running.state == "running" and running.attempts == 1
    record = conn.job(job_id)
    assert record is not None
    assert record.is_completed() and record.is_finished()
    assert record.result == {"doubled": 4}
    assert record.attempts == 1
    assert record.error is None
    assert record.created_at is not None and record.started_at is not None
    assert record.finished_at is not None
    assert before <= record.created_at <= record.started_at <= record.finished_at
    assert record.worker_pid == os.getpid()
    assert record.peak_memory is not None and record.peak_memory > 0
    assert conn.jobs.unfinished([job_id]) == set()
    assert JobRecord.load(job_id, connection=conn) == record


def test_messages_published_without_record_leave_no_record(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    ids = [queue.publish(1), *queue.publish_many([2, 3])]
    assert queue.dispatch(lambda m: m.payload, max_messages=3, max_seconds=SAFETY) == 3
    assert [conn.job(i) for i in ids] == [None, None, None]
    assert conn.jobs.jobs() == []


def test_a_result_json_cannot_carry_is_an_error_note_not_a_crash(
    conn: Connection, name: str
) -> None:
    queue = conn.queue(name)
    odd, fine = queue.publish("odd", record=True), queue.publish("fine", record=True)
    results = {"odd": object(), "fine": [1, "two"]}
    assert queue.dispatch(lambda m: results[m.payload], max_messages=2, max_seconds=SAFETY) == 2
    odd_record, fine_record = conn.job(odd), conn.job(fine)
    assert odd_record is not None and fine_record is not None
    assert odd_record.state == "done" and odd_record.result is None
    assert odd_record.error is not None and "not JSON" in odd_record.error
    assert fine_record.result == [1, "two"] and fine_record.error is None
    assert queue.depth() == 0


def test_a_retry_is_waiting_with_the_error_then_failed_with_the_traceback(
    conn: Connection, name: str
) -> None:
    queue = conn.queue(name)
    job_id = queue.publish("x", record=True, retry=Repeat(times=1, every=60))

    def boom(message: Message) -> None:
        raise ValueError("broken input")

    assert queue.dispatch(boom, max_messages=1, max_seconds=SAFETY) == 1
    waiting = conn.job(job_id)
    assert waiting is not None
    assert (waiting.state, waiting.attempts) == ("waiting", 1)
    assert waiting.error == "ValueError: broken input"
    assert conn.jobs.unfinished([job_id]) == {job_id}

    # the second and last attempt: bring it forward instead of waiting a minute
    queue.purge()
    message = Message("x")
    message.metadata.id, message.metadata.record, message.metadata.attempts = job_id, True, 1
    message.metadata.retry = Repeat(times=1, every=60).to_json()
    conn.broker.resend(queue.name, message)
    assert queue.dispatch(boom, max_messages=1, max_seconds=SAFETY) == 1
    failed = conn.job(job_id)
    assert failed is not None
    expected = ("failed", 2, "ValueError: broken input")
    assert (failed.state, failed.attempts, failed.error) == expected
    assert failed.traceback is not None and "broken input" in failed.traceback
    assert [f.message_id for f in conn.failed.list(name)] == [job_id]
    assert conn.jobs.unfinished([job_id]) == set()


def test_permanent_errors_rejections_and_retry_later(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    permanent = queue.publish("permanent", record=True)
    rejected = queue.publish("rejected", record=True)
    later = queue.publish("later", record=True)

    def work(message: Message) -> None:
        if message.payload == "permanent":
            raise PermanentError("never")
        raise RetryLater(3600)

    queue.dispatch(work, validate=lambda m: m.payload != "rejected", max_messages=3,
                   max_seconds=SAFETY)  # fmt: skip
    states = {i: conn.job(i) for i in (permanent, rejected, later)}
    assert {i: r.state for i, r in states.items() if r} == {
        permanent: "failed", rejected: "failed", later: "waiting"}  # fmt: skip
    assert states[rejected].error == "rejected by validate()"  # type: ignore[union-attr]
    assert states[later].attempts == 0  # type: ignore[union-attr]  # RetryLater is no attempt


def test_a_delayed_publish_is_waiting(tmp_path: Path, name: str) -> None:
    with connect(sqlite_url(tmp_path / "d.db")) as conn:
        job_id = conn.queue(name).publish("x", delay="1 hour", record=True)
        assert conn.job(job_id).state == "waiting"  # type: ignore[union-attr]
    with connect(f"{NODELAY}://{uuid.uuid4().hex}", jobstore=sqlite_url(tmp_path / "j.db")) as c:
        job_id = c.queue(name).publish("x", delay=3600, record=True)
        assert c.job(job_id).state == "waiting"  # type: ignore[union-attr]


def test_dispatch_record_true_records_every_message(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    ids = queue.publish_many(["a", "b"])
    assert queue.dispatch(lambda m: m.payload.upper(), record=True, max_messages=2,
                          max_seconds=SAFETY) == 2  # fmt: skip
    records = [conn.job(i) for i in ids]
    assert [(r.state, r.result) for r in records if r] == [("done", "A"), ("done", "B")]


class Kept(AbstractQueue):
    queue = "kept"
    keep_records = True

    def work(self, message: Message) -> object:
        return {"pid": os.getpid(), "n": message.payload}


def test_a_class_that_keeps_records_records_on_both_sides(conn: Connection) -> None:
    kept = Kept(conn)
    conn.queue("kept").purge()
    published = kept.publish(1)
    assert conn.job(published).state == "queued"  # type: ignore[union-attr]
    plain = conn.queue("kept").publish(2)  # published without the flag: recorded at start
    assert kept.dispatch(max_messages=2, max_seconds=SAFETY) == 2
    for job_id in (published, plain):
        record = conn.job(job_id)
        assert record is not None and record.state == "done", record
        assert record.name == ("Kept" if job_id == published else None)


def test_publish_many_with_record(conn: Connection, name: str) -> None:
    ids = conn.queue(name).publish_many([1, 2, 3], record=True)
    assert conn.jobs.unfinished(ids) == set(ids)
    assert {r.state for r in conn.jobs.jobs(name)} == {"queued"}


def test_a_failed_retry_by_hand_puts_the_record_back_to_queued(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    job_id = queue.publish("x", record=True)
    queue.dispatch(lambda m: (_ for _ in ()).throw(PermanentError("no")), max_messages=1,
                   max_seconds=SAFETY)  # fmt: skip
    assert conn.job(job_id).state == "failed"  # type: ignore[union-attr]
    [entry] = conn.failed.list(name)
    assert conn.failed.retry(entry.id)
    assert conn.job(job_id).state == "queued"  # type: ignore[union-attr]
    queue.dispatch(lambda m: "ok", max_messages=1, max_seconds=SAFETY)
    record = conn.job(job_id)
    assert record is not None and (record.state, record.result) == ("done", "ok")


def test_unfinished_handles_many_ids(conn: Connection, name: str) -> None:
    ids = conn.queue(name).publish_many(range(1200), record=True)
    assert conn.jobs.unfinished([*ids, "x"]) == set(ids)


def test_clear_finished_only_removes_old_finished_records(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    done = queue.publish("done", record=True)
    queue.dispatch(lambda m: None, max_messages=1, max_seconds=SAFETY)
    queued = queue.publish("queued", record=True)
    assert conn.jobs.clear_finished(14 * 86400) == 0
    assert conn.jobs.clear_finished(0, queue="another") == 0
    assert conn.jobs.clear_finished(0) == 1
    assert conn.job(done) is None
    assert conn.job(queued) is not None


def test_an_attempt_writes_its_record_in_two_statements(tmp_path: Path, name: str) -> None:
    with connect(sqlite_url(tmp_path / "q.db"), jobstore=sqlite_url(tmp_path / "jobs.db")) as c:
        queue = c.queue(name)
        job_id = queue.publish("x", record=True)
        assert c.job(job_id) is not None  # opens the job store
        writes: list[str] = []
        db = c.jobs._db
        assert db is not None
        db.set_trace_callback(writes.append)
        queue.dispatch(lambda m: "ok", max_messages=1, max_seconds=SAFETY)
        db.set_trace_callback(None)
        records = [w.split()[0] for w in writes if "queuekit_jobs" in w]  # not the registry's
        assert [s for s in records if s != "SELECT"] == ["INSERT", "INSERT"]  # running, done


def test_a_record_write_that_fails_does_not_stop_the_worker(tmp_path: Path, name: str) -> None:
    jobs = tmp_path / "jobs.db"
    with connect(sqlite_url(tmp_path / "q.db"), jobstore=sqlite_url(jobs)) as c:
        queue = c.queue(name)
        queue.publish_many(["a", "b"], record=True)
        blocker = sqlite3.connect(jobs, timeout=0)
        blocker.execute("DROP TABLE queuekit_jobs")  # every record write now fails
        blocker.close()
        done: list[str] = []
        assert queue.dispatch(done.append, max_messages=2, max_seconds=SAFETY) == 2
        assert queue.depth() == 0


# -- real worker processes ------------------------------------------------------------------


class ProcessRecorded(AbstractQueue):
    """Run by ``worker run tests.test_records:ProcessRecorded`` in a child process."""

    queue = "recorded"
    keep_records = True
    retry = Repeat(times=1, every=3600)

    def work(self, message: Message) -> object:
        if message.payload == "fail":
            raise ValueError("asked to fail")
        return {"pid": os.getpid(), "payload": message.payload}


def test_records_written_by_a_worker_process_and_the_cli(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "jobs.db")
    with connect(url) as conn:
        producer = ProcessRecorded(conn)
        ok, failing = producer.publish("hello"), producer.publish("fail")
        assert conn.jobs.unfinished([ok, failing]) == {ok, failing}
        worker = start_worker("run", "tests.test_records:ProcessRecorded", "--url", url,
                              "--max-messages", "2", cwd=tmp_path)  # fmt: skip
        try:
            assert worker.wait(timeout=60) == 0
        finally:
            stop(worker)
        done, waiting = conn.job(ok), conn.job(failing)
        assert done is not None and waiting is not None
        assert done.state == "done" and done.result == {"pid": worker.pid, "payload": "hello"}
        assert done.worker_pid == worker.pid
        assert waiting.state == "waiting" and waiting.error == "ValueError: asked to fail"
        assert conn.jobs.unfinished([ok, failing]) == {failing}

    shown = run_worker("job", ok, "--url", url, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "state: done" in shown.stdout and '"payload": "hello"' in shown.stdout
    assert 'payload: "hello"' in shown.stdout and "key: -" in shown.stdout
    missing = run_worker("job", "nope", "--url", url, cwd=tmp_path)
    assert missing.returncode == 2 and "no job record nope" in missing.stderr

    kept = run_worker("clear-finished", "--url", url, cwd=tmp_path)  # default: 14 days
    assert kept.returncode == 0 and "0 finished job record(s) removed" in kept.stderr
    cleared = run_worker("clear-finished", "--older-than", "0", "--url", url, cwd=tmp_path)
    assert cleared.returncode == 0 and "1 finished job record(s) removed" in cleared.stderr
    bad = run_worker("clear-finished", "--older-than", "soon", "--url", url, cwd=tmp_path)
    assert bad.returncode == 2 and "--older-than" in bad.stderr
    with connect(url) as conn:
        assert conn.job(ok) is None
        assert conn.job(failing) is not None


def test_a_record_keeps_the_dedup_key_and_the_payload_cut_at_its_limit(
    conn: Connection, name: str
) -> None:
    queue = conn.queue(name)
    # Given a keyed message and one with a payload past the limit, both recorded
    keyed = queue.publish({"order": 7}, key=f"order-7-{name}", record=True)
    huge = queue.publish("x" * (PAYLOAD_LIMIT + 10), record=True)
    # Then the first record has its key and payload, and is found by its key
    record = conn.job(keyed)
    assert record is not None
    assert (record.key, record.payload) == (f"order-7-{name}", '{"order": 7}')
    assert conn.jobs.jobs(key=f"order-7-{name}") == [record]
    # And the huge payload is kept up to the limit, saying it was cut
    cut = conn.job(huge)
    assert cut is not None and cut.payload is not None
    assert cut.payload == '"' + "x" * (PAYLOAD_LIMIT - 1) + CUT
    # When a worker runs the keyed one, Then its record keeps both
    assert queue.dispatch(lambda m: None, max_messages=2, max_seconds=SAFETY) == 2
    done = conn.job(keyed)
    assert done is not None and done.state == "done"
    assert (done.key, done.payload) == (f"order-7-{name}", '{"order": 7}')


_OLD_JOBS = (
    "CREATE TABLE {table} (id VARCHAR(255) PRIMARY KEY, queue VARCHAR(255) NOT NULL,"
    " name TEXT, state VARCHAR(16) NOT NULL, attempts INTEGER NOT NULL, result TEXT,"
    " error TEXT, traceback TEXT, created_at DOUBLE PRECISION, started_at DOUBLE PRECISION,"
    " finished_at DOUBLE PRECISION, worker_pid INTEGER, peak_memory BIGINT)"
)


def test_a_jobs_table_of_the_old_schema_gets_the_new_columns_when_opened(
    store_url: str,
) -> None:
    # Given a jobs table as queuekit created it before records kept keys and payloads,
    # holding one record
    import sqlalchemy

    parsed = TransportURL.parse(store_url)
    table = f"{parsed.option('table_prefix') or 'queuekit_'}jobs"
    engine = sqlalchemy.create_engine(store_url.split("?", 1)[0])
    try:
        with engine.begin() as db:
            db.execute(sqlalchemy.text(_OLD_JOBS.format(table=table)))
            db.execute(sqlalchemy.text(f"INSERT INTO {table} (id, queue, state, attempts)"
                                       " VALUES ('old', 'q', 'done', 1)"))  # fmt: skip
    finally:
        engine.dispose()
    # When two processes' stores open it at once, and later once more
    stores = [open_jobstore(store_url) for _ in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:
            found = list(pool.map(lambda s: s.get_job("old"), stores))
    finally:
        for store in stores:
            store.close()
    store = open_jobstore(store_url)
    try:
        # Then the old record reads as before, with no key and no payload
        assert [(r.id, r.key, r.payload) for r in found if r] == [("old", None, None)] * 2
        # And a new record keeps both
        store.write_jobs([JobUpdate("new", "q", None, "queued", key="k", payload="[1]")])
        new = store.get_job("new")
        assert new is not None and (new.key, new.payload) == ("k", "[1]")
        assert [r.id for r in store.jobs(key="k")] == ["new"]
    finally:
        store.close()
