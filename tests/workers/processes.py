"""Process managers for the tests, run in process and by ``worker run`` children."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from queuekit import Message, ProcessManager, Repeat


@dataclass
class Started:
    key: str


@dataclass
class Bump:
    key: str
    n: int


@dataclass
class Tick:
    key: str


@dataclass
class Finish:
    key: str


def by_key(event: Any) -> str:
    return str(event.key)


class Counter(ProcessManager):
    """Notes every bump in its state; every tenth schedules a ``Tick`` now and one after
    ``COUNTER_TICK_DELAY`` s (default 0.2): each must arrive exactly once."""

    queue = "counter"
    started_by = {Started: by_key}
    handles = {Bump: by_key, Tick: by_key, Finish: by_key}
    retry = Repeat(3, every=0)

    def on_started(self, event: Started, state: dict[str, Any]) -> None:
        state.update(seen=[], ticks=0)

    def on_bump(self, event: Bump, state: dict[str, Any]) -> None:
        time.sleep(float(os.environ.get("COUNTER_PAUSE", "0")))  # a handler that takes time
        state["seen"].append(event.n)
        if event.n % 10 == 0:
            self.schedule(Tick(event.key))
            self.schedule(Tick(event.key), delay=float(os.environ.get("COUNTER_TICK_DELAY", "0.2")))

    def on_tick(self, event: Tick, state: dict[str, Any]) -> None:
        state["ticks"] += 1

    def on_finish(self, event: Finish, state: dict[str, Any]) -> None:
        self.complete()


class CrashAfterCommit(Counter):
    """Its first step of each message commits, then the worker "crashes" before the ack:
    the message comes back with the same id."""

    crashed: set[str] = set()

    def work(self, message: Message) -> object:
        outcome = super().work(message)
        if message.id not in self.crashed:
            self.crashed.add(message.id)
            raise RuntimeError("crashed after the commit")
        return outcome


class Failing(Counter):
    no_instance = "fail"


class Dropping(Counter):
    no_instance = "drop"


class KilledAfterCommit(Counter):
    """Dies by SIGKILL right after the commit of the bump numbered 10, before its ack, the
    first time (``$QK_MARK`` notes it): the broker hands the message to the next worker."""

    def work(self, message: Message) -> object:
        outcome = super().work(message)
        mark = Path(os.environ["QK_MARK"])
        if message.payload.get("n") == 10 and not mark.exists():
            mark.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return outcome


class RaisesBeforeCommit(Counter):
    """Its first run of each bump raises in the handler: nothing may be written."""

    raised: set[int] = set()

    def on_bump(self, event: Bump, state: dict[str, Any]) -> None:
        super().on_bump(event, state)  # the state changes and the ticks are scheduled ...
        if event.n not in self.raised:
            self.raised.add(event.n)
            raise RuntimeError("the handler failed")  # ... and thrown away with the step
