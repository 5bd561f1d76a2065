"""The dispatch loop: receive, decode, validate, work, settle; until told to stop.

At-least-once: a message is acked only after ``work()`` returns. What goes wrong is
recorded, never lost:

- a body that does not decode, or that ``validate()`` rejects, goes to the failed store
  with the reason and is dropped from the queue (no retries: it cannot get better);
- an exception from ``work()`` consults the retry strategy (the message's own, else the
  handler's): the message is published again, due later, with ``attempts + 1``, and only
  then is the original acked; when the strategy is spent it goes to the failed store;
- ``PermanentError`` skips retries, ``RetryLater`` comes back without counting an attempt,
  ``StopWorker`` records the message and ends the loop.

Signals (SIGTERM, SIGINT, SIGHUP) only set a flag; the loop finishes the message in hand,
settles it, and returns. A second SIGINT aborts at once: the un-acked message then goes
back to the broker (redelivery). ``receive`` returns ``None`` when idle, which is the
loop's heartbeat for noticing the flag and the limits. A ``ConnectionLost`` that the
adapter could not hide makes the loop reopen the transport, with capped backoff, and go on.

Job records and hooks (:mod:`queuekit.core.records`, :mod:`queuekit.core.hooks`) are looked
at only for a message that asks for a record or a handler that has hooks or keeps records;
every other message takes the plain path, which costs what it cost without them.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from . import groups, keys
from .envelope import Message, decode, encode_json
from .errors import (
    ConnectionLost,
    MalformedMessage,
    PermanentError,
    QueuekitError,
    RetryLater,
    StopWorker,
    Unsupported,
)
from .hooks import Hooks, hooks_of
from .priorities import PriorityRange
from .records import DONE, FAILED, RUNNING, WAITING, JobUpdate, encode_result, peak_memory
from .retry import DEFAULT_RETRY, RetryStrategy, strategy_from_json
from .transport import Delivery, Transport

if TYPE_CHECKING:
    from .queue import Queue

log = logging.getLogger("queuekit.worker")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_HEARTBEAT = 0.5  # seconds a receive may block before the loop checks flags and limits
_SCHEDULER_EVERY = 0.5  # seconds between forwards of due messages from the delayed store
_GROUP_SWEEP_EVERY = 5.0  # seconds between sweeps for serial-group heads nobody sent
_RECONNECT_CAP = 5.0  # longest wait between reconnect attempts


class Handler(Protocol):
    """What the loop calls: ``AbstractQueue`` subclasses and :class:`FunctionHandler`."""

    retry: RetryStrategy

    def validate(self, message: Message) -> bool: ...

    def work(self, message: Message) -> object: ...


class FunctionHandler:
    """Adapts plain callables to :class:`Handler`."""

    def __init__(
        self,
        work: Callable[[Message], object],
        validate: Callable[[Message], bool] | None = None,
        retry: RetryStrategy | None = None,
    ) -> None:
        self._work, self._validate = work, validate
        self.retry = retry or DEFAULT_RETRY
        self.keep_records = False

    def validate(self, message: Message) -> bool:
        return True if self._validate is None else self._validate(message)

    def work(self, message: Message) -> object:
        return self._work(message)


@dataclass(frozen=True)
class Limits:
    """When a worker exits cleanly on its own, for a supervisor to start a fresh one."""

    max_messages: int | None = None
    max_seconds: float | None = None
    max_memory: int | None = None  # bytes of resident memory


def resident_memory() -> int:
    """This process's resident set size in bytes (Linux ``/proc``; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Worker:
    """Runs ``handler`` over ``queue``; see the module docstring. ``stop()`` is thread-safe."""

    def __init__(
        self,
        queue: Queue,
        handler: Handler,
        *,
        limits: Limits = Limits(),
        handle_signals: bool = True,
        hooks: Hooks | None = None,
        record: bool = False,
        priorities: PriorityRange | None = None,
    ) -> None:
        self.queue, self.handler, self.limits = queue, handler, limits
        #: Take only messages with a priority in this range (capability ``priority_range``).
        self.priorities = priorities
        self.handle_signals = handle_signals
        self.hooks = hooks if hooks is not None else hooks_of(handler)
        #: Keep a record of every message, not only those published with ``record=True``.
        self.record_all = record or getattr(handler, "keep_records", False) is True
        self._observe_all = self.record_all or self.hooks.active
        self._pid = os.getpid()
        self.processed = 0
        self._stop_reason: str | None = None
        self._signals_seen = 0
        self._jobs = queue.connection.jobs
        caps = queue.transport.capabilities
        if priorities is not None and not caps.priority_range:
            raise Unsupported("priority ranges", queue.transport.name, "use sqlite://")
        self._emulates_delay = not caps.delay
        self._sweeps_groups = caps.redelivery  # groups are refused on other adapters
        self._next_sweep = 0.0
        self._counts_starts = caps.redelivery and not caps.marks_redelivery

    @property
    def _transport(self) -> Transport:
        return self.queue.transport  # replaced by a fresh one after a reconnect

    def stop(self, reason: str = "stop() called") -> None:
        self._stop_reason = self._stop_reason or reason

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        previous = self._install_signals()
        started = time.monotonic()
        next_check = 0.0
        log.info("worker %d consuming %r on %s", os.getpid(), self.queue.name,
                 self.queue.connection.url.redacted())  # fmt: skip
        if self.limits.max_messages is not None and self.limits.max_messages <= 0:
            self.stop("max_messages is 0")
        try:
            while self._stop_reason is None:
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + _SCHEDULER_EVERY
                    self._periodic(started)
                    if self._stop_reason is not None:
                        break
                try:
                    if self.priorities is None:
                        delivery = self._transport.receive(self.queue.name, _HEARTBEAT)
                    else:
                        delivery = self._transport.receive_priorities(
                            self.queue.name, _HEARTBEAT, self.priorities
                        )
                    if delivery is None:
                        continue
                    self._process(delivery)
                except ConnectionLost as exc:
                    # Un-acked work on the lost connection is the broker's to redeliver.
                    self._reconnect(exc)
                    continue
                self.processed += 1
                if self.limits.max_messages and self.processed >= self.limits.max_messages:
                    self.stop(f"processed {self.processed} messages")
        finally:
            self._restore_signals(previous)
            self._release()
        log.info("worker %d stopped: %s", os.getpid(), self._stop_reason)
        return self.processed

    def _periodic(self, started: float) -> None:
        try:
            self._forward()
        except ConnectionLost as exc:
            self._reconnect(exc)
        except (sqlite3.Error, QueuekitError) as exc:  # the job store is away: try again later
            log.warning("could not forward due or grouped messages: %s", exc)
        if self.limits.max_seconds and time.monotonic() - started >= self.limits.max_seconds:
            self.stop(f"ran {self.limits.max_seconds:g}s")
        if self.limits.max_memory and resident_memory() >= self.limits.max_memory:
            self.stop(f"resident memory reached {self.limits.max_memory} bytes")

    def _forward(self) -> None:
        """Send what the job store holds for the broker: due delayed messages, and heads of
        serial groups nobody sent."""
        if self._emulates_delay:
            self._jobs.forward_due(self._transport.send_many)
        if self._sweeps_groups and time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + _GROUP_SWEEP_EVERY
            groups.sweep(self.queue.connection, self.queue.name)

    def _release(self) -> None:
        """Hand prefetched, unstarted messages back for other workers (best effort)."""
        try:
            self._transport.release(self.queue.name)
        except QueuekitError as exc:
            log.warning("could not give back prefetched messages: %s", exc)

    def _reconnect(self, cause: ConnectionLost) -> None:
        """Reopen the transport with capped backoff until it works or the worker is stopped."""
        log.warning("connection lost (%s); reconnecting", cause)
        pause = 0.1
        while self._stop_reason is None:
            deadline = time.monotonic() + pause
            while self._stop_reason is None and time.monotonic() < deadline:
                time.sleep(0.05)  # short naps: a stop signal is noticed promptly
            try:
                self.queue.connection.reconnect()
            except ConnectionLost as exc:
                pause = min(pause * 2, _RECONNECT_CAP)
                log.warning("reconnect failed (%s); next try in %gs", exc, pause)
            else:
                log.info("reconnected to %s", self.queue.connection.url.redacted())
                return

    # -- one message ---------------------------------------------------------------------

    def _process(self, delivery: Delivery) -> None:
        try:
            message = decode(delivery.body)
        except MalformedMessage as exc:
            self._fail(delivery, exc.reason, None)
            return
        if self._counts_starts:
            self._process_counted(delivery, message)
        else:
            self._handle(delivery, message)

    def _process_counted(self, delivery: Delivery, message: Message) -> None:
        """For brokers that redeliver without saying so (gearmand): note each start in the
        job store, so an attempt that died with its worker counts, and a message that keeps
        killing workers ends in the failed store instead of coming back for ever."""
        died = self._jobs.begin_delivery(message.id) - 1
        try:
            if died:
                message.metadata.attempts += died
                delivery.redelivered, delivery.delivery_count = True, died + 1
                if self._next_wait(message) is None:
                    reason = f"its worker died during {died} attempt(s); no attempts left"
                    self._fail(delivery, reason, message)
                    return
            self._handle(delivery, message)
        finally:
            self._jobs.end_delivery(message.id)

    def _handle(self, delivery: Delivery, message: Message) -> None:
        if self._observe_all or message.metadata.record:
            self._process_observed(delivery, message)
            return
        try:
            valid = self.handler.validate(message)
        except Exception as exc:
            self._fail(delivery, f"validate() raised {exc!r}", message, traceback.format_exc())
            return
        if not valid:
            self._fail(delivery, "rejected by validate()", message)
            return
        try:
            result = self.handler.work(message)
        except RetryLater as exc:  # not an attempt: the count stays as it was
            self.queue.retry(delivery, message, delay=exc.delay)
        except Exception as exc:
            message.metadata.attempts += 1
            self._after_failure(delivery, message, exc)
        else:
            self._succeeded(delivery, message, result)

    def _succeeded(self, delivery: Delivery, message: Message, result: object) -> None:
        """Ack; a result goes along (as JSON, bytes as they are) for a caller waiting on it."""
        meta = message.metadata
        if meta.group is not None or meta.key is not None:
            self._finished(message)
        if result is None:
            self._transport.ack(delivery)
            return
        try:
            reply = result if isinstance(result, bytes) else encode_json(result).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            log.warning("the result of message %s is not JSON (%s): acked without it",
                        delivery.handle, exc)  # fmt: skip
            self._transport.ack(delivery)
            return
        self._transport.complete(delivery, reply)

    def _process_observed(self, delivery: Delivery, message: Message) -> None:
        """``_process`` with hooks and/or a job record: two record writes per attempt."""
        attempt = None
        if self.record_all or message.metadata.record:
            attempt = _Attempt(self, message)
            attempt.start()
        try:
            valid = self.handler.validate(message)
        except Exception as exc:
            reason = f"validate() raised {exc!r}"
            self._fail(delivery, reason, message, traceback.format_exc(), attempt)
            return
        if not valid:
            self._fail(delivery, "rejected by validate()", message, None, attempt)
            return
        hooks = self.hooks
        try:
            if hooks.before is not None:
                hooks.before(message)
            result = self.handler.work(message)
        except RetryLater as exc:
            if attempt is not None:
                attempt.end(WAITING, error=f"retry later: {exc}")
            self.queue.retry(delivery, message, delay=exc.delay)
        except Exception as exc:
            message.metadata.attempts += 1
            if hooks.on_error is not None:
                self._call_hook("on_error", attempt, hooks.on_error, message, exc)
            if (
                hooks.on_failed_attempts is not None
                and message.metadata.attempts == hooks.notify_after
            ):
                self._call_hook("on_failed_attempts", attempt, hooks.on_failed_attempts,
                                message, exc)  # fmt: skip
            self._after_failure(delivery, message, exc, attempt)
        else:
            if hooks.after is not None:
                self._call_hook("after_process", attempt, hooks.after, message, result)
            if attempt is not None:
                attempt.end(DONE, result=result)
            self._succeeded(delivery, message, result)

    def _call_hook(
        self, name: str, attempt: _Attempt | None, hook: Callable[..., object], *args: object
    ) -> None:
        """Run a hook; its exception is logged and noted in the record, never raised."""
        try:
            hook(*args)
        except Exception as exc:
            log.exception("%s hook raised for message %s", name, getattr(args[0], "id", "?"))
            if attempt is not None:
                attempt.notes.append(f"{name} hook raised {type(exc).__name__}: {exc}")

    def _after_failure(
        self,
        delivery: Delivery,
        message: Message,
        exc: Exception,
        attempt: _Attempt | None = None,
    ) -> None:
        meta = message.metadata
        trace = traceback.format_exc()
        if isinstance(exc, PermanentError):
            self._fail(delivery, f"permanent error: {exc}", message, trace, attempt)
            return
        if isinstance(exc, StopWorker):
            self._fail(delivery, f"worker stopped: {exc}", message, trace, attempt)
            self.stop(f"StopWorker: {exc}")
            return
        wait = self._next_wait(message)
        if wait is None:
            self._fail(delivery, f"{type(exc).__name__}: {exc}", message, trace, attempt)
            return
        log.warning("message %s failed (attempt %d), retrying in %gs: %r",
                    meta.id, meta.attempts, wait, exc)  # fmt: skip
        if attempt is not None:
            attempt.end(WAITING, error=f"{type(exc).__name__}: {exc}", trace=trace)
        self.queue.retry(delivery, message, delay=wait)

    def _next_wait(self, message: Message) -> float | None:
        """Seconds until the next attempt by the message's own strategy, else the handler's.

        A strategy in the envelope comes from outside: when it is broken the handler's
        applies, so one bad message can never stop the worker.
        """
        meta = message.metadata
        if meta.retry is not None:
            try:
                return strategy_from_json(meta.retry).delay_for(meta.attempts)
            except (TypeError, ValueError, IndexError) as bad:
                log.warning("message %s: ignoring its retry strategy: %r", meta.id, bad)
        return self.handler.retry.delay_for(meta.attempts)

    def _fail(
        self,
        delivery: Delivery,
        reason: str,
        message: Message | None,
        trace: str | None = None,
        attempt: _Attempt | None = None,
    ) -> None:
        """Record the message in the failed store, then drop it from the queue."""
        job = attempt.update(FAILED, error=reason, trace=trace) if attempt else None
        self._jobs.add_failed(
            self.queue.name,
            delivery.body,
            reason,
            message_id=message.id if message else None,
            name=message.metadata.name if message else None,
            traceback=trace,
            attempts=message.metadata.attempts if message else 0,
            headers=dict(delivery.headers),
            job=job,
        )
        log.warning("message %s failed for good: %s", message.id if message else "?", reason)
        if message is not None:
            self._finished(message)
        self._transport.nack(delivery, requeue=False)

    def _finished(self, message: Message) -> None:
        """Done with the message for good (before it is settled: a crash in between may run
        it twice, never block its key or its group): free a "while pending" key it holds
        in the job store, and send the next message of its serial group."""
        meta = message.metadata
        if meta.key is not None and keys.held_in_store(meta, self._transport.capabilities):
            keys.settled(self._jobs, self.queue.name, meta)
        if meta.group is not None:
            groups.advance(self.queue.connection, self.queue.name, meta.group, meta.id)

    def _write_record(self, write: Callable[[JobUpdate], None], update: JobUpdate) -> None:
        """A record write that fails is logged: the message itself is processed regardless."""
        try:
            write(update)
        except (sqlite3.Error, QueuekitError) as exc:
            log.warning("could not write the record of message %s: %s", update.id, exc)

    # -- signals -------------------------------------------------------------------------

    def _install_signals(self) -> dict[int, object]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}

    def _restore_signals(self, previous: dict[int, object]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only set flags here: logging and I/O are not safe inside a handler.
        self._signals_seen += 1
        if signum == signal.SIGINT and self._signals_seen > 1:
            raise KeyboardInterrupt
        self.stop(f"received {signal.Signals(signum).name}")


class _Attempt:
    """The record of one attempt at a recorded message: written when it starts and ends."""

    __slots__ = ("message", "notes", "started", "worker")

    def __init__(self, worker: Worker, message: Message) -> None:
        self.worker, self.message = worker, message
        self.notes: list[str] = []
        self.started = time.time()

    def start(self) -> None:
        self.worker._write_record(self.worker._jobs.start_job, self.update(RUNNING))

    def update(
        self,
        state: str,
        *,
        result: object = None,
        error: str | None = None,
        trace: str | None = None,
    ) -> JobUpdate:
        meta = self.message.metadata
        text, result_error = encode_result(result) if state == DONE else (None, None)
        errors = [e for e in (error, result_error, *self.notes) if e]
        running = state == RUNNING
        return JobUpdate(
            id=meta.id,
            queue=self.worker.queue.name,
            name=meta.name or None,
            state=state,
            # the attempt in hand counts while it runs and once it succeeded; a failure has
            # already been counted in the metadata, a RetryLater is not counted at all
            attempts=meta.attempts + 1 if state in (RUNNING, DONE) else meta.attempts,
            result=text,
            error="; ".join(errors) or None,
            traceback=trace,
            created_at=meta.created_at,
            started_at=self.started,
            finished_at=None if running else time.time(),
            worker_pid=self.worker._pid,
            peak_memory=None if running else peak_memory(),
        )

    def end(
        self,
        state: str,
        *,
        result: object = None,
        error: str | None = None,
        trace: str | None = None,
    ) -> None:
        update = self.update(state, result=result, error=error, trace=trace)
        self.worker._write_record(lambda u: self.worker._jobs.write_jobs([u]), update)
