"""Structured logs: ``worker run --log-format json`` (or ``QUEUEKIT_LOG_FORMAT=json``) writes
one JSON object per line, message events with their fields, secrets redacted."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from queuekit import connect
from queuekit.worker.logs import JSONFormatter
from tests.workers.harness import run_worker, sqlite_url


def test_a_worker_logs_one_json_line_per_message_event(tmp_path: Path) -> None:
    url, jobstore = sqlite_url(tmp_path / "q.db"), sqlite_url(tmp_path / "j.db")
    # Given a message PickyQueue accepts and one it rejects
    with connect(url, jobstore=jobstore) as conn:
        ok = conn.queue("picky").publish({"to": "a@example.com"})
        bad = conn.queue("picky").publish({"n": 1})
    # When a worker logs them as JSON (the environment variable, then the option)
    env = {"QUEUEKIT_JOBSTORE": jobstore, "QUEUEKIT_LOG_FORMAT": "json"}
    done = run_worker("-v", "run", "tests.workers.queues.PickyQueue", "--url", url,
                      "--max-messages", "2", cwd=tmp_path, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Then every log line is a JSON object; the message events carry their fields
    records = [json.loads(line) for line in done.stderr.splitlines()
               if line.startswith("{")]  # fmt: skip
    assert len(records) == len(done.stderr.splitlines()) - 1  # the last: the summary
    events = {(r["message_id"], r["outcome"]): r for r in records if "outcome" in r}
    assert set(events) == {(ok, "received"), (ok, "done"), (bad, "received"), (bad, "failed")}
    assert {k: v for k, v in events[ok, "done"].items() if k not in ("time", "duration_ms")} == {
        "level": "INFO", "logger": "queuekit.worker", "message_id": ok, "queue": "picky",
        "handler": "PickyQueue", "attempt": 1, "outcome": "done", "error": None,
        "message": events[ok, "done"]["message"]}  # fmt: skip
    assert events[ok, "done"]["duration_ms"] >= 0
    failed = events[bad, "failed"]
    assert (failed["level"], failed["error"]) == ("WARNING", "rejected by validate()")
    option = run_worker("run", "tests.workers.queues.PickyQueue", "--url", url,
                        "--log-format", "text", "--max-messages", "1", "--max-seconds", "0.5",
                        cwd=tmp_path, env=env)  # fmt: skip
    assert not any(line.startswith("{") for line in option.stderr.splitlines())


def test_json_lines_redact_secrets() -> None:
    record = logging.LogRecord("queuekit", logging.WARNING, __file__, 1,
                               "lost amqp://guest:secret@host:5672/", None, None)  # fmt: skip
    record.error = "cannot reach postgresql://u:hunter2@db/queuekit"
    line = json.loads(JSONFormatter().format(record))
    assert "secret" not in line["message"] and "hunter2" not in line["error"]
    assert line["message"] == "lost amqp://guest:***@host:5672/"
