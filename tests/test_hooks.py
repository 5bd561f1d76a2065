"""Hooks: before/after ``work()``, on an error, after N failed attempts; from an AbstractQueue
subclass or from callables given to ``dispatch``. A hook that raises never ends the worker."""

from __future__ import annotations

import logging

import pytest

from queuekit import AbstractQueue, Connection, Message, Repeat, connect
from queuekit.features.hooks import hooks_of
from queuekit.worker.pipeline import FunctionHandler

SAFETY = 20.0


class Plain(AbstractQueue):
    def work(self, message: Message) -> None:
        return None


class Hooked(AbstractQueue):
    """Logs every call; fails payloads starting with ``fail``."""

    retry = Repeat(times=3, every=0)
    notify_after = 2
    calls: list[tuple[str, object]] = []

    def before_process(self, message: Message) -> None:
        self.calls.append(("before", message.payload))

    def work(self, message: Message) -> object:
        self.calls.append(("work", message.payload))
        if str(message.payload).startswith("fail"):
            raise RuntimeError(f"{message.payload} #{message.metadata.attempts + 1}")
        return f"result of {message.payload}"

    def after_process(self, message: Message, result: object) -> None:
        self.calls.append(("after", result))

    def on_error(self, message: Message, exc: BaseException) -> None:
        self.calls.append(("error", str(exc)))

    def on_failed_attempts(self, message: Message, exc: BaseException) -> None:
        self.calls.append(("notify", message.metadata.attempts))


def test_a_handler_without_hooks_has_none_active() -> None:
    assert not hooks_of(Plain(connect("memory://x"))).active
    assert not hooks_of(FunctionHandler(print)).active


def test_hooks_run_around_work_in_order(conn: Connection) -> None:
    Hooked.calls = []
    hooked = Hooked(conn)
    assert hooks_of(hooked).active and hooks_of(hooked).notify_after == 2
    hooked.publish("a")
    assert hooked.dispatch(max_messages=1, max_seconds=SAFETY) == 1
    assert Hooked.calls == [("before", "a"), ("work", "a"), ("after", "result of a")]


def test_on_error_every_failure_and_notify_once_after_n_attempts(conn: Connection) -> None:
    Hooked.calls = []
    hooked = Hooked(conn)
    conn.queue(Hooked.queue_name()).purge()
    hooked.publish("fail")
    assert hooked.dispatch(max_messages=4, max_seconds=SAFETY) == 4  # 1 try + 3 retries
    errors = [c for c in Hooked.calls if c[0] == "error"]
    assert [e[1] for e in errors] == [f"fail #{n}" for n in (1, 2, 3, 4)]
    assert [c for c in Hooked.calls if c[0] == "notify"] == [("notify", 2)]
    assert ("after", "result of fail") not in Hooked.calls
    assert [f.attempts for f in conn.failed.list(Hooked.queue_name())] == [4]


def test_dispatch_takes_hooks_as_callables(conn: Connection, name: str) -> None:
    calls: list[tuple[str, object]] = []
    queue = conn.queue(name)
    queue.publish_many(["ok", "bad"])

    def work(message: Message) -> str:
        if message.payload == "bad":
            raise ValueError("bad")
        return "fine"

    queue.dispatch(
        work,
        retry=Repeat(times=1, every=0),
        before_process=lambda m: calls.append(("before", m.payload)),
        after_process=lambda m, r: calls.append(("after", r)),
        on_error=lambda m, e: calls.append(("error", repr(e))),
        on_failed_attempts=lambda m, e: calls.append(("notify", m.metadata.attempts)),
        notify_after=1,
        max_messages=3,
        max_seconds=SAFETY,
    )
    assert calls == [
        ("before", "ok"), ("after", "fine"),
        ("before", "bad"), ("error", "ValueError('bad')"), ("notify", 1),
        ("before", "bad"), ("error", "ValueError('bad')"),
    ]  # fmt: skip


def test_a_raising_after_hook_is_logged_and_recorded_and_the_worker_goes_on(
    conn: Connection, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = conn.queue(name)
    ids = [queue.publish(n, record=True) for n in (1, 2)]

    def after(message: Message, result: object) -> None:
        raise OSError("session already closed")

    with caplog.at_level(logging.ERROR, logger="queuekit.worker"):
        assert queue.dispatch(lambda m: m.payload * 10, after_process=after, max_messages=2,
                              max_seconds=SAFETY) == 2  # fmt: skip
    assert "after_process hook raised" in caplog.text
    records = [conn.job(i) for i in ids]
    assert [(r.state, r.result) for r in records if r] == [("done", 10), ("done", 20)]
    assert all(r and r.error and "session already closed" in r.error for r in records)
    assert queue.depth() == 0
    assert conn.failed.list(name) == []


def test_a_raising_before_hook_fails_the_attempt_without_running_work(
    conn: Connection, name: str
) -> None:
    queue = conn.queue(name)
    job_id = queue.publish("x", record=True)
    ran: list[object] = []

    def before(message: Message) -> None:
        raise ConnectionError("tenant database is down")

    queue.dispatch(ran.append, before_process=before, retry=Repeat(times=0),
                   max_messages=1, max_seconds=SAFETY)  # fmt: skip
    assert ran == []
    [failed] = conn.failed.list(name)
    assert "tenant database is down" in failed.reason
    record = conn.job(job_id)
    assert record is not None and record.state == "failed"


def test_raising_error_hooks_do_not_change_the_outcome(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    queue.publish("x")

    def explode(message: Message, exc: BaseException) -> None:
        raise RuntimeError("the alerting service is down too")

    def work(message: Message) -> None:
        raise ValueError("original")

    processed = queue.dispatch(work, on_error=explode, on_failed_attempts=explode,
                               notify_after=1, retry=Repeat(times=0), max_messages=1,
                               max_seconds=SAFETY)  # fmt: skip
    assert processed == 1
    [failed] = conn.failed.list(name)
    assert failed.reason == "ValueError: original"
