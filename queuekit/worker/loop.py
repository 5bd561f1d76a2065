"""The dispatch loop: receive, process, repeat; until told to stop.

What happens to each message (decode, validate, work, retry, fail, settle) is
:mod:`queuekit.worker.pipeline`; this module is the loop around it. With ``concurrency``
N, up to N messages are in flight: ``work()`` runs in N threads, or as N tasks on an event
loop for an ``async def work()`` (:mod:`.runners`), while this loop alone receives and
settles, so adapters keep their one-consumer-thread contract. Up to N more wait, begun, for
a free thread or task (so one that finishes starts the next at once); a stop hands those
back unstarted. Prefetch is at least N.

Signals (SIGTERM, SIGINT, SIGHUP) only set a flag; the loop stops taking messages, lets
those in flight finish and settles them, and returns. With a ``shutdown_timeout`` it waits
that long, then hands what is still running back to the broker (nothing acked that did not
finish; ``handed_back`` counts them). A second SIGINT aborts at once: un-acked messages then
go back to the broker (redelivery). ``receive`` returns ``None`` when idle, which is the
loop's heartbeat for noticing the flag and the limits. A ``ConnectionLost`` that the
adapter could not hide makes the loop reopen the transport, with capped backoff, and go on.
Every half second the loop also fires its queue's due recurring jobs and forwards what the
job store holds for the broker: due delayed messages (brokers without native delay, and
fired runs), serial-group heads nobody sent, and (given an ``outbox`` URL) the queue's
rows committed to that application database's outbox (:mod:`queuekit.features.outbox`).
Before it takes a message the worker registers in the job store's worker registry (taking
a slot when its queue has a workers limit), heartbeats from that periodic work and
deregisters when it stops (:mod:`queuekit.features.registry`).
About once a second it also asks the job store whether its queue is paused: while it is,
the loop takes nothing (what is in hand finishes, what was prefetched is given back); it
adds its throughput counts to the store's per-minute buckets every few seconds
(:mod:`queuekit.features.throughput`).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from types import FrameType

from ..features import groups, schedules
from ..features.broker import Broker, needs
from ..features.hooks import Hooks
from ..features.outbox import holder_id, relay
from ..features.registry import Registration
from ..features.throughput import Meter
from ..jobstore.outbox import open_outbox
from ..spi.errors import ConnectionLost, QueuekitError, Unsupported
from ..spi.priorities import PriorityBands, PriorityRange
from ..spi.transport import Delivery, Transport
from .pipeline import Attempt, Handler, Outcome, Pipeline
from .runners import Runner, runner_for

log = logging.getLogger("queuekit.worker")
#: Set by the ``--processes`` supervisor in its children's environment: its pid.
SUPERVISOR_PID_ENV = "QUEUEKIT_SUPERVISOR_PID"

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_HEARTBEAT = 0.5  # seconds a receive may block before the loop checks flags and limits
_BUSY_RECEIVE = 0.02  # ... while messages are in flight, whose outcomes wait to be settled
_SCHEDULER_EVERY = 0.5  # seconds between forwards of due messages from the delayed store
_GROUP_SWEEP_EVERY = 5.0  # seconds between sweeps for serial-group heads nobody sent
_RECONNECT_CAP = 5.0  # longest wait between reconnect attempts
_PAUSE_CHECK_EVERY = 1.0  # seconds between asks whether the queue is paused


@dataclass(frozen=True)
class Limits:
    """When a worker exits cleanly on its own, for a supervisor to start a fresh one."""

    max_messages: int | None = None
    max_seconds: float | None = None
    max_memory: int | None = None  # bytes of resident memory


def resident_memory() -> int:
    """This process's resident set size in bytes (Linux ``/proc``; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Worker:
    """Runs ``handler`` over ``queue`` of ``broker``; see the module docstring. ``stop()`` is
    thread-safe."""

    def __init__(
        self,
        broker: Broker,
        queue: str,
        handler: Handler,
        *,
        limits: Limits = Limits(),
        handle_signals: bool = True,
        hooks: Hooks | None = None,
        record: bool = False,
        priorities: PriorityRange | None = None,
        concurrency: int = 1,
        shutdown_timeout: float | None = None,
        workers_limit: int | None = None,
        wait_for_slot: bool = False,
        outbox: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.broker, self.queue, self.handler, self.limits = broker, queue, handler, limits
        self.concurrency, self.shutdown_timeout = concurrency, shutdown_timeout
        #: Take only messages with a priority in this range (capability ``priority_range``).
        self.priorities = priorities
        self.handle_signals = handle_signals
        self.hooks = hooks if hooks is not None else handler.hooks()
        #: Keep a record of every message, not only those published with ``record=True``.
        self.record_all = record or handler.keep_records
        self._pipeline = Pipeline(broker, queue, handler, hooks=self.hooks,
                                  record_all=self.record_all, stop=self.stop)  # fmt: skip
        self.processed = 0
        #: Messages still running when the shutdown timeout passed, given back to the broker.
        self.handed_back = 0
        self._stop_reason: str | None = None
        self._stopped_by_limit = False  # then the exit is logged at WARNING: always shown
        self._signals_seen = 0
        self._jobs = broker.jobs
        caps = broker.transport.capabilities
        if priorities is not None and not caps.priority_range:
            raise Unsupported("priority ranges", broker.transport.name, needs("priority_range"))
        if priorities is not None and caps.priority_bands is not None:
            # refuse a range across bands before starting, not at the first receive
            PriorityBands(caps.priority_bands).starts_within(priorities, broker.transport.name)
        #: The application database whose outbox rows of this queue this worker relays.
        self._outbox = None if outbox is None else open_outbox(outbox)
        self._relay_holder = holder_id()
        self._sweeps_groups = caps.redelivery  # groups are refused on other adapters
        self._next_sweep = 0.0
        #: At most ``workers_limit`` workers of the queue at once, on every host.
        self._registration = Registration(broker.jobs, queue, stop=self.stop,
                                          limit=workers_limit, wait=wait_for_slot,
                                          concurrency=concurrency)  # fmt: skip
        self._meter = Meter(broker.jobs, queue)
        #: The queue is paused (``worker pause``, the dashboard): take nothing until resumed.
        self.paused = False
        self._next_pause_check = 0.0
        #: Started by a ``--processes`` supervisor: stop once it is gone (a SIGKILLed one
        #: would otherwise leave its children working beside the workers of its successor).
        self._supervisor = int(os.environ.get(SUPERVISOR_PID_ENV, "0")) or None

    def _warn_if_not_shared(self) -> None:
        """On a broker without competing consumers (XMPP pub/sub) every worker of a queue
        gets every message: a second worker runs each job twice, so say so loudly."""
        if self._transport.capabilities.competing_consumers:
            return
        me = self._registration
        try:
            alive = self.broker.jobs.workers(self.queue, timeout=me.timeout)
        except QueuekitError:
            return
        others = [w for w in alive if w.id != me.info.id
                  and (w.host != me.info.host or _running(w.pid))]  # fmt: skip
        if others:
            log.warning(
                "%s has no competing consumers: every worker of %r gets every message, so "
                "with %d other worker(s) alive (%s) each job runs %d times; run one worker "
                "process per queue there (-c N for concurrency)",
                self._transport.name, self.queue, len(others),
                ", ".join(f"{w.host} pid {w.pid}" for w in others), len(others) + 1,
            )  # fmt: skip

    @property
    def _transport(self) -> Transport:
        return self.broker.transport  # replaced by a fresh one after a reconnect

    def stop(self, reason: str = "stop() called") -> None:
        self._stop_reason = self._stop_reason or reason

    @property
    def stopped_by_limit(self) -> bool:
        """Whether a ``--max-*`` limit ended the loop (not a signal or ``stop()``): a
        supervisor replaces such a worker, and stops one that was told to stop."""
        return self._stopped_by_limit

    def _reached_limit(self, reason: str) -> None:
        """A limit ends the loop: a supervisor restarting the worker should learn why."""
        if self._stop_reason is None:
            self._stopped_by_limit = True
        self.stop(reason)

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        previous = self._install_signals()
        started = time.monotonic()
        next_check = 0.0
        runner = runner_for(self._pipeline, self.concurrency,
                            threaded=self.shutdown_timeout is not None,
                            stopping=lambda: self._stop_reason is not None)  # fmt: skip
        log.info("worker %d consuming %r on %s (concurrency %d)", os.getpid(), self.queue,
                 self.broker.url.redacted(), self.concurrency)  # fmt: skip
        self._announce_jobstore()
        signer = self.broker.signer
        if signer is not None:  # key ids only: a secret is never logged
            log.info("messages are signed with key %r and must verify with one of %s",
                     signer.key_ids[0], ", ".join(signer.key_ids))  # fmt: skip
        if self.limits.max_messages is not None and self.limits.max_messages <= 0:
            self._reached_limit("max_messages is 0")
        try:
            self._registration.register(lambda: self._stop_reason is not None)
            self._warn_if_not_shared()
            while self._stop_reason is None:
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + _SCHEDULER_EVERY
                    self._periodic(started, runner)
                    if self._stop_reason is not None:
                        break
                if runner.in_flight:
                    self._settle(runner.collect(0))
                    if self._stop_reason is not None:  # e.g. a StopWorker just settled
                        break
                    if runner.full or self._enough_taken(runner):
                        self._settle(runner.collect(_HEARTBEAT))
                        continue
                if self.paused:
                    self._idle(runner)
                    continue
                self._take(runner)
            self._finish(runner)
        finally:
            runner.close()
            self._restore_signals(previous)
            self._release()
            self._meter.tally(self.processed, self._pipeline.failed)
            self._meter.flush()
            self._registration.deregister()
            if self._outbox is not None:
                self._outbox.close()
        level = logging.WARNING if self._stopped_by_limit else logging.INFO
        log.log(level, "worker %d stopped: %s", os.getpid(), self._stop_reason)
        return self.processed

    def _take(self, runner: Runner) -> None:
        """Receive a message and start it, with up to ``runner.takes - 1`` more that are
        there already (a message that cannot start is settled instead)."""
        wait = _BUSY_RECEIVE if runner.in_flight else _HEARTBEAT
        taken: list[Attempt] = []
        try:
            for _ in range(self._room(runner)):
                delivery = self._receive(wait)
                if delivery is None:
                    break
                wait = 0.0  # the others only if they are there already
                attempt = self._pipeline.begin(delivery)
                if attempt is None:  # settled already (malformed)
                    self._count()
                else:
                    taken.append(attempt)
                if self._stop_reason is not None:
                    break
        except ConnectionLost as exc:
            if not taken:  # un-acked work on the lost connection is the broker's to redeliver
                self._reconnect(exc)
                return
            # those taken run (at least once); the next receive meets the loss and reconnects
        if taken:
            self._settle(runner.submit(taken))

    def _receive(self, wait: float) -> Delivery | None:
        if self.priorities is None:
            return self._transport.receive(self.queue, wait)
        return self._transport.receive_priorities(self.queue, wait, self.priorities)

    def _room(self, runner: Runner) -> int:
        """How many messages to take at once: what the runner takes, within ``max_messages``."""
        most = self.limits.max_messages
        if most is None:
            return runner.takes
        return max(1, min(runner.takes, most - self.processed - len(runner.in_flight)))

    def _idle(self, runner: Runner) -> None:
        """Paused: settle what is in hand, take nothing new."""
        if runner.in_flight:
            self._settle(runner.collect(_HEARTBEAT))
        else:
            time.sleep(_HEARTBEAT)

    def _enough_taken(self, runner: Runner) -> bool:
        """``max_messages`` is near: take no more than it leaves room for."""
        most = self.limits.max_messages
        return most is not None and self.processed + len(runner.in_flight) >= most

    def _settle(self, done: list[tuple[Attempt, Outcome]]) -> None:
        for attempt, outcome in done:
            try:
                self._pipeline.settle(attempt, outcome)
            except ConnectionLost as exc:
                self._reconnect(exc)
            self._count()

    def _count(self) -> None:
        self.processed += 1
        if self.limits.max_messages and self.processed >= self.limits.max_messages:
            self._reached_limit(f"processed {self.processed} messages")

    def _finish(self, runner: Runner) -> None:
        """Stopping: let what is in flight finish (for ``shutdown_timeout`` s at most),
        settle it, and hand back to the broker what is still running after that."""
        deadline = (
            None if self.shutdown_timeout is None else (time.monotonic() + self.shutdown_timeout)
        )
        for attempt in runner.withdraw():  # begun, never started: like a prefetched message
            self._hand_back(attempt)
        if runner.in_flight:
            log.info("worker %d finishing %d message(s) in flight", os.getpid(),
                     len(runner.in_flight))  # fmt: skip
        while runner.in_flight:
            left = _HEARTBEAT if deadline is None else deadline - time.monotonic()
            if left <= 0:
                break
            self._settle(runner.collect(min(left, _HEARTBEAT)))
        unfinished = list(runner.in_flight.values())
        for attempt in unfinished:
            self._hand_back(attempt)
        if unfinished:
            self.handed_back = len(unfinished)
            log.warning("worker %d handed %d unfinished message(s) back after the %gs "
                        "shutdown timeout", os.getpid(), len(unfinished),
                        self.shutdown_timeout)  # fmt: skip

    def _hand_back(self, attempt: Attempt) -> None:
        try:
            self._pipeline.hand_back(attempt)
        except QueuekitError as exc:  # the broker redelivers it when the link closes
            log.warning("could not hand back message %s: %s", attempt.message.id, exc)

    def _announce_jobstore(self) -> None:
        """Say which job store this worker settles in (it refuses messages registered in
        another, see :mod:`queuekit.features.storeid`), and warn when other hosts cannot
        share it. Reading the store's id here also caches it before the first message."""
        where = self._jobs.url.redacted()
        try:
            log.info("job store %s (id %s)", where, self._jobs.identity())
        except QueuekitError as exc:  # the periodic work retries; messages wait for it
            log.warning("job store %s cannot be read yet: %s", where, exc)
        warning = self.broker.jobstore_warning()
        if warning is not None:
            log.warning("%s", warning)

    def _periodic(self, started: float, runner: Runner) -> None:
        try:
            self._forward()
        except ConnectionLost as exc:
            self._reconnect(exc)
        except QueuekitError as exc:  # e.g. the job store is away: try again later
            log.warning("could not forward due or grouped messages: %s", exc)
        for instrument in self._pipeline.instruments:
            instrument.periodic(self._jobs)
        if time.monotonic() >= self._next_pause_check:
            self._next_pause_check = time.monotonic() + _PAUSE_CHECK_EVERY
            self._check_paused()
        self._meter.tally(self.processed, self._pipeline.failed)
        if self._meter.due():
            self._meter.flush()
        current = [attempt.message.id for attempt in runner.in_flight.values()]
        self._registration.beat(processed=self.processed, failed=self._pipeline.failed,
                                current=current, rss=resident_memory)  # fmt: skip
        if self._supervisor is not None and os.getppid() != self._supervisor:
            self.stop(f"its supervisor (pid {self._supervisor}) is gone")
        if self.limits.max_seconds and time.monotonic() - started >= self.limits.max_seconds:
            self._reached_limit(f"ran {self.limits.max_seconds:g}s")
        if self.limits.max_memory and (rss := resident_memory()) >= self.limits.max_memory:
            self._reached_limit(
                f"resident memory reached {rss} bytes (limit {self.limits.max_memory} bytes)"
            )

    def _check_paused(self) -> None:
        """Follow the queue's paused flag in the job store (kept as it was when the store
        cannot be read: the forward above has said so already)."""
        try:
            paused = self.queue in self._jobs.paused_queues()
        except QueuekitError:
            return
        if paused == self.paused:
            return
        self.paused = paused
        if paused:
            log.info("queue %r is paused: worker %d takes no messages until it is resumed",
                     self.queue, os.getpid())  # fmt: skip
            self._release()
        else:
            log.info("queue %r is resumed: worker %d takes messages again", self.queue,
                     os.getpid())  # fmt: skip

    def _forward(self) -> None:
        """Fire this queue's due recurring jobs, then send what the job store holds for the
        broker: due delayed messages (and fired runs), and heads of serial groups nobody
        sent; then relay the queue's committed outbox rows. Each is one cheap read when
        there is nothing to do."""
        schedules.fire(self.broker, self.queue)
        self._jobs.forward_due(self._transport.send_many)
        if self._sweeps_groups and time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + _GROUP_SWEEP_EVERY
            groups.sweep(self.broker, self.queue)
        if self._outbox is not None:
            relay(self._outbox, lambda queue: self.broker, self._relay_holder, queue=self.queue)

    def _release(self) -> None:
        """Hand prefetched, unstarted messages back for other workers (best effort)."""
        try:
            self._transport.release(self.queue)
        except QueuekitError as exc:
            log.warning("could not give back prefetched messages: %s", exc)

    def _reconnect(self, cause: ConnectionLost) -> None:
        """Reopen the transport with capped backoff until it works or the worker is stopped."""
        log.warning("connection lost (%s); reconnecting", cause)
        pause = 0.1
        while self._stop_reason is None:
            deadline = time.monotonic() + pause
            while self._stop_reason is None and time.monotonic() < deadline:
                time.sleep(0.05)  # short naps: a stop signal is noticed promptly
            try:
                self.broker.reconnect()
            except ConnectionLost as exc:
                pause = min(pause * 2, _RECONNECT_CAP)
                log.warning("reconnect failed (%s); next try in %gs", exc, pause)
            else:
                log.info("reconnected to %s", self.broker.url.redacted())
                return

    # -- signals -------------------------------------------------------------------------

    def _install_signals(self) -> dict[int, object]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}

    def _restore_signals(self, previous: dict[int, object]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only set flags here: logging and I/O are not safe inside a handler.
        self._signals_seen += 1
        if signum == signal.SIGINT and self._signals_seen > 1:
            raise KeyboardInterrupt
        self.stop(f"received {signal.Signals(signum).name}")


def _running(pid: int) -> bool:
    """Whether a process of this host still runs: a SIGKILLed worker stays in the registry
    until its heartbeat times out, and must not be counted as a second consumer."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: it exists
        return True
    return True
