"""One message through a handler: decode, validate, work, settle. The one path there is.

At-least-once: a message is acked only after ``work()`` returns. What goes wrong is
recorded, never lost:

- a body that does not decode, or that ``validate()`` rejects, goes to the failed store
  with the reason and is dropped from the queue (no retries: it cannot get better);
- an exception from ``work()`` consults the retry strategy (the message's own, else the
  handler's): the message goes back due later with ``attempts + 1`` (in place where the
  adapter can, else published again before the original is acked); when the strategy is
  spent it goes to the failed store;
- ``PermanentError`` skips retries, ``RetryLater`` comes back without counting an attempt,
  ``StopWorker`` records the message and asks the loop to end;
- a message registered in another job store than the worker's is refused to the failed
  store before anything else (:mod:`queuekit.features.storeid`).

Everything else that happens around a message (job records, hooks, the reply to a caller,
freeing a dedup key, sending the next message of a serial group) is an
:class:`~queuekit.worker.observers.Observer` told of each step. A message none of them
applies to (the common case) takes the same path with no observer called.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..features import storeid
from ..features.broker import Broker
from ..features.envelope import Message, decode, encode_json
from ..features.hooks import Hooks
from ..features.retry import DEFAULT_RETRY, NoRetry, RetryStrategy, strategy_from_json
from ..jobstore.records import JobUpdate
from ..spi.errors import (
    ConfigurationError,
    MalformedMessage,
    PermanentError,
    RetryLater,
    StopWorker,
)
from ..spi.transport import Delivery
from .observers import GroupRelease, HookCalls, KeyRelease, Observer, Records, Replies

log = logging.getLogger("queuekit.worker")


class Handler(Protocol):
    """Everything the worker reads of a handler (``AbstractQueue`` subclasses and
    :class:`FunctionHandler`)."""

    @property
    def retry(self) -> RetryStrategy | None:
        """How failures are retried; ``None`` means no retries."""

    @property
    def keep_records(self) -> bool:
        """Keep a job record of every message, not only of those published with one."""

    def hooks(self) -> Hooks:
        """The hooks to call around each message (:mod:`queuekit.features.hooks`)."""

    def validate(self, message: Message) -> bool: ...

    def work(self, message: Message) -> object: ...


class FunctionHandler:
    """Adapts plain callables to :class:`Handler`."""

    keep_records = False

    def __init__(
        self,
        work: Callable[[Message], object],
        validate: Callable[[Message], bool] | None = None,
        retry: RetryStrategy | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self._work, self._validate = work, validate
        self.retry = retry or DEFAULT_RETRY
        self._hooks = hooks or Hooks()

    def hooks(self) -> Hooks:
        return self._hooks

    def validate(self, message: Message) -> bool:
        return True if self._validate is None else self._validate(message)

    def work(self, message: Message) -> object:
        return self._work(message)


def retry_strategy(handler: Handler) -> RetryStrategy:
    """The handler's strategy, checked when the worker starts rather than at the first
    failure (a crash loop): ``None`` means no retries; anything else must be a strategy."""
    strategy = handler.retry
    if strategy is None:
        return NoRetry()
    if not isinstance(strategy, RetryStrategy):
        raise ConfigurationError(
            f"{type(handler).__qualname__}.retry must be a retry strategy (NoRetry(), "
            f"Repeat(3), Intervals(...), Exponential(...)) or None, not {strategy!r}"
        )
    return strategy


@dataclass(slots=True)
class Attempt:
    """One attempt at one delivery, as the pipeline and its observers see it."""

    delivery: Delivery
    message: Message
    started: float = field(default_factory=time.time)
    #: What went wrong around the attempt without changing its outcome (a hook raised).
    notes: list[str] = field(default_factory=list)
    #: The job record to write with the failed-store entry, if the message keeps one.
    failed_record: JobUpdate | None = None


class Pipeline:
    """Processes deliveries of ``queue`` with ``handler``; ``stop(reason)`` is how a
    ``StopWorker`` reaches the loop. The transport is looked up on the broker for each
    settle, so a reconnect (which replaces it) needs nothing here."""

    def __init__(
        self,
        broker: Broker,
        queue: str,
        handler: Handler,
        *,
        hooks: Hooks,
        record_all: bool,
        stop: Callable[[str], None],
    ) -> None:
        self.broker, self.queue, self.handler = broker, queue, handler
        self.stop = stop
        self.retry = retry_strategy(handler)
        jobs = broker.jobs
        self._jobs = jobs
        #: In the order they are told of each step: hooks run before the record is
        #: written (a hook's error is noted in it); the reply goes before the key and the
        #: group are released.
        self.observers: tuple[Observer, ...] = (
            *((HookCalls(hooks),) if hooks.active else ()),
            Records(jobs, queue, record_all=record_all),
            Replies(broker),
            KeyRelease(broker, queue),
            GroupRelease(broker, queue),
        )
        self._always = hooks.active or record_all
        caps = broker.transport.capabilities
        self._counts_starts = caps.redelivery and not caps.marks_redelivery

    def process(self, delivery: Delivery) -> None:
        try:
            message = decode(delivery.body)
        except MalformedMessage as exc:
            self._drop_malformed(delivery, exc.reason)
            return
        attempt = Attempt(delivery, message)
        refused = storeid.refusal(message.metadata, self._jobs)
        if refused is not None:
            self._fail(attempt, self._observers_for(message), refused)
            return
        if self._counts_starts:
            self._run_counted(attempt)
        else:
            self._run(attempt)

    def _observers_for(self, message: Message) -> Sequence[Observer]:
        """The observers that apply to ``message``. Those of a worker without hooks or
        ``record_all`` look only at these metadata fields, so a message without them (the
        common case) skips asking each one."""
        meta = message.metadata
        if self._always or meta.record or meta.reply_to or meta.key or meta.group:
            return [o for o in self.observers if o.applies(message)]
        return ()

    def _run_counted(self, attempt: Attempt) -> None:
        """For brokers that redeliver without saying so (gearmand): note each start in the
        job store, so an attempt that died with its worker counts, and a message that keeps
        killing workers ends in the failed store instead of coming back for ever."""
        message, delivery = attempt.message, attempt.delivery
        died = self._jobs.begin_delivery(message.id) - 1
        try:
            if died:
                message.metadata.attempts += died
                delivery.redelivered, delivery.delivery_count = True, died + 1
                if self._next_wait(message) is None:
                    reason = f"its worker died during {died} attempt(s); no attempts left"
                    self._fail(attempt, self._observers_for(message), reason)
                    return
            self._run(attempt)
        finally:
            self._jobs.end_delivery(message.id)

    def _run(self, attempt: Attempt) -> None:
        message, handler = attempt.message, self.handler
        observers = self._observers_for(message)
        for observer in observers:
            observer.started(attempt)
        try:
            valid = handler.validate(message)
        except Exception as exc:
            self._fail(attempt, observers, f"validate() raised {exc!r}", traceback.format_exc())
            return
        if not valid:
            self._fail(attempt, observers, "rejected by validate()")
            return
        try:
            for observer in observers:
                observer.before_work(attempt)
            result = handler.work(message)
        except RetryLater as exc:  # not an attempt: the count stays as it was
            self._retry(attempt, observers, exc.delay, f"retry later: {exc}", None)
        except Exception as exc:
            message.metadata.attempts += 1
            for observer in observers:
                observer.raised(attempt, exc)
            self._after_failure(attempt, observers, exc)
        else:
            for observer in observers:
                observer.succeeded(attempt, result)
            self._succeeded(attempt, observers, result)

    def _succeeded(self, attempt: Attempt, observers: Sequence[Observer], result: object) -> None:
        """Ack; a result goes along (as JSON, bytes as they are) for a caller waiting on it."""
        for observer in observers:
            observer.finished(attempt, result=result, error=None)
        delivery = attempt.delivery
        if result is None:
            self.broker.transport.ack(delivery)
            return
        try:
            reply = result if isinstance(result, bytes) else encode_json(result).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            log.warning("the result of message %s is not JSON (%s): acked without it",
                        attempt.message.id, exc)  # fmt: skip
            self.broker.transport.ack(delivery)
            return
        self.broker.transport.complete(delivery, reply)

    def _after_failure(
        self, attempt: Attempt, observers: Sequence[Observer], exc: Exception
    ) -> None:
        meta = attempt.message.metadata
        trace = traceback.format_exc()
        if isinstance(exc, PermanentError):
            self._fail(attempt, observers, f"permanent error: {exc}", trace)
            return
        if isinstance(exc, StopWorker):
            self._fail(attempt, observers, f"worker stopped: {exc}", trace)
            self.stop(f"StopWorker: {exc}")
            return
        wait = self._next_wait(attempt.message)
        if wait is None:
            self._fail(attempt, observers, f"{type(exc).__name__}: {exc}", trace)
            return
        log.warning("message %s failed (attempt %d), retrying in %gs: %r",
                    meta.id, meta.attempts, wait, exc)  # fmt: skip
        self._retry(attempt, observers, wait, f"{type(exc).__name__}: {exc}", trace)

    def _retry(
        self,
        attempt: Attempt,
        observers: Sequence[Observer],
        delay: float,
        error: str,
        trace: str | None,
    ) -> None:
        for observer in observers:
            observer.retrying(attempt, error, trace)
        self.broker.requeue(self.queue, attempt.delivery, attempt.message, delay=delay)

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
        return self.retry.delay_for(meta.attempts)

    def _fail(
        self,
        attempt: Attempt,
        observers: Sequence[Observer],
        reason: str,
        trace: str | None = None,
    ) -> None:
        """Record the message in the failed store, then drop it from the queue."""
        for observer in observers:
            observer.failing(attempt, reason, trace)
        message, delivery = attempt.message, attempt.delivery
        self._jobs.add_failed(
            self.queue,
            delivery.body,
            reason,
            message_id=message.id,
            name=message.metadata.name,
            traceback=trace,
            attempts=message.metadata.attempts,
            headers=dict(delivery.headers),
            job=attempt.failed_record,
        )
        log.warning("message %s failed for good: %s", message.id, reason)
        for observer in observers:
            observer.finished(attempt, result=None, error=reason)
        self.broker.transport.nack(delivery, requeue=False)

    def _drop_malformed(self, delivery: Delivery, reason: str) -> None:
        """A body that is not an envelope: to the failed store with its raw bytes."""
        self._jobs.add_failed(self.queue, delivery.body, reason, headers=dict(delivery.headers))
        log.warning("a malformed message failed for good: %s", reason)
        self.broker.transport.nack(delivery, requeue=False)
