"""One message through a handler: decode, validate, work, settle.

At-least-once: a message is acked only after ``work()`` returns. What goes wrong is
recorded, never lost:

- a body that does not decode, or that ``validate()`` rejects, goes to the failed store
  with the reason and is dropped from the queue (no retries: it cannot get better);
- an exception from ``work()`` consults the retry strategy (the message's own, else the
  handler's): the message goes back due later with ``attempts + 1`` (in place where the
  adapter can, else published again before the original is acked); when the strategy is
  spent it goes to the failed store;
- ``PermanentError`` skips retries, ``RetryLater`` comes back without counting an attempt,
  ``StopWorker`` records the message and asks the loop to end.

Settled for good (done, or failed), a message frees its "while pending" key and lets the
next message of its serial group go (:mod:`queuekit.features.keys`,
:mod:`queuekit.features.groups`).

Job records and hooks (:mod:`queuekit.jobstore.records`, :mod:`queuekit.features.hooks`) are looked
at only for a message that asks for a record or a handler that has hooks or keeps records;
every other message takes the plain path, which costs what it cost without them.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ..features import groups, keys
from ..features.envelope import Message, decode, encode_json
from ..features.hooks import Hooks
from ..features.retry import DEFAULT_RETRY, RetryStrategy, strategy_from_json
from ..features.rpc import send_reply
from ..jobstore.records import DONE, FAILED, RUNNING, WAITING, JobUpdate, encode_result, peak_memory
from ..spi.errors import MalformedMessage, PermanentError, QueuekitError, RetryLater, StopWorker
from ..spi.transport import Delivery

if TYPE_CHECKING:
    from ..client.queue import Queue

log = logging.getLogger("queuekit.worker")


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


class Processor:
    """Processes deliveries of ``queue`` with ``handler``; ``stop(reason)`` is how a
    ``StopWorker`` reaches the loop. The transport is looked up on the connection for each
    settle, so a reconnect (which replaces it) needs nothing here."""

    def __init__(
        self,
        queue: Queue,
        handler: Handler,
        hooks: Hooks,
        *,
        record_all: bool,
        stop: Callable[[str], None],
    ) -> None:
        self.queue, self.handler, self.hooks = queue, handler, hooks
        self.record_all = record_all
        self.stop = stop
        self._observe_all = record_all or hooks.active
        self._connection = queue.connection
        self._jobs = self._connection.jobs
        self._pid = os.getpid()
        caps = queue.transport.capabilities
        self._counts_starts = caps.redelivery and not caps.marks_redelivery

    def process(self, delivery: Delivery) -> None:
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
        if meta.group is not None or meta.key is not None or meta.reply_to is not None:
            self._finished(message, result=result)
        if result is None:
            self._connection.transport.ack(delivery)
            return
        try:
            reply = result if isinstance(result, bytes) else encode_json(result).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            log.warning("the result of message %s is not JSON (%s): acked without it",
                        delivery.handle, exc)  # fmt: skip
            self._connection.transport.ack(delivery)
            return
        self._connection.transport.complete(delivery, reply)

    def _process_observed(self, delivery: Delivery, message: Message) -> None:
        """``_process`` with hooks and/or a job record: two record writes per attempt."""
        attempt = None
        if self.record_all or message.metadata.record:
            attempt = Attempt(self, message)
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
        self, name: str, attempt: Attempt | None, hook: Callable[..., object], *args: object
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
        attempt: Attempt | None = None,
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
        attempt: Attempt | None = None,
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
            self._finished(message, error=reason)
        self._connection.transport.nack(delivery, requeue=False)

    def _finished(
        self, message: Message, *, result: object = None, error: str | None = None
    ) -> None:
        """Done with the message for good (before it is settled: a crash in between may run
        it twice, never block its key or its group or leave its caller without a reply):
        free a "while pending" key it holds in the job store, send the next message of its
        serial group, and reply to a caller waiting on it."""
        meta = message.metadata
        if meta.reply_to is not None:
            send_reply(self._connection.transport, meta, value=result, error=error)
        caps = self._connection.transport.capabilities
        if meta.key is not None and keys.held_in_store(meta, caps):
            keys.settled(self._jobs, self.queue.name, meta)
        if meta.group is not None:
            groups.advance(self._connection, self.queue.name, meta.group, meta.id)

    def _write_record(self, write: Callable[[JobUpdate], None], update: JobUpdate) -> None:
        """A record write that fails is logged: the message itself is processed regardless."""
        try:
            write(update)
        except QueuekitError as exc:
            log.warning("could not write the record of message %s: %s", update.id, exc)


class Attempt:
    """The record of one attempt at a recorded message: written when it starts and ends."""

    __slots__ = ("message", "notes", "processor", "started")

    def __init__(self, processor: Processor, message: Message) -> None:
        self.processor, self.message = processor, message
        self.notes: list[str] = []
        self.started = time.time()

    def start(self) -> None:
        self.processor._write_record(self.processor._jobs.start_job, self.update(RUNNING))

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
            queue=self.processor.queue.name,
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
            worker_pid=self.processor._pid,
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
        self.processor._write_record(lambda u: self.processor._jobs.write_jobs([u]), update)
