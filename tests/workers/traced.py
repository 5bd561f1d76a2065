"""A traced queue class for ``worker run tests.workers.traced:TracedQueue``.

Importing it sets up the OpenTelemetry SDK the way an application would in the module that
defines its queues: every finished span is written at once, one JSON document per line, to
``$QK_SPANS`` (the SDK's console exporter on a file), for the test to read across processes.
"""

from __future__ import annotations

import json
import os

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from queuekit.worker.tracing import enable_tracing
from tests.workers.queues import RecordingQueue


def _line(span: ReadableSpan) -> str:
    return json.dumps(json.loads(span.to_json())) + "\n"


_provider = TracerProvider()
_spans = open(os.environ["QK_SPANS"], "a", encoding="utf-8")  # noqa: SIM115 - the process's life
_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=_spans, formatter=_line)))
trace.set_tracer_provider(_provider)
enable_tracing()


class TracedQueue(RecordingQueue):
    """Records each payload's ``n`` (``$QK_OUT``), each attempt in a process span."""

    queue = "traced"
