"""Cases through queuekit's public API: graceful stop (15) and garbage on the wire (16).

Graceful stop sends a real SIGTERM to ``dispatch()`` in a child process; for
``process_local`` transports the worker runs in a thread and is stopped the way the signal
handler stops it (``Worker.stop``), since a signal cannot target a thread.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from ..client.connection import Connection, connect
from ..features.envelope import Message, decode
from ..features.signing import envelope_of
from ..spi.errors import MalformedMessage
from .cases import case
from .consumers import Consumer, ProcessConsumer
from .context import CaseFailure, Context, check, drain


@contextmanager
def _connection(ctx: Context) -> Iterator[Connection]:
    """A public-API connection with its own throwaway job store (failed store)."""
    directory = tempfile.mkdtemp(prefix="qkconf-")
    conn = connect(ctx.url.render(reveal=True), jobstore=f"sqlite:///{directory}/jobs.db")
    try:
        yield conn
    finally:
        conn.close()
        shutil.rmtree(directory, ignore_errors=True)


class _WorkerThread(Consumer):
    """dispatch() in a thread of this process (for process-local transports)."""

    def __init__(self, ctx: Context, queue: str, work_seconds: float) -> None:
        from ..worker.loop import Limits, Worker
        from ..worker.pipeline import FunctionHandler

        super().__init__()
        self._conn = connect(ctx.url.render(reveal=True), jobstore="sqlite:///:memory:")
        self.worker = Worker(
            self._conn.broker,
            queue,
            FunctionHandler(_work(self.record, work_seconds)),
            limits=Limits(max_seconds=ctx.settings.stop_timeout),
            handle_signals=False,
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            processed = self.worker.run()
            self.record({"event": "returned", "processed": processed})
        except Exception as exc:
            self.record({"event": "error", "detail": f"{type(exc).__name__}: {exc}"})
        finally:
            self._conn.close()

    def terminate(self) -> None:
        self.worker.stop("received SIGTERM (simulated: the transport is process-local)")

    def join(self, timeout: float) -> int | None:
        self._thread.join(timeout)
        return None if self._thread.is_alive() else 0


def _work(emit: Callable[[dict[str, Any]], None], seconds: float) -> Callable[[Message], None]:
    def work(message: Message) -> None:
        emit({"event": "working", "body": message.payload})
        time.sleep(seconds)  # the work in hand when SIGTERM arrives
        emit({"event": "done", "body": message.payload})

    return work


def dispatch_child(url: str, spec: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> int:
    """Child role ``dispatch``: work ``spec['queue']`` off until SIGTERM."""
    with connect(url, jobstore=spec["jobstore"]) as conn:
        processed = conn.queue(spec["queue"]).dispatch(
            _work(emit, float(spec["work"])), max_seconds=float(spec["max_seconds"])
        )
    emit({"event": "returned", "processed": processed})
    return 0


@case(15, "graceful_stop")
def graceful_stop(ctx: Context) -> None:
    """SIGTERM while work() runs: that message is finished and acked, or redelivered."""
    queue = ctx.queue("graceful")
    payloads = [f"g-{uuid.uuid4().hex[:8]}-{i}" for i in range(3)]
    work_seconds = 0.5 if ctx.settings.short else 1.0
    with _connection(ctx) as conn:
        conn.queue(queue).publish_many(payloads)
        if ctx.process_local:
            worker: _WorkerThread | ProcessConsumer = _WorkerThread(ctx, queue, work_seconds)
        else:
            jobstore = f"sqlite:///{tempfile.gettempdir()}/qkconf-{uuid.uuid4().hex}.db"
            worker = ProcessConsumer(ctx, {"role": "dispatch", "queue": queue,
                                           "work": work_seconds, "jobstore": jobstore,
                                           "max_seconds": ctx.settings.stop_timeout})  # fmt: skip
        try:
            worker.wait_for("working", timeout=ctx.settings.receive_timeout + 20)
            worker.terminate()
            worker.wait_for("returned", timeout=ctx.settings.stop_timeout)
        finally:
            if isinstance(worker, ProcessConsumer):
                worker.stop()
                _remove_sqlite(jobstore)
        started = [e["body"] for e in worker.events if e["event"] == "working"]
        finished = [e["body"] for e in worker.events if e["event"] == "done"]
        check(started[0] in finished, f"the message in hand ({started[0]}) was not finished")
        check(len(started) == 1, f"after SIGTERM the worker started {started[1:]}")
        waiting = len(payloads) - len(finished)
        bodies = drain(conn.transport, queue, waiting, ctx.settings.receive_timeout)
        bodies += drain(conn.transport, queue, 3, ctx.settings.quiet)
        # signed when QUEUEKIT_SIGNING_KEYS is set, like every message of the connection
        left = [decode(envelope_of(conn.broker.signer, queue, d.body)).payload for d in bodies]
    twice = [p for p in finished if p in left]
    check(not twice, f"finished but not acked (came back): {twice}")
    lost = [p for p in payloads if p not in finished and p not in left]
    check(not lost, f"lost across the stop: {lost}")


@contextmanager
def _quiet_worker_log() -> Iterator[None]:
    """Keep the worker's expected warnings out of the table (Python's last-resort handler
    would print them); an application's own logging configuration is left alone."""
    logger = logging.getLogger("queuekit.worker")
    handler = logging.NullHandler()
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _remove_sqlite(path_url: str) -> None:
    path = path_url.removeprefix("sqlite:///")
    for suffix in ("", "-wal", "-shm"):
        with suppress(FileNotFoundError):
            os.remove(path + suffix)


_GARBAGE = [b"\xff\xfe not utf-8", b'{"json": "but not an envelope"}', b"plain text"]


@case(16, "garbage")
def garbage(ctx: Context) -> None:
    """Bytes that are not an envelope end in the failed store; the worker goes on."""
    queue = ctx.queue("garbage")
    tag = uuid.uuid4().hex[:8]
    garbage_bodies = [body + tag.encode() for body in _GARBAGE]
    for body in garbage_bodies:
        try:
            decode(body)
        except MalformedMessage:
            continue
        raise AssertionError(f"test garbage {body!r} decodes")  # the suite's own bug
    raw = ctx.open()
    with _connection(ctx) as conn:
        raw.send(queue, garbage_bodies[0], {})
        conn.queue(queue).publish(f"good-{tag}")
        for body in garbage_bodies[1:]:
            raw.send(queue, body, {})
        seen: list[Any] = []
        with _quiet_worker_log():
            conn.queue(queue).dispatch(
                lambda message: seen.append(message.payload),
                max_messages=len(garbage_bodies) + 1,
                max_seconds=ctx.settings.receive_timeout + 5,
                handle_signals=False,
            )
        check(seen == [f"good-{tag}"], f"work() saw {seen}, expected only the good message")
        failed = {f.body: f for f in conn.failed.list(queue=queue)}
        for body in garbage_bodies:
            entry = failed.get(body)
            check(entry is not None, f"{body!r} is not in the failed store (raw bytes kept?)")
            assert entry is not None
            check(entry.reason, f"{body!r} is in the failed store without a reason")
        left = drain(raw, queue, 4, ctx.settings.quiet)
        if left:
            raise CaseFailure(f"{len(left)} messages stayed on the queue: {left[0].body[:40]!r}")
