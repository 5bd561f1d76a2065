"""The dispatch loop's semantics, run the same way on memory:// and sqlite://.

Given a published message, when a worker runs, then: success acks it; ``validate() is False``
or an undecodable body sends it to the failed store without retries; an exception retries it
(once, a minute later, by default) and records it with its traceback when spent;
``PermanentError``, ``RetryLater`` and ``StopWorker`` steer it; the limits end the loop.
"""

from __future__ import annotations

import copy
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest

from queuekit import (
    AbstractQueue,
    Connection,
    ConnectionLost,
    Message,
    PermanentError,
    Repeat,
    RetryLater,
    StopWorker,
    Unsupported,
    connect,
)
from queuekit.adapters.memory import MemoryTransport
from queuekit.jobstore.base import JobStoreError
from queuekit.spi import Delivery, register_transport
from queuekit.worker.loop import Worker
from queuekit.worker.pipeline import MAX_DELIVERIES, FunctionHandler
from tests.support import wait_until
from tests.workers.transports import NODELAY

SAFETY = 20.0  # max_seconds on every dispatch, so a broken loop fails instead of hanging


class Calls:
    """A work function that records messages and runs a script of outcomes."""

    def __init__(self, *outcomes: BaseException | None) -> None:
        self.messages: list[Message] = []
        self.outcomes = list(outcomes)

    def __call__(self, message: Message) -> None:
        self.messages.append(copy.deepcopy(message))  # the worker updates its own afterwards
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome

    @property
    def payloads(self) -> list[object]:
        return [m.payload for m in self.messages]


def test_success_acks_in_order(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    ids = queue.publish_many([1, "two", b"\x00three"])
    work = Calls()
    assert queue.dispatch(work, max_messages=3, max_seconds=SAFETY) == 3
    assert work.payloads == [1, "two", b"\x00three"]
    assert [m.id for m in work.messages] == ids
    assert queue.depth() == 0
    assert conn.failed.list() == []


def test_rejected_by_validate_goes_to_the_failed_store_without_retry(
    conn: Connection, name: str
) -> None:
    queue = conn.queue(name)
    message_id = queue.publish({"no": "to"}, name="welcome")
    work = Calls()
    queue.dispatch(work, validate=lambda m: "to" in m.payload, max_messages=1, max_seconds=SAFETY)
    assert work.messages == []
    assert queue.depth() == 0
    [failed] = conn.failed.list(name)
    assert (failed.queue, failed.message_id, failed.name) == (name, message_id, "welcome")
    assert failed.reason == "rejected by validate()"
    assert failed.attempts == 0
    assert b'"no":"to"' in failed.body


def test_a_message_delivered_too_often_unsettled_goes_to_the_failed_store_unrun(
    conn: Connection, name: str
) -> None:
    # Given a message whose workers died with it (handed back unsettled) 20 times
    queue = conn.queue(name)
    message_id = queue.publish({"poison": True})
    for _ in range(MAX_DELIVERIES):
        delivery = conn.transport.receive(name, 5)
        assert delivery is not None
        conn.transport.nack(delivery, requeue=True)
    # When a worker receives it once more
    work = Calls()
    queue.dispatch(work, max_messages=1, max_seconds=SAFETY)
    # Then it is not run: it is in the failed store, saying why
    assert work.messages == []
    assert queue.depth() == 0
    [failed] = conn.failed.list(name)
    assert failed.message_id == message_id
    assert failed.reason.startswith(f"delivered {MAX_DELIVERIES + 1} times and never settled")


def test_validate_raising_is_recorded_as_failed(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    queue.publish({})

    def validate(message: Message) -> bool:
        raise KeyError("to")

    queue.dispatch(Calls(), validate=validate, max_messages=1, max_seconds=SAFETY)
    [failed] = conn.failed.list(name)
    assert failed.reason.startswith("validate() raised KeyError")
    assert failed.traceback is not None
    assert "KeyError" in failed.traceback


def test_an_exception_is_retried_once_a_minute_later_by_default(
    conn: Connection, name: str
) -> None:
    queue = conn.queue(name)
    before = time.time()
    queue.publish("job")
    work = Calls(ValueError("boom"))
    assert queue.dispatch(work, max_messages=1, max_seconds=SAFETY) == 1
    assert conn.failed.list() == []
    assert queue.depth() == 0  # back on the queue, due later: delayed, not ready
    assert conn.transport.receive(name, 0.2) is None  # ... not now
    if conn.url.scheme == "sqlite":
        with sqlite3.connect(conn.url.path) as db:
            [(not_before, body)] = db.execute(
                "SELECT not_before, body FROM queuekit_messages WHERE queue = ?", (name,)
            ).fetchall()
        assert not_before >= before + 60
        assert b'"attempts":1' in body


def test_an_exhausted_message_goes_to_the_failed_store_with_its_traceback(
    conn: Connection, name: str
) -> None:
    queue = conn.queue(name)
    message_id = queue.publish("job", retry=Repeat(times=1, every=0))
    work = Calls(ValueError("boom 1"), ValueError("boom 2"))
    assert queue.dispatch(work, max_messages=2, max_seconds=SAFETY) == 2
    assert [m.metadata.attempts for m in work.messages] == [0, 1]
    assert {m.id for m in work.messages} == {message_id}
    assert queue.depth() == 0
    [failed] = conn.failed.list(name)
    assert failed.message_id == message_id
    assert failed.reason == "ValueError: boom 2"
    assert failed.attempts == 2
    assert failed.traceback is not None
    assert "ValueError: boom 2" in failed.traceback


def test_the_handler_strategy_applies_when_the_message_has_none(
    conn: Connection, name: str
) -> None:
    queue = conn.queue(name)
    queue.publish("job")
    work = Calls(*(RuntimeError(str(n)) for n in range(5)))
    queue.dispatch(work, retry=Repeat(times=2, every=0), max_messages=3, max_seconds=SAFETY)
    assert len(work.messages) == 3
    [failed] = conn.failed.list(name)
    assert failed.attempts == 3


def test_permanent_error_skips_retries(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    queue.publish("job", retry=Repeat(times=5, every=0))
    work = Calls(PermanentError("card declined"))
    queue.dispatch(work, max_messages=1, max_seconds=SAFETY)
    assert len(work.messages) == 1
    assert queue.depth() == 0
    [failed] = conn.failed.list(name)
    assert failed.reason == "permanent error: card declined"
    assert failed.traceback is not None


def test_retry_later_comes_back_without_counting_an_attempt(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    queue.publish("job", retry=Repeat(times=1, every=0))
    work = Calls(RetryLater(0), RetryLater(0), RetryLater(0), ValueError("x"), None)
    assert queue.dispatch(work, max_messages=5, max_seconds=SAFETY) == 5
    assert [m.metadata.attempts for m in work.messages] == [0, 0, 0, 0, 1]
    assert conn.failed.list() == []
    assert queue.depth() == 0


def test_retry_later_waits_the_delay_it_names(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    queue.publish("job")
    queue.dispatch(Calls(RetryLater(120, "rate limited")), max_messages=1, max_seconds=SAFETY)
    assert conn.failed.list() == []
    assert queue.depth() == 0  # delayed, not ready
    assert conn.transport.receive(name, 0.2) is None
    assert queue.purge() == 1  # but there


def test_stop_worker_records_the_message_and_ends_the_loop(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    queue.publish_many([1, 2, 3])
    work = Calls(StopWorker("database gone"))
    assert queue.dispatch(work, max_messages=3, max_seconds=SAFETY) == 1
    assert work.payloads == [1]
    assert queue.depth() == 2
    [failed] = conn.failed.list(name)
    assert failed.reason == "worker stopped: database gone"


def test_max_messages(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    queue.publish_many(range(5))
    assert queue.dispatch(Calls(), max_messages=3, max_seconds=SAFETY) == 3
    assert queue.depth() == 2


def test_max_seconds_ends_an_idle_worker(conn: Connection, name: str) -> None:
    assert conn.queue(name).dispatch(Calls(), max_seconds=0.2) == 0


def test_max_memory_ends_the_worker_before_it_takes_work(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    queue.publish_many([1, 2])
    assert queue.dispatch(Calls(), max_memory=1, max_seconds=SAFETY) == 0
    assert queue.depth() == 2


def test_stop_from_another_thread(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    work = Calls()
    worker = Worker(conn.broker, name, FunctionHandler(work), handle_signals=False)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        queue.publish("a")
        wait_until(lambda: work.messages, what="the worker to take the message")
    finally:
        worker.stop()
        thread.join(SAFETY)
    assert not thread.is_alive()
    assert worker.processed == 1


def test_failed_retry_puts_it_back_with_attempts_reset(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    message_id = queue.publish({"n": 1}, retry=Repeat(times=1, every=0))
    queue.dispatch(Calls(OSError("a"), OSError("b")), max_messages=2, max_seconds=SAFETY)
    [failed] = conn.failed.list(name)
    assert failed.attempts == 2

    assert conn.failed.retry(failed.id) is True
    assert conn.failed.retry(failed.id) is False  # already back
    assert conn.failed.list() == []
    work = Calls()
    queue.dispatch(work, max_messages=1, max_seconds=SAFETY)
    [again] = work.messages
    assert (again.id, again.payload, again.metadata.attempts) == (message_id, {"n": 1}, 0)
    assert again.metadata.retry == Repeat(times=1, every=0).to_json()


def test_failed_purge_by_queue(conn: Connection, name: str) -> None:
    other = f"{name}-other"
    for queue_name in (name, other):
        conn.queue(queue_name).publish("x")
        conn.queue(queue_name).dispatch(Calls(PermanentError()), max_messages=1, max_seconds=SAFETY)
    assert {f.queue for f in conn.failed.list()} == {name, other}
    assert conn.failed.purge(name) == 1
    assert [f.queue for f in conn.failed.list()] == [other]
    assert conn.failed.purge() == 1
    assert conn.failed.list() == []


class Greeter(AbstractQueue):
    queue = ""  # the name comes from the class: "greeter"
    seen: list[object]

    def validate(self, message: Message) -> bool:
        return isinstance(message.payload, str)

    def work(self, message: Message) -> None:
        type(self).seen.append((message.metadata.name, message.payload))


def test_an_abstract_queue_subclass_is_a_handler(conn: Connection) -> None:
    Greeter.seen = []
    greeter = Greeter(conn)
    assert Greeter.queue_name() == "greeter"
    greeter.publish("ada")
    greeter.publish(42)
    assert greeter.dispatch(max_messages=2, max_seconds=SAFETY) == 2
    assert Greeter.seen == [("Greeter", "ada")]
    [failed] = conn.failed.list("greeter")
    assert failed.reason == "rejected by validate()"
    assert conn.queue("greeter").depth() == 0  # the connection was lent, not closed


# -- delays on a transport without native delay: the job store's delayed store --------------


@pytest.fixture
def jobs_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/jobs.db"


def test_a_delay_waits_in_the_delayed_store_until_the_worker_forwards_it(
    jobs_url: str, name: str
) -> None:
    with connect(f"{NODELAY}://{uuid.uuid4().hex}", jobstore=jobs_url) as conn:
        queue = conn.queue(name)
        before = time.time()
        queue.publish("later", delay=0.5)
        assert conn.transport.depth(name) == 0  # not on the broker yet
        due = conn.jobs.next_due()
        assert due is not None
        assert before + 0.5 <= due

        received: list[tuple[float, Message]] = []
        queue.dispatch(lambda m: received.append((time.time(), m)), max_messages=1,
                       max_seconds=SAFETY)  # fmt: skip
        [(at, message)] = received
        assert message.payload == "later"
        assert message.metadata.not_before == due
        assert at >= due
        assert conn.jobs.next_due() is None


def test_a_delayed_message_survives_a_worker_restart(jobs_url: str, name: str) -> None:
    url = f"{NODELAY}://{uuid.uuid4().hex}"
    with connect(url, jobstore=jobs_url) as first:
        first.queue(name).publish("survivor", delay=2)
        assert first.queue(name).dispatch(Calls(), max_seconds=0.1) == 0  # not due yet
    with connect(url, jobstore=jobs_url) as second:
        assert second.jobs.next_due() is not None
        work = Calls()
        assert second.queue(name).dispatch(work, max_messages=1, max_seconds=SAFETY) == 1
        assert work.payloads == ["survivor"]


def test_a_retry_on_a_transport_without_delay_waits_in_the_delayed_store(
    jobs_url: str, name: str
) -> None:
    with connect(f"{NODELAY}://{uuid.uuid4().hex}", jobstore=jobs_url) as conn:
        queue = conn.queue(name)
        queue.publish("job")
        queue.dispatch(Calls(ValueError("boom")), max_messages=1, max_seconds=SAFETY)
        assert conn.transport.depth(name) == 0
        due = conn.jobs.next_due()
        assert due is not None
        assert due >= time.time() + 50
        assert conn.failed.list() == []


def test_a_job_store_outage_in_the_forwarder_does_not_stop_the_worker(
    jobs_url: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with connect(f"{NODELAY}://{uuid.uuid4().hex}", jobstore=jobs_url) as conn:
        queue = conn.queue(name)
        queue.publish("now")
        outages: list[str] = []

        def away(*args: object, **kwargs: object) -> int:
            outages.append("forward_due")
            raise JobStoreError("disk I/O error", recoverable=True)

        monkeypatch.setattr(conn.jobs, "forward_due", away)
        work = Calls()
        assert queue.dispatch(work, max_messages=1, max_seconds=SAFETY) == 1
        assert outages and work.payloads == ["now"]


def test_options_the_transport_lacks_are_refused_not_ignored(jobs_url: str, name: str) -> None:
    with connect(f"{NODELAY}://{uuid.uuid4().hex}", jobstore=jobs_url) as conn:
        queue = conn.queue(name)
        with pytest.raises(Unsupported, match="does not support priority"):
            queue.publish("x", priority=5)
        with pytest.raises(Unsupported):
            queue.publish_many(["x"], priority=1)
        assert conn.transport.depth(name) == 0


# -- poison messages that must not take the worker down -------------------------------------


def test_a_message_with_a_broken_retry_strategy_does_not_kill_the_worker(
    conn: Connection, name: str
) -> None:
    from queuekit.features.envelope import Metadata, encode

    body = encode(Message("x", Metadata(retry={"kind": "repeat", "times": "x", "every": 0})))
    conn.transport.send(name, body, {})
    conn.queue(name).publish("next")
    work = Calls(ValueError("boom"))
    conn.queue(name).dispatch(work, max_messages=2, max_seconds=SAFETY)
    assert work.payloads == ["x", "next"]


class _DropsOnce(MemoryTransport):
    """Loses its connection on the first receive of the first instance, as a broker restart
    would; every instance opened afterwards (the worker's reconnect) works."""

    dropped = False

    def receive(self, queue: str, timeout: float) -> Delivery | None:
        if not _DropsOnce.dropped:
            _DropsOnce.dropped = True
            raise ConnectionLost("broker went away")
        return super().receive(queue, timeout)


def test_a_lost_connection_is_reopened_and_the_loop_goes_on(name: str) -> None:
    # Given a transport that drops its connection once, with messages waiting
    register_transport("qktest-dropsonce", _DropsOnce)
    _DropsOnce.dropped = False
    conn = connect(f"qktest-dropsonce://{name}")
    first = conn.transport
    conn.queue(name).publish_many([1, 2, 3])
    seen: list[object] = []
    # When a worker runs through the drop
    processed = conn.queue(name).dispatch(lambda m: seen.append(m.payload), max_messages=3)
    # Then it reconnected on its own and processed everything
    assert _DropsOnce.dropped and conn.transport is not first
    assert processed == 3 and sorted(seen) == [1, 2, 3]
    conn.close()


def test_a_keyed_message_is_retried_not_dropped_by_its_own_key(conn: Connection, name: str) -> None:
    # Given a message with a dedup key whose first attempt fails
    conn.queue(name).publish("job", key="only-one", retry=Repeat(times=1, every=0))
    attempts: list[int] = []

    def work(message: Message) -> None:
        attempts.append(message.metadata.attempts)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")

    # When the worker runs it twice
    processed = conn.queue(name).dispatch(work, max_messages=2, max_seconds=SAFETY)
    # Then the retry was not taken for a duplicate of the message it replaces
    assert processed == 2 and attempts == [0, 1]
    assert conn.failed.list(name) == []
