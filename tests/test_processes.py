"""Process managers in process, on memory:// and sqlite://: an instance per key, started,
moved on, completed; timeouts; nothing twice under redelivery, crashes after the commit and
eight threads; the no-instance policies; handlers checked when the class is made."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from queuekit import (
    AbstractQueue,
    ConfigurationError,
    Connection,
    Message,
    ProcessManager,
    connect,
)
from queuekit.features.envelope import Metadata
from queuekit.features.processes import event_message
from queuekit.jobstore.base import FORWARD_LEASE, ProcessInstance
from queuekit.worker.loop import Worker
from tests.support import wait_until
from tests.workers.processes import (
    Bump,
    Counter,
    CrashAfterCommit,
    Dropping,
    Failing,
    Finish,
    RaisesBeforeCommit,
    Started,
)


@contextlib.contextmanager
def working(*workers: Worker) -> Iterator[None]:
    """Run the workers on threads until the block ends."""
    threads = [threading.Thread(target=w.run) for w in workers]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for worker in workers:
            worker.stop()
        for thread in threads:
            thread.join(timeout=30)


def publish(conn: Connection, event: Any, *, queue: str = "counter") -> str:
    name, payload = event_message(event)
    return conn.queue(queue).publish(payload, name=name)


def instance(conn: Connection, key: str, manager: str = "Counter") -> ProcessInstance:
    found = [i for i in conn.jobs.processes(manager) if i.key == key]
    assert found, f"no instance {key!r} of {manager}"
    return found[0]


def settled(conn: Connection, key: str, manager: str = "Counter", **state: Any) -> bool:
    """Whether instance ``key`` exists and its state has these values."""
    found = [i for i in conn.jobs.processes(manager) if i.key == key]
    return bool(found) and all(found[0].state.get(k) == v for k, v in state.items())


def ended(conn: Connection, key: str) -> bool:
    return any(i.key == key and i.completed for i in conn.jobs.processes("Counter"))


def test_an_instance_is_started_moved_on_and_completed(conn: Connection) -> None:
    worker = Counter(conn).worker(handle_signals=False, concurrency=2)
    with working(worker):
        publish(conn, Started("o-1"))
        wait_until(lambda: conn.jobs.processes("Counter"), what="the instance")
        publish(conn, Started("o-1"))  # again, another id: dropped, the state stays
        for n in (1, 2, 10):
            publish(conn, Bump("o-1", n))
        # 10 schedules a tick now and one 0.2 s later: both come back, once each
        wait_until(lambda: settled(conn, "o-1", ticks=2), what="two ticks")
        assert sorted(instance(conn, "o-1").state["seen"]) == [1, 2, 10]  # two threads
        publish(conn, Finish("o-1"))
        wait_until(lambda: ended(conn, "o-1"), what="completion")
        publish(conn, Bump("o-1", 20))  # late: dropped, not run
        publish(conn, Bump("o-2", 1))  # no instance: logged and dropped
        wait_until(lambda: conn.queue("counter").depth() == 0, what="the late events")
    done = instance(conn, "o-1")
    assert sorted(done.state["seen"]) == [1, 2, 10] and done.state["ticks"] == 2
    assert done.version == 7
    assert done.timeouts == {} and conn.failed.list() == []
    assert [i.key for i in conn.jobs.processes("Counter")] == ["o-1"]


def test_a_timeout_after_completion_is_dropped(conn: Connection) -> None:
    worker = Counter(conn).worker(handle_signals=False)
    with working(worker):
        publish(conn, Started("o-1"))
        publish(conn, Bump("o-1", 10))  # a tick now and one in 0.2 s, both forwarded ...
        publish(conn, Finish("o-1"))  # ... after this completes the instance
        wait_until(lambda: ended(conn, "o-1"), what="completion")
        wait_until(lambda: conn.jobs.next_due() is None and conn.queue("counter").depth() == 0,
                   what="the timeout to come and go")  # fmt: skip
    assert instance(conn, "o-1").state == {"seen": [10], "ticks": 0}  # both dropped


def test_a_redelivered_message_changes_the_state_once_and_schedules_once(
    conn: Connection,
) -> None:
    publish(conn, Started("o-1"))
    bump = Message({"key": "o-1", "n": 10}, Metadata(name=event_message(Bump("o-1", 10))[0]))
    for _ in range(3):  # the same message id, three times
        conn.broker.resend("counter", bump)
    worker = Counter(conn).worker(handle_signals=False)
    with working(worker):
        wait_until(lambda: settled(conn, "o-1", ticks=2), what="the ticks")
        wait_until(lambda: conn.jobs.next_due() is None and conn.queue("counter").depth() == 0,
                   what="everything to settle")  # fmt: skip
    assert instance(conn, "o-1").state == {"seen": [10], "ticks": 2}
    assert instance(conn, "o-1").version == 4  # started, bump, tick, tick


def test_a_crash_after_the_commit_is_not_done_twice(conn: Connection) -> None:
    """``CrashAfterCommit`` raises after each first commit: every message is retried with
    its id, found handled, and acked; the state and the ticks are as without crashes."""
    worker = CrashAfterCommit(conn).worker(handle_signals=False)
    with working(worker):
        publish(conn, Started("o-1"))
        for n in (10, 20):
            publish(conn, Bump("o-1", n))
        wait_until(lambda: settled(conn, "o-1", "CrashAfterCommit", ticks=4), what="the ticks")
        wait_until(lambda: conn.jobs.next_due() is None and conn.queue("counter").depth() == 0,
                   what="everything to settle")  # fmt: skip
    done = instance(conn, "o-1", "CrashAfterCommit")
    assert done.state == {"seen": [10, 20], "ticks": 4} and done.version == 7
    assert conn.failed.list() == []


def test_eight_threads_never_interleave_two_steps_of_one_instance(conn: Connection) -> None:
    keys = [f"o-{k}" for k in range(3)]
    for key in keys:
        publish(conn, Started(key))
    worker = Counter(conn).worker(handle_signals=False, concurrency=8)
    with working(worker):
        wait_until(lambda: len(conn.jobs.processes("Counter")) == 3, what="three instances")
        conn.queue("counter").publish_many(
            [{"key": key, "n": n} for n in range(1, 61) for key in keys],
            name=event_message(Bump("", 0))[0],
        )
        wait_until(lambda: all(settled(conn, k, ticks=12) for k in keys), timeout=60,
                   what="every bump and tick")  # fmt: skip
        wait_until(lambda: conn.jobs.next_due() is None and conn.queue("counter").depth() == 0,
                   what="everything to settle")  # fmt: skip
    for key in keys:
        done = instance(conn, key)
        assert sorted(done.state["seen"]) == list(range(1, 61))
        assert done.state["ticks"] == 12 and done.version == 1 + 60 + 12


def test_the_no_instance_policy_drops_or_fails(conn: Connection) -> None:
    for cls, queue in ((Failing, "failing"), (Dropping, "dropping")):
        handler = type(cls.__name__, (cls,), {"queue": queue})
        worker = handler(conn).worker(handle_signals=False, max_messages=1)
        publish(conn, Bump("nobody", 1), queue=queue)
        worker.run()
    [failed] = conn.failed.list()
    assert failed.queue == "failing" and "has no instance 'nobody'" in failed.reason
    assert conn.jobs.processes() == []


def test_a_message_the_manager_does_not_handle_fails_for_good(conn: Connection) -> None:
    conn.queue("counter").publish({"key": "o-1"}, name="Unknown")
    conn.queue("counter").publish("not fields", name=event_message(Started(""))[0])
    Counter(conn).worker(handle_signals=False, max_messages=2).run()
    unknown, not_fields = (f.reason for f in conn.failed.list())
    assert "handles no 'Unknown' message" in unknown
    assert "is not an object of fields" in not_fields


def test_events_come_through_the_event_bridge_as_named_payloads(conn: Connection) -> None:
    from queuekit import EventManager, bridge

    class Shipments(ProcessManager):
        queue = "shipments"
        started_by = {"order.sent": lambda p: p["order_id"]}
        handles = {"order.shipped": lambda p: p["order_id"]}

        def on_order_sent(self, event: dict[str, Any], state: dict[str, Any]) -> None:
            state["sent"] = True

        def on_order_shipped(self, event: dict[str, Any], state: dict[str, Any]) -> None:
            self.complete()

    events = EventManager()
    bridge(events, "order.*", Shipments(conn), to_payload=lambda e: e.params)
    events.trigger("order.sent", None, order_id="o-9")
    events.trigger("order.shipped", None, order_id="o-9")
    events.trigger("order.shipped", None, order="o-9")  # no order_id: it never will have
    Shipments(conn).worker(handle_signals=False, max_messages=3).run()
    [done] = conn.jobs.processes("Shipments")
    assert (done.key, done.state, done.completed) == ("o-9", {"sent": True}, True)
    [failed] = conn.failed.list()
    assert "no key in order.shipped: KeyError('order_id')" in failed.reason


def test_a_handler_is_checked_when_the_class_is_made() -> None:
    @dataclass
    class Paid:
        order_id: str

    with pytest.raises(ConfigurationError, match="no method on_paid"):
        type("Billing", (ProcessManager,), {"handles": {Paid: lambda e: e.order_id}})
    with pytest.raises(ConfigurationError, match="no_instance must be one of"):
        type("Billing", (ProcessManager,), {"no_instance": "ignore"})


def test_schedule_outside_a_handler_and_to_an_unknown_queue_are_refused(conn: Connection) -> None:
    with pytest.raises(RuntimeError, match="for a process manager's handlers"):
        Counter(conn).complete()

    class Sender(Counter):
        def on_started(self, event: Started, state: dict[str, Any]) -> None:
            self.schedule(Unhandled(event.key))

    publish(conn, Started("o-1"))
    Sender(conn).worker(handle_signals=False, max_messages=1).run()
    [failed] = conn.failed.list()
    assert "does not handle" in failed.reason and conn.jobs.processes() == []


@dataclass
class Unhandled:
    key: str


class Recorder(AbstractQueue):
    queue = "checks"
    seen: list[str]

    def work(self, message: Message) -> None:
        self.seen.append(message.id)


def test_a_command_for_another_queue_goes_there_once_when_due(conn: Connection) -> None:
    class Checker(Counter):
        def on_started(self, event: Started, state: dict[str, Any]) -> None:
            super().on_started(event, state)
            self.schedule(Unhandled(event.key), queue="checks")
            self.schedule(Unhandled(event.key), delay=0.2, queue="checks")

    Recorder.seen = []
    with working(Checker(conn).worker(handle_signals=False),
                 Recorder(conn).worker(handle_signals=False)):  # fmt: skip
        publish(conn, Started("o-1"))
        wait_until(lambda: len(Recorder.seen) == 2, what="both commands")
        wait_until(lambda: conn.jobs.next_due() is None, what="nothing more due")
    assert len(set(Recorder.seen)) == 2
    assert instance(conn, "o-1", "Checker").version == 2  # started; the timeout passed on


def test_a_state_that_is_not_json_or_an_event_without_a_key_fails_for_good(
    conn: Connection,
) -> None:
    class Clocked(Counter):
        def on_started(self, event: Started, state: dict[str, Any]) -> None:
            state["at"] = {1, 2}  # a set: JSON cannot carry it

    publish(conn, Started("o-1"))
    conn.queue("counter").publish({"n": 1}, name=event_message(Bump("", 0))[0])
    Clocked(conn).worker(handle_signals=False, max_messages=2).run()
    not_json, no_key = (f.reason for f in conn.failed.list())
    assert "the state is not JSON" in not_json and conn.jobs.processes() == []
    assert "the payload does not make a Bump" in no_key


def test_a_timeout_forwarded_twice_is_handled_once(
    conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forwarder that dies after sending, before deleting, leaves its batch claimed; the
    next forwarder sends it again after the lease. Both ticks arrive twice, count once."""
    publish(conn, Started("o-1"))
    publish(conn, Bump("o-1", 10))  # a tick now and one in 0.2 s, in the delayed store
    Counter(conn).worker(handle_signals=False, max_messages=2).run()
    transport = conn.broker.transport

    def send_then_die(queue: str, batch: Any) -> None:
        transport.send_many(queue, batch)
        raise RuntimeError("the forwarder died before deleting what it sent")

    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 1)  # both are due
    with pytest.raises(RuntimeError):
        conn.jobs.forward_due(send_then_die)
    monkeypatch.setattr(time, "time", lambda: real() + 2 + FORWARD_LEASE)
    assert conn.jobs.forward_due(transport.send_many) == 2  # the same two, again
    assert Counter(conn).worker(handle_signals=False, max_messages=4).run() == 4
    done = instance(conn, "o-1")
    assert done.state == {"seen": [10], "ticks": 2} and done.version == 4


def test_eight_threads_on_every_job_store(store_url: str, tmp_path: Path) -> None:
    """The steps' versioning on PostgreSQL and MariaDB too: eight threads, one instance."""
    with connect(f"sqlite:///{tmp_path}/q.db", jobstore=store_url) as conn:
        publish(conn, Started("o-1"))
        Counter(conn).worker(handle_signals=False, max_messages=1).run()
        conn.queue("counter").publish_many([{"key": "o-1", "n": n} for n in range(1, 41)],
                                           name=event_message(Bump("", 0))[0])  # fmt: skip
        worker = Counter(conn).worker(handle_signals=False, concurrency=8)
        with working(worker):
            wait_until(lambda: settled(conn, "o-1", ticks=8), timeout=60, what="the ticks")
            wait_until(lambda: conn.jobs.next_due() is None and conn.queue("counter").depth() == 0,
                       what="everything to settle")  # fmt: skip
        done = instance(conn, "o-1")
    assert sorted(done.state["seen"]) == list(range(1, 41))
    assert done.state["ticks"] == 8 and done.version == 1 + 40 + 8


def test_a_handler_that_raises_writes_nothing_and_its_retry_counts_once(
    conn: Connection,
) -> None:
    with working(RaisesBeforeCommit(conn).worker(handle_signals=False)):
        publish(conn, Started("o-1"))
        for n in (10, 11):
            publish(conn, Bump("o-1", n))
        wait_until(lambda: settled(conn, "o-1", "RaisesBeforeCommit", ticks=2), what="ticks")
        wait_until(lambda: conn.jobs.next_due() is None and conn.queue("counter").depth() == 0,
                   what="everything to settle")  # fmt: skip
    done = instance(conn, "o-1", "RaisesBeforeCommit")
    assert done.state == {"seen": [10, 11], "ticks": 2} and done.version == 5
