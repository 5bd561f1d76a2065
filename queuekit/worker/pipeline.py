"""One message through a handler: decode, validate, work, settle. The one path there is.

At-least-once: a message is acked only after ``work()`` returns. What goes wrong is
recorded, never lost:

- a body that does not decode, that lacks a valid signature where signing keys are set
  (:mod:`queuekit.features.signing`), or that ``validate()`` rejects, goes to the failed
  store with the reason and is dropped from the queue (no retries: it cannot get better);
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

import inspect
import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..features import groups, storeid
from ..features.broker import Broker
from ..features.envelope import Message, decode
from ..features.hooks import Hooks
from ..features.retry import DEFAULT_RETRY, NoRetry, RetryStrategy, strategy_from_json
from ..features.signing import envelope_of
from ..jobstore.records import JobUpdate
from ..spi.errors import (
    ConfigurationError,
    MalformedMessage,
    PermanentError,
    RetryLater,
    StopWorker,
)
from ..spi.transport import Delivery, Transport
from .observers import (
    GroupRelease,
    HookCalls,
    KeyRelease,
    Observer,
    Records,
    Replies,
    instruments_for,
)

log = logging.getLogger("queuekit.worker")
#: A message the broker has delivered more often than this without it being settled (its
#: workers died with it, or handed it back) is a poison message: it goes to the failed store
#: unrun. Brokers that count deliveries say so (quorum queues, SQLite, memory, XMPP); a
#: broker that does not is covered by the start journal (``_died_too_often``).
MAX_DELIVERIES = 20


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


class AsyncFunctionHandler(FunctionHandler):
    """:class:`FunctionHandler` for an ``async def`` callable: its worker awaits it on the
    worker's event loop (a sync ``work`` returning the coroutine would never be awaited)."""

    async def work(self, message: Message) -> object:
        return await self._work(message)  # type: ignore[misc]


def handler_for(
    work: Callable[[Message], object],
    validate: Callable[[Message], bool] | None = None,
    retry: RetryStrategy | None = None,
) -> FunctionHandler:
    """The handler of a plain callable, sync or ``async def``."""
    cls = AsyncFunctionHandler if inspect.iscoroutinefunction(work) else FunctionHandler
    return cls(work, validate, retry)


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
    #: Which attempt this is (1 for the first), as counted when it started.
    number: int
    #: The transport the delivery came from: it is settled there or, after a reconnect
    #: replaced it, not at all (the broker redelivers what the lost connection held).
    transport: Transport
    observers: Sequence[Observer] = ()
    started: float = field(default_factory=time.time)
    #: What went wrong around the attempt without changing its outcome (a hook raised).
    notes: list[str] = field(default_factory=list)
    #: The job record to write with the failed-store entry, if the message keeps one.
    failed_record: JobUpdate | None = None
    #: It fails because it was refused (``validate()``, another job store), not because
    #: ``work()`` failed: what an observer's ``failing`` tells apart.
    rejected: bool = False

    @property
    def reply_to(self) -> str | None:
        """Where a caller waits for the outcome: the envelope's ``reply_to``, else the
        broker's own reply address (``Delivery.reply_to``, e.g. a Gearman foreground job)."""
        return self.message.metadata.reply_to or self.delivery.reply_to


@dataclass(slots=True)  # not frozen: a frozen dataclass costs a microsecond per message
class Outcome:
    """How ``work()`` ended, for :meth:`Pipeline.settle`: ``done`` (with ``result``),
    ``later`` (``RetryLater`` after ``delay`` s), ``raised`` (``exc``, counted as an
    attempt) or ``rejected`` (``validate()`` said no or raised: ``reason``)."""

    kind: Literal["done", "later", "raised", "rejected"]
    result: object = None
    exc: BaseException | None = None
    delay: float = 0.0
    reason: str = ""
    trace: str | None = None


class Pipeline:
    """Processes deliveries of ``queue`` with ``handler`` in three steps, so a worker can
    run the middle one elsewhere (a thread, an event loop) while the loop thread keeps the
    transport to itself:

    - :meth:`begin` (loop thread): decode; a malformed body is settled at once;
    - :meth:`work` or :meth:`work_async` (anywhere): validate, hooks, ``work()``; no
      transport call, so it is safe beside the loop's receive;
    - :meth:`settle` (loop thread): retry or fail or ack, and what comes with it.

    :meth:`process` runs the three in a row. ``stop(reason)`` is how a ``StopWorker``
    reaches the loop.
    """

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
        self._handler_name = type(handler).__qualname__
        jobs = broker.jobs
        self._jobs = jobs
        #: Metrics and tracing (:func:`~.observers.add_instrument`): told of every message,
        #: first, so their clocks and spans enclose what the others do.
        self.instruments = instruments_for(queue, self._handler_name,
                                           broker.transport.name)  # fmt: skip
        #: In the order they are told of each step: hooks run before the record is
        #: written (a hook's error is noted in it); the reply goes before the key and the
        #: group are released.
        self.observers: tuple[Observer, ...] = (
            *self.instruments,
            *((HookCalls(hooks),) if hooks.active else ()),
            Records(jobs, queue, record_all=record_all),
            Replies(broker),
            KeyRelease(broker, queue),
            GroupRelease(broker, queue),
        )
        self._always = hooks.active or record_all
        #: Messages that went to the failed store (malformed ones too), for the worker's
        #: heartbeat; counted in :meth:`settle`'s thread (the loop's), so never raced.
        self.failed = 0
        caps = broker.transport.capabilities
        self._counts_starts = caps.redelivery and not caps.marks_redelivery

    def process(self, delivery: Delivery) -> None:
        """All three steps in this thread (a worker without concurrency)."""
        attempt = self.begin(delivery)
        if attempt is not None:
            self.settle(attempt, self.work(attempt))

    # -- begin (loop thread) -------------------------------------------------------------

    def begin(self, delivery: Delivery) -> Attempt | None:
        """The attempt to work on, or ``None`` when the delivery was settled already (a
        body that is not verified or does not decode; on gearmand, a message whose workers
        died too often)."""
        transport = self.broker.transport
        body, limit = delivery.body, self.broker.max_body
        try:
            if len(body) > limit:  # never parsed: what a sender may not send is not read
                raise MalformedMessage(f"the body is {len(body)} bytes, above the limit of "
                                       f"{limit} (max_message_size)", body)  # fmt: skip
            message = decode(envelope_of(self.broker.signer, self.queue, body))
        except MalformedMessage as exc:
            self._drop_malformed(transport, delivery, exc.reason)
            return None
        attempt = Attempt(delivery, message, message.metadata.attempts + 1, transport)
        attempt.observers = self._observers_for(attempt)
        refused = storeid.refusal(message.metadata, self._jobs)
        if refused is not None:
            attempt.rejected = True
            self._fail(attempt, refused)
            return None
        if self._counts_starts and self._died_too_often(attempt):
            return None
        if (delivery.delivery_count or 0) > MAX_DELIVERIES:
            attempt.rejected = True
            self._fail(attempt, f"delivered {delivery.delivery_count} times and never "
                                "settled: each time its worker died or handed it back (a "
                                f"poison message?); after {MAX_DELIVERIES} it is not run "
                                "again")  # fmt: skip
            return None
        if log.isEnabledFor(logging.INFO):  # `worker -v`; one cheap check when it is off
            log.info("message %s received on %r (attempt %d)", message.id, self.queue,
                     attempt.number, extra=self._fields(attempt, "received"))  # fmt: skip
        return attempt

    def _observers_for(self, attempt: Attempt) -> Sequence[Observer]:
        """The observers that apply to ``attempt``. Those of a worker without hooks or
        ``record_all`` look only at these fields, so a message without them (the common
        case) skips asking each one: only the instruments (if any) see it."""
        meta = attempt.message.metadata
        if self._always or meta.record or attempt.reply_to or meta.key or meta.group:
            return [o for o in self.observers if o.applies(attempt)]
        return self.instruments

    def _died_too_often(self, attempt: Attempt) -> bool:
        """For brokers that redeliver without saying so (gearmand): note each start in the
        job store, so an attempt that died with its worker counts, and a message that keeps
        killing workers ends in the failed store instead of coming back for ever. The note
        is dropped when the attempt is settled."""
        message, delivery = attempt.message, attempt.delivery
        died = self._jobs.begin_delivery(message.id) - 1
        if not died:
            return False
        message.metadata.attempts += died
        attempt.number += died
        delivery.redelivered, delivery.delivery_count = True, died + 1
        if self._next_wait(message) is not None:
            return False
        reason = f"its worker died during {died} attempt(s); no attempts left"
        self._fail(attempt, reason)
        self._jobs.end_delivery(message.id)
        return True

    # -- work (any thread) ---------------------------------------------------------------

    def work(self, attempt: Attempt) -> Outcome:
        """Validate and run a sync ``work()``; never raises (what went wrong is the outcome)."""
        early = self._prelude(attempt)
        if early is not None:
            return early
        try:
            result = self.handler.work(attempt.message)
        except Exception as exc:
            return self._raised(attempt, exc)
        return self._returned(attempt, result)

    async def work_async(self, attempt: Attempt) -> Outcome:
        """:meth:`work` for an ``async def work()``, on the worker's event loop."""
        early = self._prelude(attempt)
        if early is not None:
            return early
        try:
            result = await self.handler.work(attempt.message)  # type: ignore[misc]
        except Exception as exc:
            return self._raised(attempt, exc)
        return self._returned(attempt, result)

    def _prelude(self, attempt: Attempt) -> Outcome | None:
        """Everything before ``work()``; an outcome when it must not run."""
        attempt.started = time.time()  # it may have waited, begun, for a free thread
        for observer in attempt.observers:
            observer.started(attempt)
        try:
            valid = self.handler.validate(attempt.message)
        except Exception as exc:
            return Outcome("rejected", reason=f"validate() raised {exc!r}",
                           trace=traceback.format_exc())  # fmt: skip
        if not valid:
            return Outcome("rejected", reason="rejected by validate()")
        try:
            for observer in attempt.observers:
                observer.before_work(attempt)
        except Exception as exc:
            return self._raised(attempt, exc)
        return None

    def _raised(self, attempt: Attempt, exc: Exception) -> Outcome:
        if isinstance(exc, RetryLater):  # not an attempt: the count stays as it was
            return Outcome("later", exc=exc, delay=exc.delay)
        trace = traceback.format_exc()
        attempt.message.metadata.attempts += 1
        for observer in attempt.observers:
            observer.raised(attempt, exc)
        return Outcome("raised", exc=exc, trace=trace)

    def _returned(self, attempt: Attempt, result: object) -> Outcome:
        for observer in attempt.observers:
            observer.succeeded(attempt, result)
        return Outcome("done", result=result)

    # -- settle (loop thread) ------------------------------------------------------------

    def settle(self, attempt: Attempt, outcome: Outcome) -> None:
        """Ack, retry or fail the delivery as ``outcome`` says, on the transport it came
        from; after a reconnect replaced that, the broker redelivers it instead."""
        try:
            if attempt.transport is not self.broker.transport:
                log.info("message %s was received on a lost connection: the broker "
                         "delivers it again", attempt.message.id)  # fmt: skip
            elif outcome.kind == "done":
                self._succeeded(attempt, outcome.result)
            elif outcome.kind == "later":
                error = f"retry later: {outcome.exc}"
                self._log_event(logging.INFO, "retried", attempt, error)
                self._retry(attempt, outcome.delay, error, None)
            elif outcome.kind == "rejected":
                attempt.rejected = True
                self._fail(attempt, outcome.reason, outcome.trace)
            else:
                assert isinstance(outcome.exc, Exception)
                self._after_failure(attempt, outcome.exc, outcome.trace)
        finally:
            if self._counts_starts:
                self._jobs.end_delivery(attempt.message.id)

    def _succeeded(self, attempt: Attempt, result: object) -> None:
        """Ack. A caller waiting on the result has it from the ``Replies`` observer."""
        self._log_event(logging.INFO, "done", attempt)
        for observer in attempt.observers:
            observer.finished(attempt, result=result, error=None)
        attempt.transport.ack(attempt.delivery)

    def _after_failure(self, attempt: Attempt, exc: Exception, trace: str | None) -> None:
        if isinstance(exc, PermanentError):
            self._fail(attempt, f"permanent error: {exc}", trace)
            return
        if isinstance(exc, StopWorker):
            self._fail(attempt, f"worker stopped: {exc}", trace)
            self.stop(f"StopWorker: {exc}")
            return
        wait = self._next_wait(attempt.message)
        if wait is None:
            self._fail(attempt, f"{type(exc).__name__}: {exc}", trace)
            return
        self._log_event(logging.WARNING, "retried", attempt, f"due in {wait:g}s after {exc!r}")
        self._retry(attempt, wait, f"{type(exc).__name__}: {exc}", trace)

    def _retry(self, attempt: Attempt, delay: float, error: str, trace: str | None) -> None:
        for observer in attempt.observers:
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

    def _fail(self, attempt: Attempt, reason: str, trace: str | None = None) -> None:
        """Record the message in the failed store, then drop it from the queue."""
        for observer in attempt.observers:
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
        self.failed += 1
        self._log_event(logging.WARNING, "failed", attempt, reason)
        for observer in attempt.observers:
            observer.finished(attempt, result=None, error=reason)
        attempt.transport.nack(delivery, requeue=False)

    def _log_event(self, level: int, event: str, attempt: Attempt, detail: str = "") -> None:
        """One line per outcome of an attempt: ``message ID done on 'email' (attempt 1) in
        4.2ms``. At INFO (``worker -v``); retries after an error and failures at WARNING."""
        if log.isEnabledFor(level):
            fields = self._fields(attempt, event, detail or None)
            log.log(level, "message %s %s on %r (attempt %d) in %.1fms%s", attempt.message.id,
                    event, self.queue, attempt.number, fields["duration_ms"],
                    f": {detail}" if detail else "", extra=fields)  # fmt: skip

    def _fields(self, attempt: Attempt, outcome: str, error: str | None = None) -> dict[str, Any]:
        """A message event's structured fields (:mod:`.logs`), for ``--log-format json``."""
        return {"message_id": attempt.message.id, "queue": self.queue,
                "handler": self._handler_name, "attempt": attempt.number,
                "duration_ms": round((time.time() - attempt.started) * 1000, 3),
                "outcome": outcome, "error": error}  # fmt: skip

    def _drop_malformed(self, transport: Transport, delivery: Delivery, reason: str) -> None:
        """A body that is not an envelope: to the failed store with its raw bytes. If it
        belongs to a serial group (its transport headers say so), the group goes on."""
        headers = delivery.headers
        self._jobs.add_failed(self.queue, delivery.body, reason, headers=dict(headers),
                              message_id=headers.get(groups.ID_HEADER))  # fmt: skip
        self.failed += 1
        log.warning("a malformed message failed for good: %s", reason)
        if headers:
            groups.release_undecodable(self.broker, self.queue, headers)
        transport.nack(delivery, requeue=False)

    def hand_back(self, attempt: Attempt) -> None:
        """Give an unfinished attempt back to the broker (a stop's deadline passed): it
        runs again, on this worker or another; nothing was acked that did not finish."""
        if attempt.transport is self.broker.transport:
            attempt.transport.nack(attempt.delivery, requeue=True)
        if self._counts_starts:
            self._jobs.end_delivery(attempt.message.id)
