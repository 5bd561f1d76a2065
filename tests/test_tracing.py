"""OpenTelemetry across a real worker process, on SQLite and RabbitMQ.

Given a producer whose spans go to the SDK's in-memory exporter (in a process of its own:
tracing is process-wide) and a ``worker run`` process writing its finished spans to a file,
one message published is processed in the same trace: the worker's process span is a child
of the producer's send span, and both carry the messaging semantic conventions' attributes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from queuekit import connect
from tests.support import require_broker, wait_until
from tests.workers.harness import child_env, lines, sqlite_url, start_worker, stop

AMQP = "amqp://guest:guest@127.0.0.1:5672/"

PRODUCER = """
import json
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from queuekit import connect
from queuekit.worker.tracing import enable_tracing
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
enable_tracing(provider)
with connect({url!r}, jobstore={jobstore!r}) as conn:
    message_id = conn.queue({queue!r}).publish({{"n": 1}})
[span] = exporter.get_finished_spans()
print(json.dumps({{"id": message_id, "span": json.loads(span.to_json())}}))
"""


@pytest.fixture(params=["sqlite", "rabbitmq"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "rabbitmq":
        require_broker("rabbitmq", "127.0.0.1", 5672)
        yield AMQP
    else:
        yield sqlite_url(tmp_path / "q.db")


def test_one_trace_from_publish_to_process(url: str, tmp_path: Path) -> None:
    jobstore, queue = sqlite_url(tmp_path / "j.db"), f"traced-{uuid.uuid4().hex[:10]}"
    spans, out = tmp_path / "spans.jsonl", tmp_path / "out.txt"
    env = {"QUEUEKIT_JOBSTORE": jobstore, "QK_OUT": str(out), "QK_SPANS": str(spans)}
    worker = start_worker("run", "tests.workers.traced:TracedQueue", "--url", url,
                          "--queue", queue, cwd=tmp_path, env=env)  # fmt: skip
    try:
        # Given a producer that publishes one message in a send span
        script = PRODUCER.format(url=url, jobstore=jobstore, queue=queue)
        produced = subprocess.run([sys.executable, "-c", script], env=child_env(env), check=False,
                                  capture_output=True, text=True, timeout=60)  # fmt: skip
        assert produced.returncode == 0, produced.stderr
        sent: dict[str, Any] = json.loads(produced.stdout)
        send = sent["span"]
        # When the worker has processed it and written its span
        wait_until(lambda: lines(out) == ["1"], 30, "the message processed")
        wait_until(lambda: lines(spans), 30, "the worker's span")
        [process] = [json.loads(line) for line in lines(spans)]
    finally:
        worker.send_signal(signal.SIGTERM)
        stop(worker)
        with connect(url, jobstore=jobstore) as conn:
            conn.transport.delete(queue)

    # Then both spans are in one trace, the process span a child of the send span
    system = url.split(":", maxsplit=1)[0]
    assert process["context"]["trace_id"] == send["context"]["trace_id"]
    assert process["parent_id"] == send["context"]["span_id"]
    assert (send["kind"], send["name"]) == ("SpanKind.PRODUCER", f"send {queue}")
    assert (process["kind"], process["name"]) == ("SpanKind.CONSUMER", f"process {queue}")
    assert send["attributes"] == {"messaging.system": system,
                                  "messaging.destination.name": queue,
                                  "messaging.operation.type": "send"}  # fmt: skip
    assert process["attributes"] == {"messaging.system": system,
                                     "messaging.destination.name": queue,
                                     "messaging.operation.type": "process",
                                     "messaging.message.id": sent["id"]}  # fmt: skip
    assert process["status"]["status_code"] == "UNSET"
