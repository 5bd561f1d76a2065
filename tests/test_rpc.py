"""Request/response: ``call`` and ``gather`` against a worker in a thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from queuekit import Connection, Message, PermanentError, RemoteError, ReplyTimeout, connect
from tests.support import FEATURE_BROKERS, feature_connection, wait_until


@pytest.fixture(params=FEATURE_BROKERS)
def conn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Connection]:
    yield from feature_connection(request.param, tmp_path)


def double(message: Message) -> object:
    n = message.payload
    if n == "bytes":
        return b"\x00raw"
    if n == "not json":
        return object()
    if n < 0:
        raise PermanentError(f"{n} is negative")
    return {"doubled": 2 * n}


@contextmanager
def worker(conn: Connection, queue: str, work: Callable[[Message], object]) -> Iterator[None]:
    """A worker on its own connection in a thread, for the length of the block."""
    stop = threading.Event()
    url, jobs = conn.url.render(reveal=True), conn.jobs.url.render(reveal=True)

    def run() -> None:
        with connect(url, jobstore=jobs) as own:
            while not stop.is_set():
                own.queue(queue).dispatch(work, max_seconds=0.5, handle_signals=False)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_call_returns_what_work_returned(conn: Connection, name: str) -> None:
    with worker(conn, name, double):
        assert conn.queue(name).call(21, timeout=20) == {"doubled": 42}


def test_a_request_that_fails_for_good_raises_remote_error(conn: Connection, name: str) -> None:
    with worker(conn, name, double), pytest.raises(RemoteError, match="-1 is negative"):
        conn.queue(name).call(-1, timeout=20)
    assert [f.reason for f in conn.failed.list(name)] == ["permanent error: -1 is negative"]


def test_gather_keeps_request_order_and_marks_failures(conn: Connection, name: str) -> None:
    with worker(conn, name, double):
        replies = conn.queue(name).gather([1, -2, 3, "bytes", "not json"], timeout=20)
    assert [r.ok if r else None for r in replies] == [True, False, True, True, False]
    assert [r.value for r in replies if r and r.ok] == [{"doubled": 2}, {"doubled": 6}, b"\x00raw"]
    assert replies[4] is not None and "cannot be sent" in (replies[4].error or "")


def test_no_worker_means_a_timeout_and_a_late_reply_is_dropped(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    with pytest.raises(ReplyTimeout, match=r"within 0\.3s"):
        queue.call(5, timeout=0.3)
    assert queue.gather([6], timeout=0.2) == [None]
    with worker(conn, name, double):  # the two old requests now run; their replies are late
        assert queue.call(7, timeout=20) == {"doubled": 14}


def test_threads_share_the_reply_queue(conn: Connection, name: str) -> None:
    results: dict[int, object] = {}

    def ask(n: int) -> None:
        results[n] = conn.queue(name).call(n, timeout=30)

    with worker(conn, name, double):
        askers = [threading.Thread(target=ask, args=(n,)) for n in range(8)]
        for asker in askers:
            asker.start()
        for asker in askers:
            asker.join()
    assert results == {n: {"doubled": 2 * n} for n in range(8)}


def test_closing_the_connection_deletes_its_reply_queue(tmp_path: Path, name: str) -> None:
    url = f"sqlite:///{tmp_path}/q.db"
    with connect(url) as conn:
        with pytest.raises(ReplyTimeout):
            conn.queue(name).call(1, timeout=0.1)
        reply_queue = conn.replies.name
        with worker(conn, name, double):  # the late reply lands in the reply queue
            wait_until(lambda: conn.queue(reply_queue).depth() == 1, 20, "the late reply")
    with connect(url) as conn:
        assert conn.queue(reply_queue).depth() == 0


def test_error_replies_say_why(conn: Connection, name: str) -> None:
    with worker(conn, name, double):
        [reply] = conn.queue(name).gather([-5], timeout=20)
    assert reply is not None and reply.error == "permanent error: -5 is negative"
    with pytest.raises(RemoteError, match="negative"):
        reply.result()
