"""Concurrency: ``-c N`` threads and ``async def work`` tasks, with every promise kept.

In process first (the overlap itself, async handlers, a stop that waits for what is in
flight, a deadline that hands work back), then with real ``worker run -c 8`` processes on
every landed broker: nothing lost, SIGTERM finishes what is in flight, SIGKILL loses
nothing, serial groups stay in order, a priority range is kept, async handlers reply and
retry.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuekit import AbstractQueue, Connection, Message, NoRetry, RetryLater, connect
from queuekit.worker.loop import Limits, Worker
from queuekit.worker.pipeline import FunctionHandler, handler_for
from tests.support import wait_until
from tests.test_job_features import (  # noqa: F401 - the broker matrix
    BROKERS,
    Setup,
    assert_groups_run_in_order,
    out,
    setup,
)
from tests.workers.harness import lines, sqlite_url, wait_for_line

SAFETY = 60  # seconds a dispatch may run at most, so a broken test ends

#: SQLite (with a short lease, so a killed worker's messages come back soon) and every broker.
on_every_broker = pytest.mark.parametrize(
    "setup", [None, *BROKERS], indirect=True, ids=lambda b: "sqlite" if b is None else str(b)
)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[Connection]:
    with connect(sqlite_url(tmp_path / "q.db")) as connection:
        yield connection


def test_eight_threads_work_at_once(conn: Connection) -> None:
    queue = conn.queue("overlap")
    queue.publish_many([{"n": n} for n in range(16)])
    together = threading.Barrier(8, timeout=30)  # breaks unless 8 run at the same time
    done: list[int] = []

    def work(message: Message) -> None:
        together.wait()
        done.append(message.payload["n"])

    assert queue.dispatch(work, concurrency=8, max_messages=16, max_seconds=SAFETY) == 16
    assert sorted(done) == list(range(16))
    assert queue.depth() == 0


class AsyncOverlap(AbstractQueue):
    """Eight ``async def work`` tasks must be waiting at once for any to go on."""

    queue = "async-overlap"
    seen: list[int]
    running = 0
    gate: asyncio.Event | None = None

    async def work(self, message: Message) -> int:
        type(self).running += 1
        if type(self).gate is None:
            type(self).gate = asyncio.Event()
        if type(self).running >= 8:
            type(self).gate.set()  # type: ignore[union-attr]
        await asyncio.wait_for(type(self).gate.wait(), 30)  # type: ignore[union-attr]
        type(self).seen.append(message.payload)
        return int(message.payload) * 2


def test_async_work_runs_as_tasks_on_one_loop(conn: Connection) -> None:
    AsyncOverlap.seen = []
    queue = conn.queue(AsyncOverlap.queue)
    ids = queue.publish_many(list(range(8)), record=True)
    handler = AsyncOverlap(conn)
    assert handler.dispatch(concurrency=8, max_messages=8, max_seconds=SAFETY) == 8
    assert sorted(AsyncOverlap.seen) == list(range(8))
    results = [conn.job(i) for i in ids]
    assert [r.result if r else None for r in results] == [n * 2 for n in range(8)]


def test_a_stop_lets_what_is_in_flight_finish(conn: Connection) -> None:
    queue = conn.queue("finish")
    queue.publish_many([{"n": n} for n in range(12)])
    started, release = threading.Semaphore(0), threading.Event()
    done: list[int] = []

    def work(message: Message) -> None:
        started.release()
        release.wait(30)
        done.append(message.payload["n"])

    worker = Worker(conn.broker, "finish", FunctionHandler(work), handle_signals=False,
                    concurrency=4)  # fmt: skip
    thread = threading.Thread(target=worker.run)
    thread.start()
    for _ in range(4):
        assert started.acquire(timeout=30)
    worker.stop("test")
    release.set()
    thread.join(30)
    assert not thread.is_alive()
    assert len(done) == 4  # the four in flight finished; nothing more was taken
    assert (worker.processed, worker.handed_back) == (4, 0)
    assert queue.depth() == 8


class AsyncGated(AbstractQueue):
    """``async def work`` that waits until the test releases it."""

    queue = "async-finish"
    started: threading.Semaphore
    release: threading.Event
    done: list[int]

    async def work(self, message: Message) -> None:
        type(self).started.release()
        await asyncio.to_thread(type(self).release.wait, 30)
        type(self).done.append(message.payload["n"])


def test_a_stop_starts_none_of_the_async_work_waiting_for_a_task(conn: Connection) -> None:
    AsyncGated.started, AsyncGated.release = threading.Semaphore(0), threading.Event()
    AsyncGated.done = []
    queue = conn.queue(AsyncGated.queue)
    queue.publish_many([{"n": n} for n in range(12)])
    worker = AsyncGated(conn).worker(concurrency=4, handle_signals=False)
    thread = threading.Thread(target=worker.run)
    thread.start()
    for _ in range(4):
        assert AsyncGated.started.acquire(timeout=30)
    worker.stop("test")
    AsyncGated.release.set()
    thread.join(30)
    assert not thread.is_alive()
    assert len(AsyncGated.done) == 4  # the four running finished; the backlog went back
    assert (worker.processed, worker.handed_back) == (4, 0)
    assert queue.depth() == 8


def test_a_deadline_hands_unfinished_work_back(conn: Connection) -> None:
    queue = conn.queue("deadline")
    queue.publish({"n": 1})
    started, release = threading.Event(), threading.Event()

    def work(message: Message) -> None:
        started.set()
        release.wait(30)

    worker = Worker(conn.broker, "deadline", FunctionHandler(work), handle_signals=False,
                    shutdown_timeout=0.2)  # fmt: skip
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert started.wait(30)
        worker.stop("test")
        thread.join(30)
        assert not thread.is_alive()
        assert (worker.processed, worker.handed_back) == (0, 1)
        assert queue.depth() == 1  # back on the queue, not acked
    finally:
        release.set()
    again: list[object] = []
    assert queue.dispatch(lambda m: again.append(m.payload), max_messages=1,
                          max_seconds=SAFETY) == 1  # fmt: skip
    assert again == [{"n": 1}]


def test_retry_later_and_failures_settle_from_threads(conn: Connection) -> None:
    queue = conn.queue("mixed")
    queue.publish_many([{"n": n} for n in range(6)])
    tries: dict[int, int] = {}
    lock = threading.Lock()

    def work(message: Message) -> None:
        n = message.payload["n"]
        with lock:
            tries[n] = tries.get(n, 0) + 1
        if n % 3 == 1 and tries[n] == 1:
            raise RetryLater(0)
        if n % 3 == 2:
            raise ValueError("broken")

    processed = queue.dispatch(work, retry=NoRetry(), concurrency=4, max_seconds=SAFETY,
                               max_messages=8)  # fmt: skip
    assert processed == 8  # 6 first attempts + 2 that came back from RetryLater
    assert tries == {0: 1, 1: 2, 2: 1, 3: 1, 4: 2, 5: 1}
    assert sorted(f.message_id is not None for f in conn.failed.list("mixed")) == [True, True]


# -- real worker processes on every landed broker -------------------------------------------


@on_every_broker
def test_c8_processes_every_message(setup: Setup) -> None:  # noqa: F811
    count = 2000
    setup.env["QK_SLOW"] = "0.005"
    with setup.connect() as conn:
        conn.queue(setup.queue).publish_many([{"n": n} for n in range(count)])
    done = setup.run("SlowQueue", "-c", "8", "--max-messages", str(count),
                     "--max-seconds", "120")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert set(out(setup)) == {str(n) for n in range(count)}  # at least once each


def _gated(setup: Setup, count: int) -> tuple[Path, Path]:  # noqa: F811
    events, release = setup.tmp / "events.txt", setup.tmp / "release"
    setup.env.update(QK_EVENTS=str(events), QK_RELEASE=str(release))
    with setup.connect() as conn:
        conn.queue(setup.queue).publish_many([{"n": n} for n in range(count)])
    return events, release


def _started(events: Path) -> list[str]:
    return [line.split()[1] for line in lines(events) if line.startswith("started")]


@on_every_broker
def test_sigterm_with_eight_in_flight_finishes_them(setup: Setup) -> None:  # noqa: F811
    events, release = _gated(setup, 12)
    worker = setup.start("GatedQueue", "-c", "8", "--prefetch", "8", "-v")
    try:
        wait_until(lambda: len(_started(events)) >= 8, 60, "eight messages in flight")
        worker.send_signal(signal.SIGTERM)
        assert worker.stderr is not None
        wait_for_line(worker.stderr, "finishing 8 message(s) in flight")  # taking no more
        release.touch()
        _, errors = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, errors
    finished = out(setup)
    assert sorted(finished) == sorted(_started(events))  # every started message finished
    assert len(finished) == 8
    rest = setup.run("RecordingQueue", "--max-messages", "4", "--max-seconds", "60")
    assert rest.returncode == 0, rest.stderr
    assert sorted(out(setup), key=int) == [str(n) for n in range(12)]


@on_every_broker
def test_sigkill_with_eight_in_flight_loses_nothing(setup: Setup) -> None:  # noqa: F811
    with setup.connect() as conn:
        if not conn.transport.capabilities.redelivery:
            pytest.skip(f"{conn.transport.name} does not redeliver (declared)")
    events, release = _gated(setup, 8)
    worker = setup.start("GatedQueue", "-c", "8", "--prefetch", "8")
    try:
        wait_until(lambda: len(_started(events)) >= 8, 60, "eight messages in flight")
    finally:
        worker.kill()
        worker.communicate(timeout=60)
    release.touch()
    again = setup.run("RecordingQueue", "-c", "8", "--max-messages", "8", "--max-seconds", "90")
    assert again.returncode == 0, again.stderr
    assert sorted(out(setup), key=int) == [str(n) for n in range(8)]


@on_every_broker
def test_a_shutdown_timeout_hands_a_slow_message_back(setup: Setup) -> None:  # noqa: F811
    events, release = _gated(setup, 1)
    worker = setup.start("GatedQueue", "--shutdown-timeout", "2")
    try:
        wait_until(lambda: _started(events) == ["0"], 60, "the message to start")
        worker.send_signal(signal.SIGTERM)
        _, errors = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode != 0
    assert "handed 1 unfinished message(s) back" in errors, errors
    assert out(setup) == []
    release.touch()
    again = setup.run("RecordingQueue", "--max-messages", "1", "--max-seconds", "90")
    assert again.returncode == 0, again.stderr
    assert out(setup) == ["0"]


@on_every_broker
def test_serial_groups_keep_order_with_c8_workers(setup: Setup) -> None:  # noqa: F811
    with setup.connect() as conn:
        if not conn.transport.capabilities.redelivery:
            pytest.skip("serial groups need redelivery")
        for n in range(6):
            for group in ("a", "b", "c"):
                conn.queue(setup.queue).publish([group, n], group=group)
    assert_groups_run_in_order(setup, "-c", "8")


@on_every_broker
def test_a_priority_range_with_c8_takes_nothing_outside_it(setup: Setup) -> None:  # noqa: F811
    with setup.connect() as conn:
        if not conn.transport.capabilities.priority_range:
            pytest.skip(f"{conn.transport.name} has no priority ranges (declared)")
        for n in range(40):
            conn.queue(setup.queue).publish({"n": n}, priority=90 if n % 2 else 10)
    done = setup.run("RecordingQueue", "-p", "50-", "-c", "8", "--max-messages", "20",
                     "--max-seconds", "60")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(out(setup), key=int) == [str(n) for n in range(1, 40, 2)]


@on_every_broker
def test_async_work_replies_and_retries(setup: Setup) -> None:  # noqa: F811
    worker = setup.start("AsyncDoublingQueue", "-c", "4")
    try:
        with setup.connect() as conn:
            queue = conn.queue(setup.queue)
            assert queue.call({"n": 21}, timeout=60) == {"doubled": 42}
            replies = queue.gather([{"n": 1}, {"n": -1}, {"n": 5}], timeout=60)
    finally:
        worker.terminate()
        _, errors = worker.communicate(timeout=60)
    assert worker.returncode == 0, errors
    assert [r.value if r and r.ok else (r and r.error) for r in replies] == [
        {"doubled": 2},
        "permanent error: -1 is negative",
        {"doubled": 10},  # after a retry
    ]


@on_every_broker
def test_async_work_processes_every_message(setup: Setup) -> None:  # noqa: F811
    count = 200
    setup.env["QK_SLOW"] = "0.05"
    with setup.connect() as conn:
        conn.queue(setup.queue).publish_many([{"n": n} for n in range(count)])
    done = setup.run("AsyncRecordingQueue", "-c", "8", "--max-messages", str(count),
                     "--max-seconds", "120")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert set(out(setup)) == {str(n) for n in range(count)}


def test_a_plain_async_function_is_awaited(conn: Connection) -> None:
    queue = conn.queue("async-function")
    queue.publish_many([{"n": n} for n in range(4)])
    done: list[int] = []

    async def work(message: Message) -> None:
        await asyncio.sleep(0)
        done.append(message.payload["n"])

    assert queue.dispatch(work, concurrency=2, max_messages=4, max_seconds=SAFETY) == 4
    assert sorted(done) == [0, 1, 2, 3]


# -- quick sync work in the loop thread (ThreadRunner's inline_short) -----------------------


def test_quick_sync_work_moves_to_the_loop_thread_and_a_slow_one_back(conn: Connection) -> None:
    """At ``-c 8``, quick sync jobs run in the loop thread once the threads have a record
    of them, though the broker always has the next message ready (the runner counts as
    full while quick ones are in flight, so the loop settles them and runs the next one
    itself); a slow job sends the next ones back to the threads."""
    quick, slow_one = 300, 300
    queue = conn.queue("sync-inline")
    queue.publish_many([{"n": n} for n in range(quick + 4)])
    ran: dict[int, int] = {}

    def work(message: Message) -> None:
        n = message.payload["n"]
        if n == slow_one:
            time.sleep(0.05)
        ran[n] = threading.get_ident()

    done = queue.dispatch(work, concurrency=8, max_messages=quick + 4, max_seconds=SAFETY)
    assert done == quick + 4
    here = threading.get_ident()
    assert ran[0] != here  # the first ones in the threads: no record yet
    # most in the loop thread by then (a hiccup of the machine sends a few back to threads)
    assert sum(ran[n] == here for n in range(quick - 100, quick)) >= 50
    assert ran[slow_one + 1] != here  # after a slow one: the threads again


# -- quick async work in the loop thread (AsyncRunner's inline_short) ------------------------


def test_quick_async_work_moves_to_the_loop_thread_and_keeps_its_clients(
    conn: Connection,
) -> None:
    """Quick ``async def work`` runs in the loop thread once the event-loop thread parked;
    a connection opened on the worker's event loop serves every message, wherever it ran;
    a slow job sends the next ones back to the event-loop thread (those after the up to 8
    taken with it, which ran with it in the loop thread)."""
    quick, slow_one, total = 300, 300, 312
    queue = conn.queue("async-inline")
    queue.publish_many([{"n": n} for n in range(total)])
    ran: dict[int, tuple[int, asyncio.AbstractEventLoop]] = {}
    stream: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.Lock]] = []
    ends: list[asyncio.StreamWriter] = []  # both ends stay open (a lost one closes them)

    async def work(message: Message) -> None:
        n = message.payload["n"]
        if not stream:  # one connection for the worker's life, bound to its event loop
            ours, theirs = socket.socketpair()
            reader, mine = await asyncio.open_connection(sock=ours)
            _, writer = await asyncio.open_connection(sock=theirs)
            stream.append((reader, writer, asyncio.Lock()))
            ends.extend((mine, writer))
        reader, writer, lock = stream[0]
        async with lock:
            writer.write(b"%d\n" % n)
            assert await asyncio.wait_for(reader.readline(), 10) == b"%d\n" % n
        if n == slow_one:
            await asyncio.sleep(0.05)
        ran[n] = (threading.get_ident(), asyncio.get_running_loop())
        if len(ran) == total:
            for end in ends:
                end.close()

    done = queue.dispatch(work, concurrency=8, max_messages=total, max_seconds=SAFETY)
    assert done == total
    assert len({loop for _, loop in ran.values()}) == 1  # one event loop throughout
    here = threading.get_ident()
    assert ran[0][0] != here  # the first ones in the event-loop thread: no record yet
    # most in the loop thread by then (a hiccup of the machine sends a few back to tasks)
    assert sum(ran[n][0] == here for n in range(quick - 100, quick)) >= 50
    assert ran[slow_one + 8][0] != here  # after a slow one: the event-loop thread again


def test_quick_async_work_delivered_together_runs_together_within_max_messages(
    conn: Connection,
) -> None:
    """Quick ``async def work`` in the loop thread takes up to ``-c`` messages that are there
    at once and runs them as tasks side by side; it never takes more than ``max_messages``
    leaves room for: the rest stay queued."""
    queue = conn.queue("async-together")
    queue.publish_many([{"n": n} for n in range(500)])
    here = threading.get_ident()
    seen: list[tuple[bool, int]] = []  # (in the loop thread, tasks alive on the loop)

    async def work(message: Message) -> None:
        seen.append((threading.get_ident() == here, len(asyncio.all_tasks())))
        await asyncio.sleep(0)  # each lets the others run: together, they overlap

    assert queue.dispatch(work, concurrency=8, max_messages=450, max_seconds=SAFETY) == 450
    assert len(seen) == 450
    assert queue.depth() == 50
    together = [alive for inline, alive in seen if inline]
    assert together and max(together) == 8  # a full -c of them at once, in the loop thread
    assert max(alive for _, alive in seen) <= 8


def test_tasks_that_async_work_leaves_behind_go_on_while_idle(conn: Connection) -> None:
    """A task started by a message that ran in the loop thread keeps running after it,
    with no further message to run the event loop."""
    quick = 200
    queue = conn.queue("async-left-behind")
    queue.publish_many([{"n": n} for n in range(quick)])
    spawned_in, finished = [0], threading.Event()
    background: set[asyncio.Task[None]] = set()

    async def later() -> None:
        for _ in range(5):
            await asyncio.sleep(0.02)
        finished.set()

    async def work(message: Message) -> None:
        if message.payload["n"] == quick - 1:
            spawned_in[0] = threading.get_ident()
            task = asyncio.create_task(later())
            background.add(task)
            task.add_done_callback(background.discard)

    worker = Worker(conn.broker, "async-left-behind", handler_for(work),
                    handle_signals=False, concurrency=4,
                    limits=Limits(max_messages=quick + 1, max_seconds=SAFETY))  # fmt: skip
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_until(lambda: spawned_in[0], 30, "the last quick message")
        assert spawned_in[0] == thread.ident  # it ran in the loop thread
        assert finished.wait(10)  # the queue is empty: nothing but its own thread ran it
    finally:
        queue.publish({"n": -1})  # the last message lets the worker end
        thread.join(30)
    assert not thread.is_alive()
    assert worker.processed == quick + 1


def test_a_deadline_cancels_unfinished_async_work(conn: Connection) -> None:
    queue = conn.queue("async-deadline")
    queue.publish({"n": 1})
    started, outcome = threading.Event(), []

    async def work(message: Message) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    worker = Worker(conn.broker, "async-deadline", handler_for(work),
                    handle_signals=False, shutdown_timeout=0.2)  # fmt: skip
    thread = threading.Thread(target=worker.run)
    thread.start()
    assert started.wait(30)
    worker.stop("test")
    thread.join(30)
    assert not thread.is_alive()
    assert (worker.processed, worker.handed_back) == (0, 1)
    assert outcome == ["cancelled"]  # close() cancelled it on the event loop
    assert queue.depth() == 1  # back on the queue, not acked
