"""Job records: what happened to a message, kept in the job store when asked for.

Records are opt-in (``publish(..., record=True)``, ``keep_records = True`` on an
``AbstractQueue``, ``Queue.dispatch(..., record=True)``), so a worker that does not use them
pays nothing. A record moves through these states::

    queued ──> running ──> done
      │           │  └───> failed            (spent, permanent, rejected, StopWorker)
      │           └──────> waiting ──> running ...   (a retry or RetryLater, due later)
      └ waiting (published with a delay)

A worker writes a record twice per attempt, each in one transaction: ``running`` when it
starts, then ``done``/``failed``/``waiting`` with the result or error when it ends.
"""

from __future__ import annotations

import json
import resource
import sys
from dataclasses import dataclass
from typing import Any

QUEUED, RUNNING, DONE, FAILED, WAITING = "queued", "running", "done", "failed", "waiting"
STATES = (QUEUED, RUNNING, DONE, FAILED, WAITING)
FINISHED = (DONE, FAILED)


@dataclass(frozen=True, slots=True)
class JobUpdate:
    """One write of a record: the row as a worker or a publisher knows it at that moment."""

    id: str
    queue: str
    name: str | None
    state: str
    attempts: int = 0
    result: str | None = None  # JSON text
    error: str | None = None
    traceback: str | None = None
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    worker_pid: int | None = None
    peak_memory: int | None = None
    key: str | None = None  # the message's dedup key
    payload: str | None = None  # JSON text, cut at PAYLOAD_LIMIT (see record_payload)


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A snapshot of a job's record; fetch a fresh one with ``connection.job(id)``.

    ``result`` is what ``work()`` returned, decoded from JSON (``None`` when it returned
    nothing or did not finish). ``error`` is the last failure (``"ValueError: ..."``) or a
    note such as a result that was not JSON or a hook that raised; ``traceback`` goes with
    it. Times are Unix times: ``created_at`` when it was published, ``started_at`` when the
    latest attempt started, ``finished_at`` when the latest attempt ended. ``peak_memory``
    is the worker process's peak resident set size in bytes when the attempt ended.
    ``key`` is the message's dedup key; ``payload`` the JSON it was published with, its
    first :data:`PAYLOAD_LIMIT` characters and :data:`CUT` when it was longer.
    """

    id: str
    queue: str
    name: str | None
    state: str
    attempts: int
    result: Any
    error: str | None
    traceback: str | None
    created_at: float | None
    started_at: float | None
    finished_at: float | None
    worker_pid: int | None
    peak_memory: int | None
    key: str | None
    payload: str | None

    def is_completed(self) -> bool:
        """``work()`` returned: the job is done."""
        return self.state == DONE

    def is_failed(self) -> bool:
        return self.state == FAILED

    def is_finished(self) -> bool:
        """Done or failed for good: nothing more will happen unless it is retried by hand."""
        return self.state in FINISHED

    @property
    def duration(self) -> float | None:
        """Seconds the latest attempt took, once it ended."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @classmethod
    def load(cls, job_id: str, *, connection: Any) -> JobRecord | None:
        """The record of ``job_id`` (``None`` if none) from ``connection``'s job store: the
        store that wrote it (``connection.job(job_id)`` says the same)."""
        found: JobRecord | None = connection.jobs.get_job(job_id)
        return found


def encode_result(value: object) -> tuple[str | None, str | None]:
    """``(json_text, error)`` for what ``work()`` returned; never raises.

    ``None`` is stored as no result. A value JSON cannot carry is not an error of the job
    (it ran): the record keeps the reason in ``error`` and no result.
    """
    if value is None:
        return None, None
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False), None
    except (TypeError, ValueError, RecursionError) as exc:
        return None, f"result not stored: not JSON ({type(exc).__name__}: {exc})"


#: The most of a payload's JSON a record keeps, in characters: a huge payload (the broker
#: carried it once) must not bloat the job store, row after row.
PAYLOAD_LIMIT = 64 * 1024
#: What follows a payload cut at :data:`PAYLOAD_LIMIT`.
CUT = f" ... (cut: a record keeps the first {PAYLOAD_LIMIT // 1024} Ki characters)"


def record_payload(value: object) -> str | None:
    """The payload as a record keeps it: JSON text, cut at :data:`PAYLOAD_LIMIT`."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):  # decoded from JSON, so rare
        return None
    return text if len(text) <= PAYLOAD_LIMIT else text[:PAYLOAD_LIMIT] + CUT


def decode_result(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def peak_memory() -> int:
    """This process's peak resident set size in bytes (one cheap system call)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
