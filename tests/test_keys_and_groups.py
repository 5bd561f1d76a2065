"""Dedup keys (while pending, ever) and serial groups, in process.

Each test runs on memory:// and sqlite:// (native dedup) and on a memory broker without
native dedup or delay (keys and delays through the job store). Real worker processes on
every broker: tests/test_job_features.py.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuekit import Connection, Intervals, Message, connect
from queuekit.features import groups
from queuekit.features.envelope import encode
from queuekit.spi.transport import Outgoing
from tests.support import (
    FEATURE_BROKERS,
    GroupLog,
    feature_connection,
    publish_undecodable,
    work_in_threads,
)
from tests.workers.transports import NODELAY

SAFETY = 20.0


@pytest.fixture(params=FEATURE_BROKERS)
def conn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Connection]:
    yield from feature_connection(request.param, tmp_path)


def ran(conn: Connection, queue: str, limit: int = 100) -> list[object]:
    """Work off what is waiting now; return the payloads in the order they ran."""
    seen: list[object] = []
    conn.queue(queue).dispatch(lambda m: seen.append(m.payload), max_seconds=1.0)
    return seen[:limit]


def test_a_pending_key_drops_a_second_publish_until_the_first_is_done(
    conn: Connection, name: str
) -> None:
    queue = conn.queue(name)
    queue.publish("first", key="user-1")
    queue.publish("second", key="user-1")
    queue.publish("other", key="user-2")
    assert ran(conn, name) == ["first", "other"]
    queue.publish("third", key="user-1")  # the first is done: the key is free again
    assert ran(conn, name) == ["third"]


def test_a_retry_keeps_the_key_and_failing_for_good_frees_it(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    queue.publish("job", key="k", retry=Intervals([0]))

    def boom(message: Message) -> None:
        raise ValueError("boom")

    assert queue.dispatch(boom, max_messages=1, max_seconds=SAFETY) == 1  # retried
    queue.publish("duplicate", key="k")
    assert queue.dispatch(boom, max_messages=1, max_seconds=SAFETY) == 1  # failed for good
    assert [f.reason for f in conn.failed.list(name)] == ["ValueError: boom"]
    queue.publish("after", key="k")
    assert ran(conn, name) == ["after"]


def test_an_ever_key_runs_once_even_across_connections(
    conn: Connection, name: str, tmp_path: Path
) -> None:
    queue = conn.queue(name)
    queue.publish("once", key="welcome-1", dedup="ever")
    queue.publish("again while pending", key="welcome-1", dedup="ever")
    queue.publish("pending form, same key", key="welcome-1")
    assert ran(conn, name) == ["once"]
    queue.publish("again after", key="welcome-1", dedup="ever")
    assert ran(conn, name) == []
    with connect(conn.url.render(reveal=True), jobstore=f"sqlite:///{tmp_path}/jobs.db") as new:
        new.queue(name).publish("from a new connection", key="welcome-1", dedup="ever")
    assert ran(conn, name) == []


def test_a_failed_publish_frees_the_key(tmp_path: Path, name: str) -> None:
    jobs = f"sqlite:///{tmp_path}/jobs.db"
    url = f"{NODELAY}://{uuid.uuid4().hex}"
    broken = connect(url, jobstore=jobs)
    broken.transport.close()  # every send now raises TransportClosed
    with pytest.raises(Exception, match="closed"):
        broken.queue(name).publish("lost", key="k", dedup="ever")
    broken.jobs.close()
    with connect(url, jobstore=jobs) as conn:
        conn.queue(name).publish("kept", key="k", dedup="ever")
        assert ran(conn, name) == ["kept"]


def test_a_hold_its_publisher_never_confirmed_is_taken_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with connect(f"{NODELAY}://{uuid.uuid4().hex}", jobstore=f"sqlite:///{tmp_path}/j.db") as c:
        assert c.jobs.hold_key("q", "k", "died-before-sending", ever=True)
        assert not c.jobs.hold_key("q", "k", "next", ever=True)
        later = time.time() + 61
        monkeypatch.setattr(time, "time", lambda: later)
        assert c.jobs.hold_key("q", "k", "next", ever=True)
        c.jobs.confirm_key("q", "k", "next")
        monkeypatch.setattr(time, "time", lambda: later + 3600)
        assert not c.jobs.hold_key("q", "k", "third", ever=True)


def test_dedup_modes_are_checked(conn: Connection, name: str) -> None:
    with pytest.raises(ValueError, match="needs a key"):
        conn.queue(name).publish("x", dedup="ever")
    with pytest.raises(ValueError, match="dedup must be one of"):
        conn.queue(name).publish("x", key="k", dedup="always")


# -- serial groups ---------------------------------------------------------------------------


def test_a_group_runs_one_at_a_time_in_publish_order_with_three_workers(
    conn: Connection, name: str
) -> None:
    queue = conn.queue(name)
    for number in range(8):
        for group in ("a", "b", "c"):
            queue.publish((group, number), group=group)
    work = GroupLog()
    work_in_threads(conn.url.render(reveal=True), conn.jobs.url.render(reveal=True), name, work)
    assert work.order == {g: list(range(8)) for g in ("a", "b", "c")}
    assert work.overlaps == 0


def test_a_retry_holds_its_group_back(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    queue.publish("first", group="g", retry=Intervals([0.3]))
    queue.publish("second", group="g")
    seen: list[str] = []

    def work(message: Message) -> None:
        seen.append(message.payload)
        if seen == ["first"]:
            raise ValueError("once")

    queue.dispatch(work, max_messages=3, max_seconds=SAFETY)
    assert seen == ["first", "first", "second"]


def test_a_group_head_nobody_sent_is_swept(conn: Connection, name: str) -> None:
    """A publisher that died after lining up its message but before sending it."""
    queue = conn.queue(name)
    queue.publish("in flight", group="g")
    lonely = encode(Message("lonely"))
    conn.jobs.add_grouped(name, "h", [("lonely", Outgoing(lonely), None)])
    assert ran(conn, name) == ["in flight", "lonely"]  # h's head was swept at start
    assert groups.sweep(conn, name) == 0


def test_grouped_messages_keep_their_keys(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    queue.publish("a", group="g", key="k")
    queue.publish("a again", group="g", key="k")
    queue.publish("b", group="g")
    assert ran(conn, name) == ["a", "b"]


def test_a_grouped_message_that_does_not_decode_fails_and_its_group_goes_on(
    conn: Connection, name: str
) -> None:
    # Given a group whose head does not decode, and a message behind it
    bad = publish_undecodable(conn, name, "g")
    conn.queue(name).publish("second", group="g")
    # When a worker works the queue off
    seen = ran(conn, name)
    # Then the head is in the failed store with its id, and the group went on
    assert seen == ["second"]
    [failed] = conn.failed.list(name)
    assert "unknown metadata field 'future'" in failed.reason
    assert failed.message_id == bad
    assert conn.jobs.claim_group_heads(name) == []  # nothing left lined up
