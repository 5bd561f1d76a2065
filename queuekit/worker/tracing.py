"""OpenTelemetry traces (``pip install 'queuekit[otel]'``): a span for each publish and for
each attempt at a message, one trace from the producer to the worker on every broker.

:func:`enable_tracing` turns both on in this process; call it where the application sets up
its tracer provider (for a worker, in the module that defines the queue class, which
``worker run`` imports before it starts). Spans follow OpenTelemetry's messaging semantic
conventions:

- **send** (kind ``PRODUCER``, ``send <queue>``): around ``Queue.publish`` and
  ``publish_many``; its context goes into the message's user headers as ``traceparent``
  (W3C trace context, through the globally configured propagator), which every adapter
  carries because they live in the envelope, not in broker headers.
- **process** (kind ``CONSUMER``, ``process <queue>``): from an attempt's start until it is
  settled, a child of the send span whose context the message carries (the conventions'
  choice for a message processed alone), so the trace id is the producer's.

Attributes: ``messaging.system`` (the adapter's name: ``sqlite``, ``amqp``, ...),
``messaging.destination.name`` (the queue), ``messaging.operation.type`` (``send`` or
``process``), ``messaging.message.id`` (process; on send for one message),
``messaging.batch.message_count`` (a send of several), ``error.type`` (the exception's class,
or ``rejected``) on an attempt that did not succeed, whose status is then ``ERROR``.
The process span is not made the current span while ``work()`` runs: it starts and ends
in different threads under ``-c N``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider

from ..features.broker import PublishObserver, observe_publishing
from .observers import Instrument, add_instrument
from .pipeline import Attempt

_SYSTEM = "messaging.system"
_DESTINATION = "messaging.destination.name"
_OPERATION = "messaging.operation.type"
_MESSAGE_ID = "messaging.message.id"
_BATCH = "messaging.batch.message_count"
_ERROR = "error.type"


class PublishTracing(PublishObserver):
    """A send span around each publish, its context injected into the messages' headers."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    @contextmanager
    def publishing(
        self, queue: str, headers: dict[str, str], count: int, system: str
    ) -> Iterator[None]:
        attributes: dict[str, str | int] = {
            _SYSTEM: system, _DESTINATION: queue, _OPERATION: "send"}  # fmt: skip
        if count != 1:
            attributes[_BATCH] = count
        with self.tracer.start_as_current_span(
            f"send {queue}", kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            propagate.inject(headers)
            try:
                yield
            except BaseException as exc:
                span.set_attribute(_ERROR, type(exc).__qualname__)
                raise


class Tracing(Instrument):
    """A process span per attempt, a child of the context its message carries."""

    def __init__(self, tracer: Tracer, queue: str, system: str) -> None:
        self.tracer, self.queue, self.system = tracer, queue, system
        #: The open span of each running attempt, by identity (dict operations are atomic).
        self._spans: dict[int, Span] = {}

    def started(self, attempt: Attempt) -> None:
        meta = attempt.message.metadata
        parent = propagate.extract(meta.headers) if meta.headers else None
        self._spans[id(attempt)] = self.tracer.start_span(
            f"process {self.queue}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                _SYSTEM: self.system,
                _DESTINATION: self.queue,
                _OPERATION: "process",
                _MESSAGE_ID: meta.id,
            },
        )

    def raised(self, attempt: Attempt, exc: BaseException) -> None:
        span = self._spans.get(id(attempt))
        if span is not None:
            span.record_exception(exc)
            span.set_attribute(_ERROR, type(exc).__qualname__)

    def retrying(self, attempt: Attempt, error: str, trace: str | None) -> None:
        self._end(attempt, error)

    def failing(self, attempt: Attempt, reason: str, trace: str | None) -> None:
        span = self._spans.get(id(attempt))
        if span is not None and attempt.rejected:
            span.set_attribute(_ERROR, "rejected")
        self._end(attempt, reason)

    def finished(self, attempt: Attempt, *, result: object, error: str | None) -> None:
        if error is None:
            self._end(attempt, None)

    def _end(self, attempt: Attempt, error: str | None) -> None:
        span = self._spans.pop(id(attempt), None)
        if span is None:  # refused before it started: no span
            return
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()


_lock = threading.Lock()
_enabled: list[Tracer] = []


def enable_tracing(tracer_provider: TracerProvider | None = None) -> None:
    """Trace every publish, and every message of the workers built from now on, in this
    process, with ``tracer_provider`` (default: the global one). Once per process: a
    second call does nothing."""
    with _lock:
        if _enabled:
            return
        tracer = trace.get_tracer("queuekit", tracer_provider=tracer_provider)
        _enabled.append(tracer)
        observe_publishing(PublishTracing(tracer))
        add_instrument(lambda queue, handler, system: Tracing(tracer, queue, system))
