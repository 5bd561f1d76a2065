"""Queue classes the tests run with ``worker run tests.workers.queues:...``.

They report what they do through files named by environment variables, so a test can wait
on a line appearing instead of sleeping:

- ``QK_OUT``: every processed payload's ``n`` is appended here, one per line;
- ``QK_EVENTS``: ``started N`` / ``done N`` lines around a gated ``work()``;
- ``QK_RELEASE``: a gated ``work()`` waits until this file exists;
- ``QK_FIXED``: ``BrokenUntilFixedQueue`` fails every message until this file exists;
- ``QK_PAUSE``: seconds ``PacedQueue`` works on each message.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from queuekit import AbstractQueue, Message, PermanentError, Repeat


def _append(variable: str, line: str) -> None:
    path = os.environ.get(variable)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")
            out.flush()


class RecordingQueue(AbstractQueue):
    """Appends each payload's ``n`` to ``$QK_OUT``."""

    queue = "records"

    def work(self, message: Message) -> None:
        _append("QK_OUT", str(message.payload["n"]))


class GatedQueue(AbstractQueue):
    """Says ``started N``, waits for ``$QK_RELEASE`` to exist, then records and says ``done N``."""

    queue = "gated"

    def work(self, message: Message) -> None:
        n = message.payload["n"]
        _append("QK_EVENTS", f"started {n}")
        release = Path(os.environ["QK_RELEASE"])
        deadline = time.monotonic() + 120
        while not release.exists():  # waiting on an event the test causes, not a timing guess
            if time.monotonic() > deadline:
                raise RuntimeError("never released")
            time.sleep(0.01)
        _append("QK_OUT", str(n))
        _append("QK_EVENTS", f"done {n}")


class PickyQueue(AbstractQueue):
    """Rejects payloads without ``to``; records the rest."""

    queue = "picky"

    def validate(self, message: Message) -> bool:
        return isinstance(message.payload, dict) and "to" in message.payload

    def work(self, message: Message) -> None:
        _append("QK_OUT", str(message.payload["to"]))


class FlakyQueue(AbstractQueue):
    """Rejects payloads without ``n``; fails the first attempt at the rest, retried at once;
    records ``n`` on the second."""

    queue = "flaky"
    retry = Repeat(times=1, every=0)

    def validate(self, message: Message) -> bool:
        return isinstance(message.payload, dict) and "n" in message.payload

    def work(self, message: Message) -> None:
        if message.metadata.attempts == 0:
            raise RuntimeError("the first attempt fails")
        _append("QK_OUT", str(message.payload["n"]))


class SerialQueue(AbstractQueue):
    """Notes ``start G N`` and ``end G N`` around a short ``work()`` on payloads ``[G, N]``,
    so overlapping or reordered members of a serial group show in ``$QK_OUT``."""

    queue = "serial"

    def work(self, message: Message) -> None:
        group, n = message.payload
        _append("QK_OUT", f"start {group} {n}")
        time.sleep(0.02)
        _append("QK_OUT", f"end {group} {n}")


class BrokenUntilFixedQueue(AbstractQueue):
    """Fails for good (``PermanentError``) until ``$QK_FIXED`` exists, then records ``n``."""

    queue = "broken-until-fixed"

    def work(self, message: Message) -> None:
        if not Path(os.environ["QK_FIXED"]).exists():
            raise PermanentError("not fixed yet")
        _append("QK_OUT", str(message.payload["n"]))


class DoublingQueue(AbstractQueue):
    """Returns twice the payload's ``n``; fails for good on a negative ``n``."""

    queue = "doubling"

    def work(self, message: Message) -> dict[str, int]:
        n = message.payload["n"]
        if n < 0:
            raise PermanentError(f"{n} is negative")
        return {"doubled": 2 * n}


class LimitedQueue(RecordingQueue):
    """``RecordingQueue`` with at most two workers at once, on every host (``workers_limit``)."""

    queue = "limited"
    workers_limit = 2


class PacedQueue(AbstractQueue):
    """Works ``$QK_PAUSE`` seconds on each message, then appends ``N PID`` to ``$QK_OUT``, so a
    test sees which process ran what."""

    queue = "paced"

    def work(self, message: Message) -> None:
        time.sleep(float(os.environ.get("QK_PAUSE", "0")))
        _append("QK_OUT", f"{message.payload['n']} {os.getpid()}")


class NotAQueue:
    """A class that is not an AbstractQueue (for the CLI's error path)."""


class SlowQueue(AbstractQueue):
    """Appends ``n`` to ``$QK_OUT`` after waiting ``$QK_SLOW`` seconds (I/O-bound work)."""

    queue = "slow"

    def work(self, message: Message) -> None:
        time.sleep(float(os.environ.get("QK_SLOW", "0.05")))
        _append("QK_OUT", str(message.payload["n"]))


class AsyncRecordingQueue(AbstractQueue):
    """``RecordingQueue`` with an ``async def work`` that waits ``$QK_SLOW`` seconds first."""

    queue = "async-records"

    async def work(self, message: Message) -> None:
        await asyncio.sleep(float(os.environ.get("QK_SLOW", "0")))
        _append("QK_OUT", str(message.payload["n"]))


class AsyncDoublingQueue(AbstractQueue):
    """``DoublingQueue`` with an ``async def work``; fails once on ``n == 5`` (a retry)."""

    queue = "async-doubling"
    retry = Repeat(times=1, every=0)

    async def work(self, message: Message) -> dict[str, int]:
        await asyncio.sleep(0)
        n = message.payload["n"]
        if n < 0:
            raise PermanentError(f"{n} is negative")
        if n == 5 and message.metadata.attempts == 0:
            raise RuntimeError("the first attempt at 5 fails")
        return {"doubled": 2 * n}
