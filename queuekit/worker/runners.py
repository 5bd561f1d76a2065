"""Where ``work()`` runs: in the loop's own thread, in N threads, or as N tasks on an event loop.

The loop (:mod:`.loop`) receives and settles in its own thread: adapters are called from
one consumer thread, as their contract says (:mod:`queuekit.spi.transport`). A runner takes
the middle step of the pipeline (:meth:`Pipeline.work`) and hands back ``(attempt, outcome)``
pairs for the loop to settle. Threads and tasks are daemons: when a stop's deadline passes,
the loop hands unfinished messages back to the broker and the process may exit while a
``work()`` still runs (its late outcome is dropped; the message runs again elsewhere).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import queue
import threading
from abc import ABC, abstractmethod
from typing import Any

from .pipeline import Attempt, Outcome, Pipeline

Done = tuple[Attempt, Outcome]


class Runner(ABC):
    """Runs up to ``capacity`` attempts at once; see the module docstring."""

    def __init__(self, pipeline: Pipeline, capacity: int) -> None:
        self.pipeline, self.capacity = pipeline, capacity
        #: Attempts submitted and not yet collected, by identity.
        self.in_flight: dict[int, Attempt] = {}

    @property
    def full(self) -> bool:
        return len(self.in_flight) >= self.capacity

    @abstractmethod
    def submit(self, attempt: Attempt) -> None:
        """Start ``attempt``; only while not ``full``."""

    @abstractmethod
    def collect(self, timeout: float) -> list[Done]:
        """The attempts that finished, waiting up to ``timeout`` s for one when any is in
        flight and none has finished yet."""

    def close(self) -> None:  # noqa: B027 - the inline runner holds nothing
        """Stop taking work; what still runs is left to finish or die with the process."""


class InlineRunner(Runner):
    """``work()`` in the loop's thread, one at a time: the cheapest for one in flight."""

    def __init__(self, pipeline: Pipeline) -> None:
        super().__init__(pipeline, 1)
        self._done: list[Done] = []

    def submit(self, attempt: Attempt) -> None:
        self._done.append((attempt, self.pipeline.work(attempt)))

    def collect(self, timeout: float) -> list[Done]:
        done, self._done = self._done, []
        return done


class _Handoff(Runner):
    """A runner whose attempts finish in other threads and come back through a queue."""

    def __init__(self, pipeline: Pipeline, capacity: int) -> None:
        super().__init__(pipeline, capacity)
        self._finished: queue.SimpleQueue[Done] = queue.SimpleQueue()

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


class ThreadRunner(_Handoff):
    """Sync ``work()`` in ``capacity`` daemon threads (I/O-bound work: mail, HTTP calls)."""

    def __init__(self, pipeline: Pipeline, capacity: int) -> None:
        super().__init__(pipeline, capacity)
        self._todo: queue.SimpleQueue[Attempt | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"queuekit-work-{n}", daemon=True)
            for n in range(capacity)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, attempt: Attempt) -> None:
        self.in_flight[id(attempt)] = attempt
        self._todo.put(attempt)

    def _serve(self) -> None:
        while (attempt := self._todo.get()) is not None:
            self._finished.put((attempt, self.pipeline.work(attempt)))

    def close(self) -> None:
        for _ in self._threads:
            self._todo.put(None)


class AsyncRunner(_Handoff):
    """``async def work()`` as up to ``capacity`` tasks on one event loop, run by a daemon
    thread for the life of the worker (so clients bound to the loop can be kept)."""

    def __init__(self, pipeline: Pipeline, capacity: int) -> None:
        super().__init__(pipeline, capacity)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="queuekit-event-loop", daemon=True
        )
        self._thread.start()

    def submit(self, attempt: Attempt) -> None:
        self.in_flight[id(attempt)] = attempt
        asyncio.run_coroutine_threadsafe(self._run(attempt), self.loop)

    async def _run(self, attempt: Attempt) -> None:
        self._finished.put((attempt, await self.pipeline.work_async(attempt)))

    def close(self) -> None:
        """Cancel what still runs (a stop's deadline passed: those messages were handed
        back), then stop and close the loop."""
        done = asyncio.run_coroutine_threadsafe(self._cancel_the_rest(), self.loop)
        with contextlib.suppress(concurrent.futures.TimeoutError, asyncio.CancelledError):
            done.result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()

    async def _cancel_the_rest(self) -> None:
        running = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await self.loop.shutdown_asyncgens()


def runner_for(pipeline: Pipeline, concurrency: int, *, threaded: bool) -> Runner:
    """An async handler gets an event loop; a sync one runs inline when one at a time is
    asked for and nothing needs the loop thread free (``threaded``: a stop deadline)."""
    if is_async(pipeline.handler.work):
        return AsyncRunner(pipeline, concurrency)
    if concurrency == 1 and not threaded:
        return InlineRunner(pipeline)
    return ThreadRunner(pipeline, concurrency)


def is_async(function: Any) -> bool:
    """Whether calling ``function`` gives a coroutine (``async def``, also a bound method)."""
    return inspect.iscoroutinefunction(function)
