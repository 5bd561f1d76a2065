"""Job functions the tests run with ``worker run tests.workers.tasks``: two on ``email``,
one on ``reports``. They report through ``$QK_OUT`` like the queue classes do."""

from __future__ import annotations

import os
from datetime import date

from queuekit import job


def _append(line: str) -> None:
    path = os.environ.get("QK_OUT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")


@job(queue="email")
def send_welcome(user_id: int, *, lang: str = "en") -> str:
    _append(f"welcome {user_id} {lang}")
    return f"sent {user_id}"


@job(queue="email", retry=None)
def bounce(address: str) -> None:
    raise ValueError(f"{address} bounced")


@job(queue="reports")
def build_report(day: date) -> str:
    _append(f"report {day.isoformat()} {type(day).__name__}")
    return day.isoformat()
