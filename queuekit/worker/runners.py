"""Where ``work()`` runs: in the loop's own thread, in N threads, or as N tasks on an event loop.

The loop (:mod:`.loop`) receives and settles in its own thread: adapters are called from
one consumer thread, as their contract says (:mod:`queuekit.spi.transport`). A runner takes
the middle step of the pipeline (:meth:`Pipeline.work`) and hands back ``(attempt, outcome)``
pairs for the loop to settle. The thread and task runners also take a backlog of up to
``capacity - 1`` attempts that wait, begun, for a free thread or task (none at one at a
time: a waiting message there is one another worker could have taken): one that finishes starts
the next at once instead of waiting for the loop thread to settle, receive and submit (on
the busy 2-core machine of bench/bench_concurrency.py that round trip idled each thread
1-2 ms per job, 2-4 % of a 50 ms job). Once a stop is asked for nothing new starts, and the
loop takes the backlog back unstarted (:meth:`Runner.withdraw`) and hands it to the broker.
Threads and tasks are daemons: when a stop's deadline passes, the loop hands unfinished
messages back to the broker and the process may exit while a
``work()`` still runs (its late outcome is dropped; the message runs again elsewhere).
Quick jobs (on average shorter than a handoff costs) run in the loop thread while nothing
else is in flight, sync or ``async def`` (the event loop is then run by the loop thread:
see :class:`AsyncRunner`, which also takes up to ``capacity`` of them at once, received
together, as tasks of one pass of its loop); not with a stop deadline, which needs the loop
thread free.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import inspect
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from .pipeline import Attempt, Outcome, Pipeline

Done = tuple[Attempt, Outcome]

#: A work() call shorter than this on average is cheaper in the loop thread than handed to
#: a worker thread and back (measured: about 60 µs of CPU per handoff on this project's VM).
_SHORT = 0.0002
_WEIGHT = 0.1  # of the newest call in the moving average
_PARK_RETRY = 0.1  # seconds between checks whether tasks that work() left behind are done


class Runner(ABC):
    """Runs up to ``capacity`` attempts at once, with up to ``backlog`` more waiting to
    start; see the module docstring."""

    def __init__(self, pipeline: Pipeline, capacity: int, backlog: int = 0) -> None:
        self.pipeline, self.capacity, self.backlog = pipeline, capacity, backlog
        #: Attempts submitted and not yet collected (running or waiting), by identity.
        self.in_flight: dict[int, Attempt] = {}

    @property
    def full(self) -> bool:
        return len(self.in_flight) >= self.capacity + self.backlog

    @property
    def takes(self) -> int:
        """How many attempts the next ``submit`` may take at once: the loop receives more
        than one only if they are there already (received together, run together)."""
        return 1

    @abstractmethod
    def submit(self, attempts: list[Attempt]) -> list[Done]:
        """Start ``attempts`` (at most ``takes``), or queue them to start when a thread or
        task is free; only while not ``full``. The outcomes of those that ran to the end in
        this (the loop's) thread, for the loop to settle at once; ``collect`` returns the
        others later."""

    @abstractmethod
    def collect(self, timeout: float) -> list[Done]:
        """The attempts that finished, waiting up to ``timeout`` s for one when any is in
        flight and none has finished yet."""

    def withdraw(self) -> list[Attempt]:
        """Take back the attempts submitted and not started (the backlog): a stop hands
        them to the broker instead of running them."""
        return []

    def close(self) -> None:  # noqa: B027 - the inline runner holds nothing
        """Stop taking work; what still runs is left to finish or die with the process."""


class InlineRunner(Runner):
    """``work()`` in the loop's thread, one at a time: the cheapest for one in flight."""

    def __init__(self, pipeline: Pipeline) -> None:
        super().__init__(pipeline, 1)

    def submit(self, attempts: list[Attempt]) -> list[Done]:
        return [(attempt, self.pipeline.work(attempt)) for attempt in attempts]

    def collect(self, timeout: float) -> list[Done]:
        return []


class _Handoff(Runner):
    """A runner whose attempts finish in other threads and come back through a queue.

    Submitted attempts wait in ``_waiting`` until a thread or task takes one, which it does
    only while ``stopping()`` is false: once a stop is asked for (from any thread, or a
    signal handler that only sets a flag) nothing new starts, even before the loop thread
    notices the stop and calls :meth:`withdraw`. ``_lock`` guards ``_waiting``."""

    def __init__(
        self,
        pipeline: Pipeline,
        capacity: int,
        stopping: Callable[[], bool],
        *,
        inline_short: bool = True,
    ) -> None:
        super().__init__(pipeline, capacity, backlog=capacity - 1)
        self.stopping = stopping
        self.inline_short = inline_short
        # seconds: a moving average of work() calls (races are harmless), taken as slow at
        # first, so only a record of quick calls in the threads or tasks brings work inline
        self._typical = 1.0
        self._finished: queue.SimpleQueue[Done] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting: collections.deque[Attempt] = collections.deque()
        self._open()

    def _open(self) -> None:
        """Start what runs the attempts (threads, an event loop): the end of ``__init__``."""

    @property
    def quick(self) -> bool:
        """Quick jobs run inline: recent ``work()`` calls took less than a handoff costs."""
        return self.inline_short and self._typical < _SHORT

    @property
    def full(self) -> bool:
        """Also while quick jobs are in flight: the loop then settles them before it takes
        more, so the next one runs in its thread instead of crossing (a fast broker would
        otherwise keep a thread or task busy, and the loop thread never idle)."""
        return (self.quick and bool(self.in_flight)) or super().full

    def _record(self, took: float) -> None:
        self._typical += (took - self._typical) * _WEIGHT

    def collect(self, timeout: float) -> list[Done]:
        done: list[Done] = []
        try:
            if self.in_flight and timeout > 0:
                done.append(self._finished.get(timeout=timeout))
            while True:
                done.append(self._finished.get_nowait())
        except queue.Empty:
            pass
        for attempt, _ in done:
            self.in_flight.pop(id(attempt), None)
        return done

    def _next(self) -> Attempt | None:
        """The next attempt to start, if any may start; with ``_lock`` held."""
        if self._waiting and not self.stopping():
            return self._waiting.popleft()
        return None

    def withdraw(self) -> list[Attempt]:
        with self._lock:
            taken, self._waiting = list(self._waiting), collections.deque()
        return [self.in_flight.pop(id(attempt)) for attempt in taken]


class ThreadRunner(_Handoff):
    """Sync ``work()`` in ``capacity`` daemon threads (I/O-bound work: mail, HTTP calls).

    With ``inline_short``, an attempt that finds nothing else in flight runs in the loop's
    own thread while recent ``work()`` calls took less than handing one to a thread costs
    (``_SHORT`` on average): a queue of quick jobs then costs what it costs at ``-c 1``,
    and the first slow one moves the rest back to the threads. While such a job runs, the
    worker takes nothing else, as at ``-c 1``: a job that waits for another message of its
    own worker (a ``call()`` to its own queue) must not be quick on average. Not with a stop
    deadline, which needs the loop thread free to hand work back.
    """

    def _open(self) -> None:
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"queuekit-work-{n}", daemon=True)
            for n in range(self.capacity)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, attempts: list[Attempt]) -> list[Done]:
        if self.quick and not self.in_flight:  # (one: a thread runner takes one at a time)
            return [(attempt, self._timed(attempt)) for attempt in attempts]
        with self._wake:
            for attempt in attempts:
                self.in_flight[id(attempt)] = attempt
                self._waiting.append(attempt)
                self._wake.notify()
        return []

    def _timed(self, attempt: Attempt) -> Outcome:
        started = time.perf_counter()
        outcome = self.pipeline.work(attempt)
        self._record(time.perf_counter() - started)
        return outcome

    def _serve(self) -> None:
        while True:
            with self._wake:
                attempt = None
                while not self._closed and (attempt := self._next()) is None:
                    self._wake.wait()
            if attempt is None:  # closed: what still waits is not started
                return
            self._finished.put((attempt, self._timed(attempt)))

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()


class AsyncRunner(_Handoff):
    """``async def work()`` as up to ``capacity`` tasks on one event loop, kept for the life
    of the worker (so clients bound to the loop stay valid from one message to the next).

    The loop has one owner at a time, as asyncio requires. While tasks are in flight (or
    ``work()`` left tasks of its own behind) a daemon thread, the event-loop thread, runs
    it; a task that finishes takes the next waiting attempt itself, on the loop. Once no
    task is left, that thread stops the loop and waits (it parks) until it is handed work
    again: plain callbacks and timers on the loop then wait for the next message. With
    ``inline_short``, attempts that find nothing in flight and the loop parked, while
    recent ``work()`` calls took less than ``_SHORT`` on average, run in the loop's own
    thread (it runs the event loop), like :class:`ThreadRunner`'s quick jobs and with its
    caveats: no crossing to the event-loop thread and back, which cost a no-op message
    about twice its CPU. Up to ``capacity`` of them (those the broker delivered together)
    run as tasks of one pass of the loop, which costs about 20 µs of CPU: a fifth of a no-op
    message's when each had its own (bench/README.md, bench_concurrency.py). Not with a stop
    deadline, which needs the loop thread free.
    """

    def _open(self) -> None:
        self._running = 0  # tasks taking attempts, guarded by ``_lock``
        #: The event-loop thread runs the loop, or is about to (guarded by ``_lock``; set
        #: only by the loop thread, cleared only by the event-loop thread once it parked).
        self._lent = False
        self._closing = False  # close() began: the loop no longer parks (guarded by _lock)
        self._quit = False  # the event-loop thread ends after its run_forever()
        self._tasks: set[asyncio.Task[None]] = set()  # strong references to running tasks
        self._wake = threading.Condition(self._lock)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="queuekit-event-loop",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    @property
    def _inline_now(self) -> bool:
        # _lent read unlocked: only this thread sets it, so a False here stays False
        return self.quick and not self.in_flight and not self._lent

    @property
    def takes(self) -> int:
        return self.capacity if self._inline_now else 1

    def submit(self, attempts: list[Attempt]) -> list[Done]:
        if self._inline_now:
            return self._inline(attempts)
        for attempt in attempts:
            self._hand_over(attempt)
        return []

    def _hand_over(self, attempt: Attempt) -> None:
        """Queue ``attempt`` for a task on the event-loop thread, starting one if allowed."""
        self.in_flight[id(attempt)] = attempt
        with self._lock:
            self._waiting.append(attempt)
            if self._running >= self.capacity:
                return
            self._running += 1
            if self._lent:
                self.loop.call_soon_threadsafe(self._start)
            else:  # parked: nobody runs the loop until told to
                self.loop.call_soon(self._start)
                self._lent = True
                self._wake.notify()

    def _inline(self, attempts: list[Attempt]) -> list[Done]:
        """Run ``attempts`` as tasks on the parked loop in this thread; tasks ``work()``
        started and left running go on in the event-loop thread."""
        started = time.perf_counter()
        tasks = [self.loop.create_task(self.pipeline.work_async(a)) for a in attempts]
        self.loop.stop()  # before run_forever(): one pass over what is ready, as documented
        self.loop.run_forever()  # (half the cost of run_until_complete for a no-op job)
        for task in tasks:
            if not task.done():  # it awaits something
                self.loop.run_until_complete(task)
        done = [(attempt, task.result()) for attempt, task in zip(attempts, tasks, strict=True)]
        self._record((time.perf_counter() - started) / len(attempts))
        if asyncio.all_tasks(self.loop):
            with self._lock:
                self.loop.call_soon(self._park_if_idle)  # once those are done
                self._lent = True
                self._wake.notify()
        return done

    def _start(self) -> None:  # on the loop
        task = self.loop.create_task(self._run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        while True:
            with self._lock:
                attempt = self._next()
                if attempt is None:
                    self._running -= 1
                    if not self._running:
                        self.loop.call_soon(self._park_if_idle)
                    return
                sharing = self._running  # tasks taking turns on the one event-loop thread
            started = time.perf_counter()
            outcome = await self.pipeline.work_async(attempt)
            # a task's time is shared with the tasks that took turns on the event-loop thread
            self._record((time.perf_counter() - started) / sharing)
            self._finished.put((attempt, outcome))

    def _park_if_idle(self) -> None:  # on the loop
        """Stop the loop once no task is left (ours or ``work()``'s), so the loop thread
        may run quick attempts itself; ``_serve`` checks again after it stopped."""
        with self._lock:
            if self._running or self._closing:
                return  # the task that ends next checks again; close() ends the loop
            if asyncio.all_tasks(self.loop):
                self.loop.call_later(_PARK_RETRY, self._park_if_idle)
                return
            self.loop.stop()

    def _serve(self) -> None:
        """The event-loop thread: run the loop while it is lent, until ``close``."""
        while True:
            with self._wake:
                while not self._lent:
                    self._wake.wait()
            self.loop.run_forever()
            with self._lock:
                if self._quit:
                    return
                if self._closing or self._running:
                    continue  # work came in while it stopped: run again
                if asyncio.all_tasks(self.loop):
                    self.loop.call_soon(self._park_if_idle)
                    continue
                self._lent = False

    def close(self) -> None:
        """Cancel what still runs (a stop's deadline passed: those messages were handed
        back), then stop and close the loop; both on the event-loop thread."""
        with self._lock:
            self._closing = True
            if not self._lent:
                self._lent = True
                self._wake.notify()
        done = asyncio.run_coroutine_threadsafe(self._cancel_the_rest(), self.loop)
        with contextlib.suppress(concurrent.futures.TimeoutError, asyncio.CancelledError):
            done.result(timeout=5)
        self.loop.call_soon_threadsafe(self._end)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()

    def _end(self) -> None:  # on the loop
        self._quit = True
        self.loop.stop()

    async def _cancel_the_rest(self) -> None:
        running = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await self.loop.shutdown_asyncgens()


def runner_for(
    pipeline: Pipeline, concurrency: int, *, threaded: bool, stopping: Callable[[], bool]
) -> Runner:
    """An async handler gets an event loop; a sync one runs inline when one at a time is
    asked for and nothing needs the loop thread free (``threaded``: a stop deadline).
    ``stopping()`` says a stop was asked for: waiting attempts then no longer start."""
    if is_async(pipeline.handler.work):
        return AsyncRunner(pipeline, concurrency, stopping, inline_short=not threaded)
    if concurrency == 1 and not threaded:
        return InlineRunner(pipeline)
    return ThreadRunner(pipeline, concurrency, stopping, inline_short=not threaded)


def is_async(function: Any) -> bool:
    """Whether calling ``function`` gives a coroutine (``async def``, also a bound method)."""
    return inspect.iscoroutinefunction(function)
