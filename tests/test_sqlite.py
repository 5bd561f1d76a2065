"""sqlite:///path: the durable embedded default, with real worker processes.

Child workers are started as a user starts them (``worker run tests.workers.queues:...``) and
report through files and their log lines; the tests wait on those, never on fixed sleeps.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuekit import Connection, Message, connect
from queuekit.adapters.sqlite import SQLiteTransport
from queuekit.features.envelope import decode
from queuekit.spi.registry import open_transport
from queuekit.spi.transport import Delivery
from tests.support import wait_until
from tests.workers.harness import lines, run_worker, sqlite_url, start_worker, stop

SAFETY = 20.0


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "queues.db"


@pytest.fixture
def conn(db: Path) -> Iterator[Connection]:
    with connect(sqlite_url(db)) as connection:
        yield connection


@pytest.fixture
def name() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


def receive_all(conn: Connection, queue: str, count: int, timeout: float = 10) -> list[Message]:
    """Receive and ack ``count`` messages, failing if they do not all arrive in time."""
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(messages) < count:
        delivery = conn.transport.receive(queue, max(deadline - time.monotonic(), 0))
        assert delivery is not None, f"only {len(messages)} of {count} arrived"
        messages.append(decode(delivery.body))
        conn.transport.ack(delivery)
    return messages


# -- the queue, in process --------------------------------------------------------------------


def test_round_trip_of_bytes_and_unicode_payloads(conn: Connection, name: str) -> None:
    payloads: list[object] = [
        b"\x00\xff\xfe raw bytes",
        "Zoë 🚀 漢字 \u2028",
        {"nested": ["ünï", 2**70, None, 1.5, True]},
        b"",
    ]
    ids = [conn.queue(name).publish(p, headers={"trace": "t1"}) for p in payloads]
    received = receive_all(conn, name, len(payloads))
    assert [m.payload for m in received] == payloads
    assert [type(m.payload) for m in received] == [type(p) for p in payloads]
    assert [m.id for m in received] == ids
    assert all(m.headers == {"trace": "t1"} for m in received)
    assert conn.transport.receive(name, 0) is None


def test_messages_survive_closing_and_reopening_the_file(db: Path, name: str) -> None:
    with connect(sqlite_url(db)) as first:
        first.queue(name).publish_many(["a", "b"])
        delivery = first.transport.receive(name, 1)
        assert delivery is not None  # claimed but never acked: closing gives it back
    with connect(sqlite_url(db)) as second:
        assert second.queue(name).depth() == 2
        assert sorted(m.payload for m in receive_all(second, name, 2)) == ["a", "b"]


def test_higher_priority_first_then_publication_order(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    for payload, priority in [
        ("default-1", None),
        ("low", 1),
        ("high", 200),
        ("mid-1", 50),
        ("default-2", None),
        ("mid-2", 50),
        ("top", 255),
    ]:
        queue.publish(payload, priority=priority)
    received = [m.payload for m in receive_all(conn, name, 7)]
    assert received == ["top", "high", "mid-1", "mid-2", "low", "default-1", "default-2"]


def test_priority_outside_0_to_255_is_refused(conn: Connection, name: str) -> None:
    for bad in (-1, 256):
        with pytest.raises(ValueError, match="priority must be 0-255"):
            conn.queue(name).publish("x", priority=bad)


def test_a_delayed_message_is_not_delivered_before_it_is_due(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    queue.publish("later", delay=0.6)
    queue.publish("now")
    [first] = receive_all(conn, name, 1)
    assert first.payload == "now"
    assert queue.depth() == 0  # the delayed one is not ready yet

    [later] = receive_all(conn, name, 1)
    assert later.payload == "later"
    assert later.metadata.not_before is not None
    assert time.time() >= later.metadata.not_before


def test_delayed_messages_come_in_due_order(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    queue.publish("third", delay=1.2)
    queue.publish("first", delay=0.3)
    queue.publish("second", delay=0.7)
    received = receive_all(conn, name, 3)
    assert [m.payload for m in received] == ["first", "second", "third"]


def test_overdue_messages_come_in_due_order(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    queue.publish("second", delay=0.2)
    queue.publish("first", delay=0.1)
    wait_until(lambda: queue_due(conn, name), what="both messages to fall due")
    assert [m.payload for m in receive_all(conn, name, 2)] == ["first", "second"]


def queue_due(conn: Connection, name: str) -> bool:
    """Whether every delayed message of ``name`` is past its due time (read from the file)."""
    with sqlite3.connect(conn.url.path) as raw:
        [(latest,)] = raw.execute(
            "SELECT MAX(not_before) FROM queuekit_messages WHERE queue = ?", (name,)
        ).fetchall()
    return latest is not None and time.time() > latest


def test_a_dedup_key_drops_duplicates_while_pending(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    first = queue.publish("a", key="user-1")
    queue.publish("b", key="user-1")
    queue.publish("c", key="user-2")
    assert queue.depth() == 2

    delivery = conn.transport.receive(name, 1)
    assert delivery is not None
    assert decode(delivery.body).id == first
    queue.publish("d", key="user-1")  # still in flight: still a duplicate
    conn.transport.ack(delivery)
    queue.publish("e", key="user-1")  # settled: the key is free again
    assert sorted(m.payload for m in receive_all(conn, name, 2)) == ["c", "e"]


def test_depth_and_purge(conn: Connection, name: str) -> None:
    queue, other = conn.queue(name), conn.queue(f"{name}-other")
    queue.publish_many(range(5))
    queue.publish("delayed", delay=3600)
    other.publish("kept")
    with connect(conn.url.render(reveal=True), prefetch=1) as consumer:  # claims one at a time
        in_flight = consumer.transport.receive(name, 1)
        assert in_flight is not None
        assert queue.depth() == 4  # ready: not the delayed one, nor the one in flight
        assert queue.purge() == 5  # the ready and the delayed
        assert queue.depth() == 0
        assert other.depth() == 1
        consumer.transport.ack(in_flight)  # purge left the in-flight one to its consumer


def test_bulk_publish_is_one_transaction(conn: Connection, name: str) -> None:
    ids = conn.queue(name).publish_many({"n": n} for n in range(1000))
    assert len(set(ids)) == 1000
    assert conn.queue(name).depth() == 1000


def test_url_options(db: Path) -> None:
    transport = open_transport(sqlite_url(db, lease="2.5", poll="0.01", synchronous="full"))
    try:
        assert isinstance(transport, SQLiteTransport)
        assert (transport.lease, transport.max_poll) == (2.5, 0.01)
        assert transport.path == str(db)
    finally:
        transport.close()


@pytest.mark.parametrize("option", ["lease", "poll"])
def test_a_bad_numeric_option_is_a_configuration_error(db: Path, option: str) -> None:
    from queuekit import ConfigurationError

    with pytest.raises(ConfigurationError, match=option):
        open_transport(sqlite_url(db, **{option: "abc"}))


def test_a_sqlite_url_with_a_host_is_refused() -> None:
    from queuekit import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"sqlite:///relative\.db"):
        open_transport("sqlite://host/jobs.db")


def test_a_new_file_at_a_relative_path_is_named_with_its_absolute_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A producer and a worker started in different directories would each create their own
    ``sqlite:///jobs.db``: the one creating it says where it is and how to name it from
    anywhere; opening it again, or a new file at an absolute path, says nothing."""
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING", logger="queuekit"):
        with connect("sqlite:///jobs.db") as conn:
            conn.queue("email").publish({"to": "a@example.com"})
        created = [r.getMessage() for r in caplog.records]
        caplog.clear()
        with connect("sqlite:///jobs.db") as conn:
            assert conn.queue("email").depth() == 1
        with connect(sqlite_url(tmp_path / "elsewhere" / "abs.db")):
            pass
        assert caplog.records == []
    assert len(created) == 1, created
    assert f"sqlite:///{tmp_path / 'jobs.db'}" in created[0]


# -- real worker processes --------------------------------------------------------------------


def test_two_worker_processes_process_2000_messages_exactly_once(
    tmp_path: Path, db: Path, conn: Connection, name: str
) -> None:
    outs = [tmp_path / "out-a.txt", tmp_path / "out-b.txt"]
    logs = [tmp_path / "log-a.txt", tmp_path / "log-b.txt"]
    url = sqlite_url(db)
    args = ["-v", "run", "tests.workers.queues:RecordingQueue", "--url", url, "--queue", name]
    workers = [start_worker(*args, cwd=tmp_path, env={"QK_OUT": str(out)}, log=log)
               for out, log in zip(outs, logs, strict=True)]  # fmt: skip
    try:
        wait_until(  # both are polling before any message
            lambda: all("consuming" in log.read_text(encoding="utf-8") for log in logs),
            timeout=30,
            what="both workers consuming",
        )
        conn.queue(name).publish_many({"n": n} for n in range(2000))
        wait_until(
            lambda: sum(len(lines(out)) for out in outs) >= 2000,
            timeout=90,
            what="2,000 messages processed",
        )
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        assert [worker.wait(SAFETY) for worker in workers] == [0, 0]
    finally:
        for worker in workers:
            stop(worker)

    processed = [[int(n) for n in lines(out)] for out in outs]
    everything = processed[0] + processed[1]
    assert len(everything) == 2000, "a message was processed twice"
    assert sorted(everything) == list(range(2000)), "a message was lost"
    assert all(processed), f"one worker got nothing: {[len(p) for p in processed]}"
    assert conn.queue(name).depth() == 0
    assert conn.failed.list() == []


def _gated_worker(tmp_path: Path, url: str, name: str, *extra: str) -> subprocess.Popen[str]:
    return start_worker(
        "-v", "run", "tests.workers.queues:GatedQueue", "--url", url, "--queue", name, *extra,
        cwd=tmp_path,
        env={
            "QK_OUT": str(tmp_path / "out.txt"),
            "QK_EVENTS": str(tmp_path / "events.txt"),
            "QK_RELEASE": str(tmp_path / "release"),
        },
    )  # fmt: skip


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name
)
def test_a_stop_signal_during_work_finishes_that_message_and_exits_0(
    tmp_path: Path, db: Path, conn: Connection, name: str, signum: signal.Signals
) -> None:
    conn.queue(name).publish_many({"n": n} for n in range(3))
    events = tmp_path / "events.txt"
    worker = _gated_worker(tmp_path, sqlite_url(db), name)
    try:
        wait_until(lambda: "started 0" in lines(events), timeout=30, what="work() to start")
        worker.send_signal(signum)
        (tmp_path / "release").touch()
        _, stderr = worker.communicate(timeout=SAFETY)
    finally:
        stop(worker)

    assert worker.returncode == 0, stderr
    assert f"received {signum.name}" in stderr
    assert "Traceback" not in stderr
    assert lines(events) == ["started 0", "done 0"]  # finished, and took nothing more
    assert lines(tmp_path / "out.txt") == ["0"]
    assert conn.queue(name).depth() == 2  # the finished one was acked, the rest wait
    rest = [m.payload["n"] for m in receive_all(conn, name, 2)]
    assert sorted([0, *rest]) == [0, 1, 2]  # nothing lost, nothing doubled
    assert conn.failed.list() == []


def test_a_second_sigint_aborts_and_gives_the_message_back_at_once(
    tmp_path: Path, db: Path, conn: Connection, name: str
) -> None:
    conn.queue(name).publish({"n": 0})
    events = tmp_path / "events.txt"
    worker = _gated_worker(tmp_path, sqlite_url(db), name)  # the default 30 s lease
    try:
        wait_until(lambda: "started 0" in lines(events), timeout=30, what="work() to start")
        # Signals do not queue: repeat until the worker has seen two and aborted.
        deadline = time.monotonic() + SAFETY
        while worker.poll() is None and time.monotonic() < deadline:
            worker.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(0.2)
        _, stderr = worker.communicate(timeout=SAFETY)
    finally:
        stop(worker)
    assert worker.returncode == 130, stderr
    assert lines(tmp_path / "out.txt") == []
    [message] = receive_all(conn, name, 1, timeout=2)  # back now, not after the lease
    assert message.payload == {"n": 0}


def test_a_worker_killed_mid_work_has_its_message_redelivered(
    tmp_path: Path, db: Path, name: str
) -> None:
    url = sqlite_url(db, lease="1")
    with connect(url) as conn:
        conn.queue(name).publish_many({"n": n} for n in range(2))
    events = tmp_path / "events.txt"
    worker = _gated_worker(tmp_path, url, name, "--prefetch", "1")
    try:
        wait_until(lambda: "started 0" in lines(events), timeout=30, what="work() to start")
        worker.send_signal(signal.SIGKILL)
        assert worker.wait(SAFETY) == -signal.SIGKILL
    finally:
        stop(worker)
    assert lines(tmp_path / "out.txt") == []  # it never finished

    with connect(url) as conn:
        deliveries: dict[int, Delivery] = {}
        deadline = time.monotonic() + SAFETY
        while len(deliveries) < 2:  # n=1 at once; n=0 once the dead worker's lease expires
            delivery = conn.transport.receive(name, max(deadline - time.monotonic(), 0))
            assert delivery is not None, f"lost: only {sorted(deliveries)} came back"
            deliveries[decode(delivery.body).payload["n"]] = delivery
            conn.transport.ack(delivery)
        assert sorted(deliveries) == [0, 1]
        assert deliveries[0].redelivered
        assert deliveries[0].delivery_count == 2
        assert not deliveries[1].redelivered
        assert conn.transport.receive(name, 0) is None


def test_a_live_worker_keeps_its_lease_past_the_lease_time(
    tmp_path: Path, db: Path, name: str
) -> None:
    url = sqlite_url(db, lease="1")
    with connect(url) as conn:
        conn.queue(name).publish({"n": 0})
        events = tmp_path / "events.txt"
        worker = _gated_worker(tmp_path, url, name, "--max-messages", "1")
        try:
            wait_until(lambda: "started 0" in lines(events), timeout=30, what="work() to start")
            # Three lease lengths pass while work() runs: the owner renews, nobody else gets it.
            assert conn.transport.receive(name, 3.0) is None
            (tmp_path / "release").touch()
            assert worker.wait(SAFETY) == 0
        finally:
            stop(worker)
        assert lines(events) == ["started 0", "done 0"]
        assert conn.queue(name).depth() == 0
        assert conn.transport.receive(name, 1.5) is None  # acked, so no lease expiry revives it


def test_garbage_in_the_queue_table_goes_to_the_failed_store_and_the_worker_goes_on(
    tmp_path: Path, db: Path, conn: Connection, name: str
) -> None:
    garbage = [b"\xff\xfe\x00\x01 binary junk", b"not json at all", b'{"valid": "json"}']
    with sqlite3.connect(db) as raw:
        raw.executemany(
            "INSERT INTO queuekit_messages (queue, state, priority, not_before, body)"
            " VALUES (?, 1, 0, 0, ?)",
            [(name, body) for body in garbage],
        )
    conn.queue(name).publish({"n": 7})
    out = tmp_path / "out.txt"
    result = run_worker(
        "run", "tests.workers.queues:RecordingQueue", "--url", sqlite_url(db), "--queue", name,
        "--max-messages", "4",
        cwd=tmp_path, env={"QK_OUT": str(out)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert lines(out) == ["7"]
    failed = conn.failed.list(name)
    assert [f.body for f in failed] == garbage
    reasons = [f.reason for f in failed]
    assert reasons[0].startswith("body is not UTF-8"), reasons
    assert reasons[1].startswith("body is not JSON"), reasons
    assert reasons[2] == "JSON is not a queuekit envelope (payload, metadata)"
    assert all(f.message_id is None for f in failed)
    assert conn.queue(name).depth() == 0
