"""One asyncio event loop in a background thread, called from synchronous code.

slixmpp is asyncio-only; the transport contract is blocking. Each transport owns one loop
thread; blocking calls hand a coroutine to it (``run_coroutine_threadsafe``) and wait.
``stop`` cancels and awaits every task still on the loop (slixmpp leaves some behind), so
nothing is destroyed pending and no transport is left unclosed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # the loop was closed meanwhile (a close() in another thread)
            coro.close()  # never awaited: close it rather than leak a warning
            future: concurrent.futures.Future[T] = concurrent.futures.Future()
            future.set_exception(concurrent.futures.CancelledError())
            return future

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (its exception is re-raised)."""
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel every task, let them finish, stop the loop and close it; idempotent."""
        if self.loop.is_closed():
            return
        if self._thread.is_alive():
            with contextlib.suppress(
                concurrent.futures.TimeoutError, concurrent.futures.CancelledError
            ):
                self.submit(self._cancel_all()).result(timeout)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()

    async def _cancel_all(self) -> None:
        me = asyncio.current_task()
        for _ in range(3):  # cancelled tasks may schedule more (slixmpp's cleanup does)
            tasks = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            if not tasks:
                break
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.loop.shutdown_asyncgens()
