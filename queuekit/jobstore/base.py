"""The job store: what queuekit keeps beside the broker, and the contract its backends keep.

- the **failed store** (dead letters): every message that ran out of attempts, was rejected
  by ``validate``, or could not be decoded, with its reason, traceback and raw body;
- the **delayed store**: messages due later, for brokers without native delays. They wait
  here durably and a worker's scheduler forwards them when due, so no due-later message is
  ever held un-acked in worker memory (where it would run twice past a broker timeout);
- **dedup keys** for brokers without native dedup, and "ever" keys (never run twice);
- **serial groups**: the messages of a group line up here and go to the broker one at a
  time, the next when the one before is settled (see :mod:`queuekit.features.groups`);
- **job records** (opt-in, see :mod:`queuekit.jobstore.records`): state, attempts, result,
  error, timings, worker pid and memory of each recorded message;
- **schedules** of recurring jobs: each due run is written to the delayed store in the
  transaction that moves the schedule on, so a run is neither lost nor fired twice (see
  :mod:`queuekit.features.schedules`);
- its own **identity**: a random id written once, when the store is created. Messages that
  depend on the store carry it, so a worker on another store can tell and refuse them
  (:mod:`queuekit.features.storeid`);
- **process instances** (see :mod:`queuekit.features.processes`): one row per process
  manager and correlation key with its state (JSON), version and pending timeouts, and the
  ids of the messages each instance handled; a step commits the new state, the handled id
  and the messages it schedules (into the delayed store) in one transaction, on the
  version it read, so a redelivered message changes nothing and two steps never overlap;
- the **inbox**: which message ids a consumer has processed (or is processing), so a
  duplicate (a message an outbox relay sent twice, a redelivery) can be dropped by its id
  (see :mod:`queuekit.features.inbox`);
- the **worker registry**: each running worker (host, pid, queue, concurrency, start, last
  heartbeat, counts), what ``worker status`` reads, and the slots a queue's workers limit
  hands out (see :mod:`queuekit.features.registry`);
- **paused queues**, whose workers take no message until resumed, and **throughput**:
  per queue and minute, how many messages workers settled and how many of them failed, for
  the dashboard's chart (:mod:`queuekit.features.throughput`). Kept here, it survives
  restarts of the workers and of the dashboard.

:func:`queuekit.jobstore.open_jobstore` picks the backend by URL: ``sqlite:///path`` (the
default, an SQLite file, :mod:`queuekit.jobstore.sqlite`) or any PostgreSQL or MySQL/MariaDB
URL that SQLAlchemy understands (``postgresql+psycopg://``, ``mysql+pymysql://``,
``mariadb+pymysql://``; :mod:`queuekit.jobstore.sql`, extra ``queuekit[sql]``), for
workers on many hosts. Both keep the contract of :class:`JobStore`.
"""

from __future__ import annotations

import contextlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..spi.errors import MissingDependency, QueuekitError
from ..spi.transport import Outgoing, SendOptions
from ..spi.urls import TransportURL
from .records import JobRecord, JobUpdate, decode_result

#: The name of the store's id in its meta table (see :meth:`JobStore.identity`).
IDENTITY = "store_id"
#: Seconds a forwarder or group-head claimer may take before another one takes the claim over.
FORWARD_LEASE = 60.0
#: Seconds a publisher may take between holding a key and confirming it.
KEY_GRACE = 60.0
#: What :meth:`JobStore.inbox_claim` answers: run it; processed before; in another's hands.
INBOX_NEW, INBOX_DONE, INBOX_BUSY = "new", "done", "busy"


@dataclass(frozen=True)
class GroupHead:
    """The next message of a serial group, claimed for sending: send it, then ``mark_sent``."""

    row: int
    queue: str
    group: str
    message_id: str
    outgoing: Outgoing
    due: float | None


@dataclass(frozen=True)
class Schedule:
    """A recurring job: ``template`` (payload, name, priority, headers) published to
    ``queue`` every ``every`` seconds, or at each slot of the ``cron`` expression in
    ``timezone`` (then ``every`` is 0); next at ``next_run`` (a Unix time)."""

    name: str
    queue: str
    every: float
    next_run: float
    template: dict[str, Any]
    cron: str | None = None
    timezone: str | None = None


#: What a store calls to turn a due run of a schedule into a message, inside its transaction.
MakeRun = Callable[[Schedule, float], Outgoing]
#: What a store calls for a fired schedule's next run time after ``now``, in that transaction.
NextRun = Callable[[Schedule, float], float]


@dataclass(frozen=True)
class ProcessInstance:
    """One instance of a process manager: its correlation ``key``, its ``state`` (JSON),
    the ``version`` of its last step (1 after the step that started it), whether it
    ``completed``, and ``timeouts``: the id and due time of each message it scheduled
    for itself that has not come back yet."""

    manager: str
    key: str
    state: Any
    version: int
    completed: bool
    started_at: float
    updated_at: float
    timeouts: dict[str, float]

    @property
    def next_timeout(self) -> float | None:
        return min(self.timeouts.values(), default=None)


@dataclass(frozen=True)
class ProcessStep:
    """What one message did to a process instance, to commit all or nothing: the id of the
    message it handled (``None`` for one of the instance's timeouts, which its pending
    ``timeouts`` already tell apart: the step removes it), the ``version`` it read (0: it
    starts the instance), the new state, completion and pending timeouts, and ``sends``:
    ``(queue, due, outgoing)`` for the delayed store (due now or later), which forwards
    them like any delayed message."""

    manager: str
    key: str
    message_id: str | None
    version: int
    state: Any
    completed: bool
    timeouts: dict[str, float]
    sends: Sequence[tuple[str, float, Outgoing]] = ()


#: What :meth:`JobStore.commit_process` returns.
COMMITTED, DUPLICATE, CONFLICT = "committed", "duplicate", "conflict"


@dataclass(frozen=True)
class WorkerInfo:
    """One worker process in the registry. ``last_seen`` is when the store last heard from
    it; ``slot`` whether it holds one of its queue's workers-limit slots; ``failed`` is
    ``None`` where the worker does not count failures; ``current`` the ids of the messages
    in its hands at its last heartbeat; ``rss`` its resident memory in bytes then."""

    id: str
    queue: str
    host: str
    pid: int
    concurrency: int
    started_at: float
    last_seen: float = 0.0
    slot: bool = False
    processed: int = 0
    failed: int | None = None
    current: tuple[str, ...] = ()
    rss: int | None = None


@dataclass(frozen=True)
class FailedMessage:
    """A dead letter: the raw body as it arrived and why it failed."""

    id: int
    queue: str
    message_id: str | None
    name: str | None
    reason: str
    traceback: str | None
    attempts: int
    failed_at: float
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class ThroughputBucket:
    """What the workers of ``queue`` settled in the minute starting at ``minute`` (a Unix
    time divisible by 60): ``processed`` attempts, ``failed`` of them to the failed store."""

    queue: str
    minute: int
    processed: int
    failed: int


@dataclass(frozen=True)
class StoreCounts:
    """What the job store holds of one queue: messages in the delayed store (due or not;
    a worker forwards the due ones within a second) and dead letters in the failed store."""

    delayed: int = 0
    failed: int = 0


class JobStoreError(QueuekitError):
    """The job store's database failed (a backend maps its driver's errors onto this).

    ``recoverable`` is true when the database could not be reached or dropped the
    connection: the same call may succeed later (the pool reconnects on its own).
    """

    def __init__(self, message: str, *, recoverable: bool = False) -> None:
        self.recoverable = recoverable
        super().__init__(message)


class JobStore(ABC):
    """The job store contract, kept by every backend (see the module docstring).

    **Threads and processes.** Every method is thread-safe and may be called at the same
    time from many threads, processes and hosts on one store. Each method is atomic (one
    transaction) unless its docstring says otherwise; the claims (``forward_due``,
    ``claim_group_heads``), ``hold_key`` and ``register_worker`` (a workers-limit slot)
    are the places where concurrent callers compete, and their docstrings say what each
    caller is guaranteed.

    **Life.** A store opens its database on first use (creating its tables if needed);
    ``close()`` releases its connections, and a later call opens them again.

    **Time.** Times are Unix times from ``time.time()`` on the calling host: hosts sharing a
    store need clocks in step to well under ``FORWARD_LEASE``, ``KEY_GRACE`` and the
    worker registry's heartbeat timeout.

    **Errors.** A backend raises its database's errors as :class:`JobStoreError` (the core
    names no database library).
    """

    url: TransportURL
    _identity: str | None = None

    @abstractmethod
    def close(self) -> None:
        """Release the connections (idempotent); a later call reopens them."""

    def identity(self) -> str:
        """This store's id: written once when the store is created, the same for every
        process and host that opens it, another for any other store (a recreated one
        too). Read once per store object, then cached: cheap enough to call per message."""
        if self._identity is None:
            self._identity = self._load_identity()
        return self._identity

    @abstractmethod
    def _load_identity(self) -> str:
        """Read the store's id, writing a fresh random one first if it has none. Of
        racing first callers, on any host, all get the one id that was stored."""

    # -- failed store --------------------------------------------------------------------

    @abstractmethod
    def add_failed(
        self,
        queue: str,
        body: bytes,
        reason: str,
        *,
        message_id: str | None = None,
        name: str | None = None,
        traceback: str | None = None,
        attempts: int = 0,
        headers: dict[str, str] | None = None,
        job: JobUpdate | None = None,
    ) -> int:
        """Store a dead letter (and, with ``job``, its final record in the same
        transaction); return its id. Ids grow: a later dead letter has a larger id."""

    @abstractmethod
    def failed(self, queue: str | None = None, *, limit: int = 1000) -> list[FailedMessage]:
        """Dead letters, oldest first (by id), optionally of one queue."""

    @abstractmethod
    def get_failed(self, failed_id: int) -> FailedMessage | None:
        """One dead letter, or ``None``."""

    @abstractmethod
    def remove_failed(self, failed_id: int) -> bool:
        """Delete one dead letter; ``False`` if it was not there (another caller took it)."""

    @abstractmethod
    def purge_failed(self, queue: str | None = None) -> int:
        """Delete the dead letters (of one queue); return how many."""

    @abstractmethod
    def queue_counts(self) -> dict[str, StoreCounts]:
        """Per queue with any, how many delayed and failed messages the store holds: two
        grouped counts over indexed columns, cheap enough for a metrics refresh."""

    # -- delayed store -------------------------------------------------------------------

    @abstractmethod
    def add_delayed(self, queue: str, due: float, messages: Sequence[Outgoing]) -> None:
        """Keep ``messages`` for ``queue`` until ``due`` (all or none: one transaction)."""

    @abstractmethod
    def next_due(self) -> float | None:
        """The earliest due time of any delayed message (claimed or not), or ``None``."""

    @abstractmethod
    def forward_due(
        self, send: Callable[[str, Sequence[Outgoing]], None], *, limit: int = 500
    ) -> int:
        """Hand due messages to ``send(queue, batch)`` in due order; delete them once sent;
        return how many were handed over.

        A batch of at most ``limit`` is claimed for ``FORWARD_LEASE`` seconds first (in its
        own transaction), so concurrent forwarders, on any host, never get the same message
        while the claim holds; ``send`` runs outside any transaction. A forwarder that dies
        or whose ``send`` raises leaves its batch claimed until the lease runs out, then the
        next forwarder takes it: at worst a message is forwarded twice, never lost.
        """

    # -- dedup keys (brokers without native dedup, and "ever" keys everywhere) -----------

    @abstractmethod
    def hold_key(self, queue: str, key: str, message_id: str, *, ever: bool) -> bool:
        """Take ``key`` of ``queue`` for ``message_id``; ``False`` when another message
        holds it. Atomic: of any number of callers racing for a free key, exactly one gets
        ``True``.

        A hold that its publisher never confirmed (it died between holding and sending) is
        taken over after ``KEY_GRACE`` seconds, so a crash cannot block a key for ever.
        """

    @abstractmethod
    def confirm_key(self, queue: str, key: str, message_id: str) -> None:
        """The message holding ``key`` is published: the hold lasts until it is released.
        Does nothing if ``message_id`` no longer holds it."""

    @abstractmethod
    def release_key(self, queue: str, key: str, message_id: str, *, ever: bool = False) -> None:
        """Free ``key`` if ``message_id`` still holds it: a "while pending" key once its
        message is settled, or (``ever=True``) any key whose publish failed."""

    # -- serial groups -------------------------------------------------------------------

    @abstractmethod
    def add_grouped(
        self,
        queue: str,
        group: str,
        items: Sequence[tuple[str, Outgoing, float | None]],
    ) -> None:
        """Line up ``(message_id, outgoing, due)`` items behind ``group``'s earlier ones
        (one transaction). Two publishers adding to one group at once are lined up one
        batch after the other."""

    @abstractmethod
    def claim_group_heads(
        self, queue: str | None = None, group: str | None = None, *, limit: int = 500
    ) -> list[GroupHead]:
        """Claim the head of each group (of ``queue``, or just ``group``) that has nothing in
        flight: its first message, when it is waiting or its claimer's lease ran out.
        Returns the heads in line order (by ``row``).

        A head stays in the store until ``finish_grouped``; while it is claimed or sent,
        the messages behind it wait, so a group never has two messages in flight. Of
        concurrent claimers, on any host, at most one gets a given group's head while its
        claim (``FORWARD_LEASE`` seconds) holds.
        """

    @abstractmethod
    def mark_sent(self, heads: Sequence[GroupHead]) -> None:
        """The claimed heads are on the broker: in flight until ``finish_grouped``."""

    @abstractmethod
    def finish_grouped(self, queue: str, group: str, message_id: str) -> None:
        """``message_id`` is settled for good: the next message of its group may go.
        Does nothing to a message still waiting (never claimed)."""

    # -- schedules (recurring jobs) ------------------------------------------------------

    @abstractmethod
    def set_schedule(self, schedule: Schedule) -> None:
        """Create or replace the schedule named ``schedule.name``."""

    @abstractmethod
    def remove_schedule(self, name: str) -> bool:
        """Delete a schedule; False when there was none."""

    @abstractmethod
    def schedules(self) -> list[Schedule]:
        """Every schedule, by name."""

    @abstractmethod
    def fire_schedules(self, queue: str, make: MakeRun, advance: NextRun) -> int:
        """Fire ``queue``'s due schedules; return how many runs were fired.

        In one transaction per call: each schedule due now moves to ``advance(schedule,
        now)``, its first run time after now (runs missed while no worker ran are skipped:
        one run fires for them),
        and ``make(schedule, run_time)`` of each fired run goes into the delayed store,
        due at its run time, for ``forward_due`` to send. Concurrent callers never fire
        one run twice; a run is lost only if the transaction is.
        """

    # -- process instances (process managers) ---------------------------------------------

    @abstractmethod
    def load_process(
        self, manager: str, key: str, message_id: str
    ) -> tuple[ProcessInstance | None, bool]:
        """The instance of ``manager`` for ``key`` (``None`` if there is none), and whether
        it has already handled ``message_id``."""

    @abstractmethod
    def commit_process(self, step: ProcessStep) -> str:
        """Commit ``step`` in one transaction, or nothing of it. Returns ``COMMITTED``;
        ``DUPLICATE`` when the instance already handled ``step.message_id``; ``CONFLICT``
        when the instance is no longer at ``step.version`` (another step committed first,
        it completed, or with version 0 it already exists; when both hold, either). Of
        concurrent steps on one instance, on any host, exactly one commits on a given
        version: the others read again and run again. A completing step forgets the
        instance's handled ids (a completed instance drops every message anyway)."""

    @abstractmethod
    def processes(
        self, manager: str | None = None, *, completed: bool | None = None, limit: int = 1000
    ) -> list[ProcessInstance]:
        """Instances (of ``manager``; running or completed only), by start time."""

    @abstractmethod
    def purge_processes(self, manager: str | None = None, *, older_than: float = 0.0) -> int:
        """Delete completed instances (of ``manager``) whose last step is more than
        ``older_than`` s ago, and forget the ids of messages running instances handled
        more than ``older_than`` s ago; return how many instances were deleted. A message
        for a purged key would start a new instance (if it starts one) or find none; one
        whose id is forgotten would count again if it came back."""

    # -- job records ---------------------------------------------------------------------

    @abstractmethod
    def write_jobs(self, updates: Sequence[JobUpdate]) -> None:
        """Publish-time records or an attempt's end, in one transaction. A record that
        exists is updated: ``started_at``, ``worker_pid``, ``peak_memory``, ``key`` and
        ``payload`` keep their value where the update has none; every other field takes
        the update's."""

    @abstractmethod
    def start_job(self, update: JobUpdate) -> None:
        """Mark an attempt as running; the last attempt's error, result and traceback stay
        visible while the next one runs, ``finished_at`` is cleared."""

    @abstractmethod
    def delete_jobs(self, ids: Sequence[str]) -> None:
        """Delete these records (unknown ids are ignored)."""

    @abstractmethod
    def get_job(self, job_id: str) -> JobRecord | None:
        """One record, or ``None``."""

    @abstractmethod
    def jobs(
        self,
        queue: str | None = None,
        *,
        state: str | None = None,
        key: str | None = None,
        limit: int = 1000,
    ) -> list[JobRecord]:
        """Records, newest first (by ``created_at``; records without one last),
        optionally of one queue, in one state and/or of messages with dedup key ``key``."""

    @abstractmethod
    def unfinished(self, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` have a record that is not done or failed yet.

        An id without a record is not counted: it was never recorded (published without
        ``record=True``) or its finished record was cleared.
        """

    @abstractmethod
    def clear_finished(self, older_than: float = 0.0, *, queue: str | None = None) -> int:
        """Delete done and failed records that finished more than ``older_than`` s ago;
        return how many."""

    # -- start journal (brokers that redeliver without saying so) --------------------------

    @abstractmethod
    def begin_delivery(self, message_id: str) -> int:
        """Note that work on ``message_id`` starts; return how many starts are noted, this
        one included. More than one means earlier attempts died with their worker.
        Atomic: concurrent callers get distinct counts."""

    @abstractmethod
    def end_delivery(self, message_id: str) -> None:
        """The attempt ended (settled, retried or failed): forget its starts."""

    # -- inbox (consumers dropping duplicates by message id) ------------------------------

    @abstractmethod
    def inbox_claim(self, consumer: str, message_id: str, *, lease: float) -> str:
        """Claim ``message_id`` for ``consumer``: ``INBOX_NEW`` when it was never claimed,
        or its last claim was neither finished nor released and is older than ``lease``
        seconds (that attempt died): the caller processes it. ``INBOX_DONE`` when it was
        processed (``inbox_done``): a duplicate. ``INBOX_BUSY`` while another claim holds.
        Atomic: of racing claimers, on any host, at most one gets ``INBOX_NEW``."""

    @abstractmethod
    def inbox_done(self, consumer: str, message_id: str) -> None:
        """The claimed message was processed: later claims of it answer ``INBOX_DONE``."""

    @abstractmethod
    def inbox_release(self, consumer: str, message_id: str) -> None:
        """Processing failed: forget an unfinished claim, so the retry can claim it."""

    @abstractmethod
    def inbox_prune(self, older_than: float) -> int:
        """Forget processed ids finished more than ``older_than`` seconds ago; how many."""

    # -- worker registry -----------------------------------------------------------------

    @abstractmethod
    def register_worker(
        self, worker: WorkerInfo, *, timeout: float, limit: int | None = None
    ) -> bool:
        """Add ``worker`` to the registry, heard from now (its ``last_seen``, ``slot`` and
        counts are the store's to set); ``False``, and no row added, when over ``limit``.

        First the rows of its queue not heard from for ``timeout`` seconds are deleted
        (those workers are dead: their slots free) and so is a row with ``worker.id``
        (registering again replaces it). With ``limit``, the worker takes a slot only if
        fewer than ``limit`` workers of its queue hold one. Atomic: of any number of
        workers registering on any hosts at once, never more than ``limit`` hold slots of
        a queue whose workers all give that ``limit``. A row without a slot (registered
        without a limit) never counts against one.
        """

    @abstractmethod
    def heartbeat_worker(
        self,
        worker_id: str,
        *,
        processed: int,
        failed: int | None = None,
        current: Sequence[str] = (),
        rss: int | None = None,
    ) -> bool:
        """The worker is alive: its ``last_seen`` becomes now, its counts these. One write.
        ``False`` when it has no row (deleted as dead, or never registered): it must
        register again, and may find its slot taken."""

    @abstractmethod
    def deregister_worker(self, worker_id: str) -> None:
        """Delete the worker's row; its slot frees at once. Does nothing if there is none."""

    @abstractmethod
    def workers(
        self, queue: str | None = None, *, timeout: float | None = None
    ) -> list[WorkerInfo]:
        """Registered workers (of ``queue``), by ``started_at``; with ``timeout``, only
        those heard from within ``timeout`` seconds (the live ones)."""

    # -- queue controls and throughput ---------------------------------------------------

    @abstractmethod
    def pause_queue(self, queue: str) -> None:
        """Pause ``queue``: its workers, on every host, stop taking messages within about a
        second (those in hand finish). Pausing a paused queue changes nothing."""

    @abstractmethod
    def resume_queue(self, queue: str) -> bool:
        """Let ``queue``'s workers take messages again; ``False`` if it was not paused."""

    @abstractmethod
    def paused_queues(self) -> dict[str, float]:
        """The paused queues, each with the time it was paused: one small read, cheap
        enough for every worker to call about once a second."""

    @abstractmethod
    def add_throughput(self, buckets: Sequence[ThroughputBucket]) -> None:
        """Add these counts to the stored ones of the same queue and minute (one
        transaction). Concurrent callers add up: no count is lost."""

    @abstractmethod
    def throughput(self, since: float, queue: str | None = None) -> list[ThroughputBucket]:
        """The buckets of minutes starting at or after ``since`` (of ``queue``), by queue,
        then minute."""

    @abstractmethod
    def prune_throughput(self, before: float) -> int:
        """Delete the buckets of minutes starting before ``before``; return how many."""


class MissingStoreDependency(MissingDependency):
    """A job store's database library or driver is not installed."""

    def __init__(self, scheme: str, extra: str, cause: str) -> None:
        super().__init__(scheme, extra, cause)
        self.args = (
            f"the {scheme}:// job store needs an optional dependency ({cause}): "
            f"install queuekit[{extra}]",
        )


# -- rows, as both backends read and write them ---------------------------------------------


def job_values(job: JobUpdate) -> tuple[object, ...]:
    """A record's columns in ``JobRecord`` field order."""
    return (
        job.id,
        job.queue,
        job.name,
        job.state,
        job.attempts,
        job.result,
        job.error,
        job.traceback,
        job.created_at,
        job.started_at,
        job.finished_at,
        job.worker_pid,
        job.peak_memory,
        job.key,
        job.payload,
    )


def to_record(row: Sequence[Any]) -> JobRecord:
    fields = dict(zip(JobRecord.__slots__, row, strict=True))
    with contextlib.suppress(ValueError):  # written by something else: shown as it is
        fields["result"] = decode_result(fields["result"])
    return JobRecord(**fields)


def to_failed(row: Sequence[Any]) -> FailedMessage:
    """A dead letter from its row: id, queue, message_id, name, reason, traceback,
    attempts, failed_at, headers (JSON), body."""
    ident, queue, message_id, name, reason, trace, attempts, failed_at, headers, body = row
    return FailedMessage(
        id=int(ident),
        queue=str(queue),
        message_id=message_id if isinstance(message_id, str) else None,
        name=name if isinstance(name, str) else None,
        reason=str(reason),
        traceback=trace if isinstance(trace, str) else None,
        attempts=int(attempts),
        failed_at=float(failed_at),
        headers=json.loads(headers) if isinstance(headers, str) else {},
        body=bytes(body),
    )


def headers_text(headers: Mapping[str, str]) -> str | None:
    return json.dumps(dict(headers)) if headers else None


#: A worker row's columns, in ``WorkerInfo`` field order (``current`` as a JSON list).
WORKER_FIELDS = (
    "id", "queue", "host", "pid", "concurrency", "started_at", "last_seen", "slot",
    "processed", "failed", "current", "rss",
)  # fmt: skip


def worker_values(worker: WorkerInfo, now: float, *, slot: bool) -> tuple[object, ...]:
    """The row of a worker registering at ``now``, in ``WORKER_FIELDS`` order."""
    return (
        worker.id, worker.queue, worker.host, worker.pid, worker.concurrency,
        worker.started_at, now, slot, worker.processed, worker.failed,
        json.dumps(list(worker.current)), worker.rss,
    )  # fmt: skip


def to_worker(row: Sequence[Any]) -> WorkerInfo:
    fields = dict(zip(WORKER_FIELDS, row, strict=True))
    fields["slot"] = bool(fields["slot"])
    fields["current"] = tuple(json.loads(fields["current"] or "[]"))
    return WorkerInfo(**fields)


def to_schedule(row: Sequence[Any]) -> Schedule:
    """A schedule from ``name, queue, every, next_run, template`` (template as JSON text)."""
    name, queue, every, next_run, text = row
    template = json.loads(text)
    cron, timezone = template.pop("cron", None), template.pop("timezone", None)
    return Schedule(str(name), str(queue), float(every), float(next_run), template, cron, timezone)


def template_text(schedule: Schedule) -> str:
    """What the ``template`` column holds: the template, and a cron schedule's expression and
    time zone (kept there so stores made before cron schedules need no new column)."""
    stored = dict(schedule.template)
    if schedule.cron is not None:
        stored.update(cron=schedule.cron, timezone=schedule.timezone)
    return json.dumps(stored)


#: A process row's columns, in ``ProcessInstance`` field order (state and timeouts as JSON).
PROCESS_FIELDS = (
    "manager", "pkey", "state", "version", "completed", "started_at", "updated_at", "timeouts",
)  # fmt: skip


def to_process(row: Sequence[Any]) -> ProcessInstance:
    manager, key, state, version, completed, started, updated, timeouts = row
    return ProcessInstance(str(manager), str(key), json.loads(state), int(version),
                           bool(completed), float(started), float(updated),
                           json.loads(timeouts or "{}"))  # fmt: skip


class StepRejected(Exception):
    """Raised inside a backend's transaction to roll a process step back; ``outcome`` is
    what ``commit_process`` returns (``DUPLICATE`` or ``CONFLICT``)."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


def process_json(step: ProcessStep) -> tuple[str, str]:
    """A step's state and timeouts as the JSON text a process row holds."""
    return json.dumps(step.state, separators=(",", ":")), json.dumps(step.timeouts)


def next_run_after(schedule: Schedule, now: float) -> float:
    """The first run time of ``schedule`` after ``now`` (its due run is at or before now)."""
    behind = max(now - schedule.next_run, 0.0)
    return schedule.next_run + (behind // schedule.every + 1) * schedule.every


def delayed_batches(rows: Iterable[Sequence[Any]]) -> dict[str, list[Outgoing]]:
    """Claimed delayed rows (id, queue, due, priority, dedup_key, headers, body) as
    per-queue batches, in due order."""
    batches: dict[str, list[Outgoing]] = {}
    for _, queue, _, priority, key, headers, body in sorted(rows, key=lambda r: (r[2], r[0])):
        options = SendOptions(priority=priority, dedup_key=key)
        batches.setdefault(queue, []).append(
            Outgoing(bytes(body), json.loads(headers) if headers else {}, options)
        )
    return batches


def group_heads(rows: Iterable[Sequence[Any]]) -> list[GroupHead]:
    """Claimed group rows (id, queue, grp, message_id, due, priority, headers, body) as
    heads, in line order."""
    return [
        GroupHead(
            row=int(ident),
            queue=queue,
            group=grp,
            message_id=message_id,
            outgoing=Outgoing(
                bytes(body), json.loads(headers) if headers else {},
                SendOptions(priority=priority),
            ),
            due=due,
        )
        for ident, queue, grp, message_id, due, priority, headers, body in sorted(
            rows, key=lambda r: int(r[0])
        )
    ]  # fmt: skip
