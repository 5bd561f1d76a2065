"""Structured logs: one JSON object per log record (``worker run --log-format json``).

The pipeline gives each message event (received, done, retried, failed) these fields
through ``extra=`` (:data:`EVENT_FIELDS`): ``message_id``, ``queue``, ``handler``,
``attempt``, ``duration_ms`` (from the attempt's start), ``outcome`` and ``error``. Any
record carries ``time``, ``level``, ``logger`` and ``message``; a record with an exception
carries its ``traceback``. Text is redacted as in plain logs: a password in a URL never
reaches a log line (:func:`queuekit.spi.urls.redact`).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from ..spi.urls import redact

#: The structured fields of a message event, in the order they are written.
EVENT_FIELDS = ("message_id", "queue", "handler", "attempt", "duration_ms", "outcome", "error")


class JSONFormatter(logging.Formatter):
    """Formats a record as one line of JSON; see the module docstring."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name in EVENT_FIELDS:
            if name in record.__dict__:
                value = record.__dict__[name]
                line[name] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            line["traceback"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, default=str)
