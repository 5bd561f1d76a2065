"""What happens around a message besides ``work()``: each an observer of the pipeline.

The pipeline (:mod:`queuekit.worker.pipeline`) tells each observer that applies to a message
of every step, in this order for one attempt::

    started -> before_work -> (work) -> succeeded                 -> finished
                                     -> raised -> retrying
                                     -> raised -> failing          -> finished
               (validate rejects)             -> failing          -> finished
               (RetryLater)                   -> retrying

``finished`` means settled for good (done, or failed), just before the ack or nack: a crash
in between may run the message twice, never block its key or its group or leave its caller
without a reply. ``before_work`` may raise, which fails the attempt as if ``work()`` had; any
other observer method must not raise for the message's sake (a hook's error is logged and
noted, never raised).

This is dramatiq's middleware idea kept small. Metrics and tracing are :class:`Instrument`
observers, built by the factories :func:`add_instrument` registered (``worker run
--metrics-port``, :func:`queuekit.worker.tracing.enable_tracing`): they see every message,
and a worker with none pays nothing for them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from ..features import groups, keys
from ..features.broker import Broker
from ..features.hooks import Hooks
from ..features.rpc import send_reply
from ..jobstore.base import JobStore
from ..jobstore.records import (
    DONE,
    FAILED,
    RUNNING,
    WAITING,
    JobUpdate,
    encode_result,
    peak_memory,
    record_payload,
)
from ..spi.errors import QueuekitError

if TYPE_CHECKING:
    from ..features.envelope import Message
    from .pipeline import Attempt

log = logging.getLogger("queuekit.worker")


class Observer:
    """Told of each step of an attempt at a message it applies to; every step a no-op."""

    def applies(self, attempt: Attempt) -> bool:
        return True

    def started(self, attempt: Attempt) -> None:
        """Before ``validate()``."""

    def before_work(self, attempt: Attempt) -> None:
        """Just before ``work()``; raising fails the attempt."""

    def succeeded(self, attempt: Attempt, result: object) -> None:
        """``work()`` returned ``result``."""

    def raised(self, attempt: Attempt, exc: BaseException) -> None:
        """``work()`` or a ``before_work`` raised (``attempts`` already counts it)."""

    def retrying(self, attempt: Attempt, error: str, trace: str | None) -> None:
        """The message goes back for a later attempt."""

    def failing(self, attempt: Attempt, reason: str, trace: str | None) -> None:
        """The message is about to go to the failed store for ``reason``."""

    def finished(self, attempt: Attempt, *, result: object, error: str | None) -> None:
        """Settled for good (``error`` is ``None`` when it succeeded), before the ack."""


class Instrument(Observer):
    """An observer of every message of a worker (metrics, tracing), told also of the loop's
    periodic work (about twice a second, in the loop thread). Its methods run in whichever
    thread runs that step (``started`` to ``raised`` in a worker thread under ``-c N``),
    so they must be thread-safe; none may raise."""

    def periodic(self, jobs: JobStore) -> None:
        """The loop's periodic work: refresh what is read rather than counted, cheaply."""


#: Builds an instrument for a worker of ``queue`` whose handler is named ``handler``, on a
#: broker of adapter ``system`` (``sqlite``, ``amqp``, ...).
InstrumentFactory: TypeAlias = Callable[[str, str, str], Instrument]
_factories: list[InstrumentFactory] = []


def add_instrument(factory: InstrumentFactory) -> None:
    """Give every worker built from now on in this process an instrument from ``factory``.

    Process-wide on purpose: what instruments report to (prometheus_client's registry,
    OpenTelemetry's tracer provider) is process-wide too. Adding one factory twice has no
    effect."""
    if factory not in _factories:
        _factories.append(factory)


def instruments_for(queue: str, handler: str, system: str) -> tuple[Instrument, ...]:
    """The instruments a new worker of ``queue`` gets (none unless some were added)."""
    return tuple(factory(queue, handler, system) for factory in _factories)


class HookCalls(Observer):
    """The handler's hooks (:mod:`queuekit.features.hooks`)."""

    def __init__(self, hooks: Hooks) -> None:
        self.hooks = hooks

    def before_work(self, attempt: Attempt) -> None:
        if self.hooks.before is not None:
            self.hooks.before(attempt.message)

    def succeeded(self, attempt: Attempt, result: object) -> None:
        if self.hooks.after is not None:
            self._call(attempt, "after_process", self.hooks.after, result)

    def raised(self, attempt: Attempt, exc: BaseException) -> None:
        hooks = self.hooks
        if hooks.on_error is not None:
            self._call(attempt, "on_error", hooks.on_error, exc)
        if (
            hooks.on_failed_attempts is not None
            and attempt.message.metadata.attempts == hooks.notify_after
        ):
            self._call(attempt, "on_failed_attempts", hooks.on_failed_attempts, exc)

    @staticmethod
    def _call(
        attempt: Attempt, name: str, hook: Callable[[Message, Any], object], argument: object
    ) -> None:
        """Run a hook; its exception is logged and noted for the record, never raised."""
        try:
            hook(attempt.message, argument)
        except Exception as exc:
            log.exception("%s hook raised for message %s", name, attempt.message.id)
            attempt.notes.append(f"{name} hook raised {type(exc).__name__}: {exc}")


class Records(Observer):
    """Job records (:mod:`queuekit.jobstore.records`): written when an attempt starts and
    when it ends. A write that fails is logged: the message is processed regardless."""

    def __init__(self, jobs: JobStore, queue: str, *, record_all: bool) -> None:
        self.jobs, self.queue, self.record_all = jobs, queue, record_all
        self._pid = os.getpid()

    def applies(self, attempt: Attempt) -> bool:
        return self.record_all or attempt.message.metadata.record

    def started(self, attempt: Attempt) -> None:
        self._write(self.jobs.start_job, self._update(attempt, RUNNING))

    def succeeded(self, attempt: Attempt, result: object) -> None:
        self._write_end(self._update(attempt, DONE, result=result))

    def retrying(self, attempt: Attempt, error: str, trace: str | None) -> None:
        self._write_end(self._update(attempt, WAITING, error=error, trace=trace))

    def failing(self, attempt: Attempt, reason: str, trace: str | None) -> None:
        # written with the failed-store entry, in its transaction
        attempt.failed_record = self._update(attempt, FAILED, error=reason, trace=trace)

    def _update(
        self,
        attempt: Attempt,
        state: str,
        *,
        result: object = None,
        error: str | None = None,
        trace: str | None = None,
    ) -> JobUpdate:
        meta = attempt.message.metadata
        text, result_error = encode_result(result) if state == DONE else (None, None)
        errors = [e for e in (error, result_error, *attempt.notes) if e]
        running = state == RUNNING
        return JobUpdate(
            id=meta.id,
            queue=self.queue,
            name=meta.name or None,
            state=state,
            # the attempt in hand counts while it runs and once it succeeded; a failure has
            # already been counted in the metadata, a RetryLater is not counted at all
            attempts=meta.attempts + 1 if state in (RUNNING, DONE) else meta.attempts,
            result=text,
            error="; ".join(errors) or None,
            traceback=trace,
            created_at=meta.created_at,
            started_at=attempt.started,
            finished_at=None if running else time.time(),
            worker_pid=self._pid,
            peak_memory=None if running else peak_memory(),
            key=meta.key,
            # at the start only: the row may not exist yet (records kept by the worker)
            payload=record_payload(attempt.message.payload) if running else None,
        )

    def _write_end(self, update: JobUpdate) -> None:
        self._write(lambda u: self.jobs.write_jobs([u]), update)

    @staticmethod
    def _write(write: Callable[[JobUpdate], None], update: JobUpdate) -> None:
        try:
            write(update)
        except QueuekitError as exc:
            log.warning("could not write the record of message %s: %s", update.id, exc)


class Replies(Observer):
    """Request/response (:mod:`queuekit.features.rpc`): tell a waiting caller the outcome."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def applies(self, attempt: Attempt) -> bool:
        return attempt.reply_to is not None

    def finished(self, attempt: Attempt, *, result: object, error: str | None) -> None:
        assert attempt.reply_to is not None
        send_reply(self.broker, attempt.message.metadata, attempt.reply_to,
                   value=result, error=error)  # fmt: skip


class KeyRelease(Observer):
    """Dedup keys held in the job store (:mod:`queuekit.features.keys`): free a "while
    pending" key once its message is settled for good."""

    def __init__(self, broker: Broker, queue: str) -> None:
        self.broker, self.queue = broker, queue

    def applies(self, attempt: Attempt) -> bool:
        meta = attempt.message.metadata
        return meta.key is not None and keys.held_in_store(meta, self.broker.transport.capabilities)

    def finished(self, attempt: Attempt, *, result: object, error: str | None) -> None:
        keys.settled(self.broker.jobs, self.queue, attempt.message.metadata)


class GroupRelease(Observer):
    """Serial groups (:mod:`queuekit.features.groups`): once a message is settled for good,
    send the next of its group."""

    def __init__(self, broker: Broker, queue: str) -> None:
        self.broker, self.queue = broker, queue

    def applies(self, attempt: Attempt) -> bool:
        return attempt.message.metadata.group is not None

    def finished(self, attempt: Attempt, *, result: object, error: str | None) -> None:
        meta = attempt.message.metadata
        assert meta.group is not None
        groups.advance(self.broker, self.queue, meta.group, meta.id)
