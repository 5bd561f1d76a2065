"""The supervisor behind ``worker run --processes P``: P child worker processes, kept running.

Each child is a whole ``worker run`` process (its own interpreter and broker connection),
started from a command line the caller builds. The supervisor imports no application code and
holds no connection, so nothing it does can lose a message: what a dead child held comes back
from the broker (redelivery, or the SQLite lease), which is the adapters' promise.

- **Restart** a child that dies (an exception, SIGKILL, the OOM killer) after a backoff that
  doubles with each recent crash (0.1 s up to 10 s), and give up when children crashed
  :data:`CRASHES_ALLOWED` times within :data:`CRASH_WINDOW` seconds: a crash loop is a bug to
  fix, and restarting it for ever only hides it from the process supervisor above.
- **Recycle** a child that ends on a limit (``--max-messages``, ``--max-seconds``,
  ``--max-memory``; it exits with :data:`EXIT_LIMIT`): its replacement starts as it leaves,
  without backoff. The first children get staggered limits (child k of P gets k/P of each
  count and duration), so they reach them at different moments and are replaced one at a time
  while the others keep draining. This is a spread, not a lock: two children that reach a
  limit together are both replaced at once.
- **Wait for a slot**: a child that finds its queue's workers limit reached (it exits with
  ``OVER_LIMIT_EXIT``) is started again after :data:`_BACKOFF_CAP` seconds, without counting
  as a crash: a slot frees when another worker of the queue, on any host, stops or dies.
- **Stop**: SIGTERM, SIGINT and SIGHUP go on to every child as SIGTERM (each finishes what it
  holds, settles it and exits) and the supervisor waits for all of them. A second SIGINT kills
  them (SIGKILL): what they held is redelivered.
- **Reload** (``--reload``, for development only): when a watched ``.py`` file changes, every
  child gets SIGTERM and is replaced as it leaves, so the new code runs once the messages in
  hand are done. A child that crashes (or finds its class missing) under ``--reload`` waits
  for the next change instead of counting towards the crash loop.

Signal handlers only set flags; a self-pipe (``signal.set_wakeup_fd``, SIGCHLD included) wakes
the loop, which does all the work. Run it in the main thread.
"""

from __future__ import annotations

import logging
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib.util import find_spec
from pathlib import Path
from types import FrameType

from ..features.registry import OVER_LIMIT_EXIT
from .loop import STOP_SIGNALS, SUPERVISOR_PID_ENV, Limits

log = logging.getLogger("queuekit.supervisor")

#: Exit statuses of ``worker run`` (with or without ``--processes``), for the process
#: supervisor above it (systemd, supervisord, a container runtime).
EXIT_CLEAN = 0  # stopped by a signal; every child finished and settled what it held
EXIT_ERROR = 1  # the broker or job store failed, work was handed back at the shutdown
#                 timeout, or a child did not stop cleanly
EXIT_CONFIG = 2  # bad configuration: a usage error, a class that is not found
EXIT_LIMIT = 3  # a child ended on --max-messages/--max-seconds/--max-memory: start another
EXIT_CRASH_LOOP = 4  # children crashed CRASHES_ALLOWED times within CRASH_WINDOW: gave up
EXIT_ABORTED = 130  # a second SIGINT: children killed, their messages go back to the broker

CRASHES_ALLOWED = 5
CRASH_WINDOW = 60.0  # seconds
_BACKOFF_FIRST = 0.1  # seconds before the first restart; doubles with each recent crash
_BACKOFF_CAP = 10.0
_TICK = 0.5  # seconds between checks for changed files and due restarts when nothing wakes us

#: Builds a child's command line from the limits it should run with.
Command = Callable[[Limits], list[str]]

#: ``worker run`` options the supervisor keeps for itself (name -> takes a value); its
#: children get the rest of its command line unchanged, and their limits from it.
SUPERVISOR_OPTIONS = {"--processes": True, "--reload": False, "--max-messages": True,
                      "--max-seconds": True, "--limit-exit-code": True,
                      "--metrics-port": True}  # fmt: skip


def child_command(argv: Sequence[str]) -> Command:
    """The children of ``worker ARGV``: this interpreter running the same command line
    without :data:`SUPERVISOR_OPTIONS`, with each child's (staggered) limits, exiting with
    :data:`EXIT_LIMIT` when it reaches one."""
    same = without_options(argv, SUPERVISOR_OPTIONS)

    def command(limits: Limits) -> list[str]:
        options = ["--limit-exit-code", str(EXIT_LIMIT)]
        if limits.max_messages:
            options += ["--max-messages", str(limits.max_messages)]
        if limits.max_seconds:
            options += ["--max-seconds", repr(limits.max_seconds)]
        return [sys.executable, "-m", "queuekit", *same, *options]

    return command


def without_options(argv: Sequence[str], options: Mapping[str, bool]) -> list[str]:
    """``argv`` minus ``options`` (name -> takes a value), given as ``--opt V`` or ``--opt=V``.
    Exact because the ``worker`` parsers that take them refuse abbreviations."""
    kept: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        name, equals, _ = token.partition("=")
        if name not in options:
            kept.append(token)
        elif options[name] and not equals:
            next(tokens, None)
    return kept


def package_root(module: str) -> Path:
    """What ``--reload`` watches for ``module``: the directory of its top-level package (so a
    change anywhere in the project reloads), or its own file when it is a lone module. Found
    without importing it; ``LookupError`` when it cannot be found."""
    top = module.partition(".")[0]
    spec = find_spec(top)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec is not None and spec.origin:
        return Path(spec.origin)
    raise LookupError(f"cannot find the module {top!r}")


@dataclass
class _Slot:
    """One of the P places a child runs in; its number stays when the child is replaced."""

    number: int
    process: subprocess.Popen[bytes] | None = None
    restart_at: float | None = None  # a crashed child's replacement is due then
    retiring: bool = False  # sent SIGTERM for a reload: replace it as it leaves


@dataclass
class _Flags:
    """What the signal handlers noticed; read and acted on by the loop only."""

    stop: str | None = None
    interrupts: int = 0


class Supervisor:
    """Keeps ``processes`` children of ``command`` running; see the module docstring.

    ``limits`` are each child's; ``watch`` lists directories (their ``.py`` files, recursively)
    and files whose change restarts the children (``--reload``); ``exited`` is called with the
    pid of each child once it has exited (metrics drop its live gauges). :meth:`run` returns
    the exit status (one of the ``EXIT_*`` values).
    """

    def __init__(
        self,
        command: Command,
        processes: int,
        limits: Limits,
        *,
        watch: Sequence[Path] = (),
        exited: Callable[[int], None] = lambda pid: None,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be at least 1, not {processes}")
        self.command, self.limits, self.watch = command, limits, list(watch)
        self.exited = exited
        self._slots = [_Slot(number) for number in range(1, processes + 1)]
        self._flags = _Flags()
        self._crashes: list[float] = []  # when children crashed, within the window
        self._mtimes: dict[Path, float] = {}  # the watched files, as last scanned
        self._outcome: int | None = None

    def run(self) -> int:
        with self._signals() as wakeup:
            self._mtimes = self._scan()
            log.info("supervisor %d starting %d worker(s)", os.getpid(), len(self._slots))
            for slot in self._slots:
                self._start(slot, self._staggered(slot.number))
            while self._outcome is None:
                self._wait(wakeup)
                if self._flags.stop is not None:
                    log.info("supervisor received %s", self._flags.stop)
                    self._outcome = EXIT_CLEAN
                    break
                self._reap()
                self._restart_due()
                self._reload_if_changed()
            return self._stop_children(wakeup)

    # -- children ------------------------------------------------------------------------

    def _start(self, slot: _Slot, limits: Limits) -> None:
        env = {**os.environ, SUPERVISOR_PID_ENV: str(os.getpid())}  # it stops when we are gone
        slot.process = subprocess.Popen(self.command(limits), stdin=subprocess.DEVNULL, env=env)
        slot.restart_at, slot.retiring = None, False
        log.info("worker %d started: pid %d", slot.number, slot.process.pid)

    def _staggered(self, number: int) -> Limits:
        """The first child in slot ``number`` reaches its count and time limits at
        ``number/P`` of them, so the children are not all recycled at once."""
        share = number / len(self._slots)
        messages, seconds = self.limits.max_messages, self.limits.max_seconds
        return replace(
            self.limits,
            max_messages=max(1, math.ceil(messages * share)) if messages else messages,
            max_seconds=seconds * share if seconds else seconds,
        )

    def _reap(self) -> None:
        for slot in self._slots:
            if slot.process is None or slot.process.poll() is None:
                continue
            pid, status = slot.process.pid, slot.process.returncode
            slot.process = None
            self.exited(pid)
            if slot.retiring:
                self._start(slot, self.limits)
            elif status in (EXIT_CLEAN, EXIT_LIMIT):
                why = "reached a limit" if status == EXIT_LIMIT else "stopped"
                log.info("worker %d (pid %d) %s; starting its replacement", slot.number, pid, why)
                self._start(slot, self.limits)
            elif status == OVER_LIMIT_EXIT:
                log.warning("worker %d (pid %d): the queue has its workers limit of live "
                            "workers; trying again in %gs", slot.number, pid,
                            _BACKOFF_CAP)  # fmt: skip
                slot.restart_at = time.monotonic() + _BACKOFF_CAP
            elif status == EXIT_CONFIG and not self.watch:  # under --reload: wait for a fix
                log.error("worker %d (pid %d) exited with status 2: bad configuration (its "
                          "message is above); stopping", slot.number, pid)  # fmt: skip
                self._outcome = EXIT_CONFIG
                return
            else:
                self._crashed(slot, pid, status)
                if self._outcome is not None:
                    return

    def _crashed(self, slot: _Slot, pid: int, status: int) -> None:
        now = time.monotonic()
        how = (f"was killed by {signal.Signals(-status).name}" if status < 0
               else f"exited with status {status}")  # fmt: skip
        if self.watch:
            log.warning("worker %d (pid %d) %s; it restarts when a watched file changes",
                        slot.number, pid, how)  # fmt: skip
            return
        self._crashes = [t for t in self._crashes if now - t < CRASH_WINDOW] + [now]
        if len(self._crashes) >= CRASHES_ALLOWED:
            log.error("worker %d (pid %d) %s: %d crashes within %gs, giving up (exit %d)",
                      slot.number, pid, how, len(self._crashes), CRASH_WINDOW,
                      EXIT_CRASH_LOOP)  # fmt: skip
            self._outcome = EXIT_CRASH_LOOP
            return
        pause = min(_BACKOFF_FIRST * 2 ** (len(self._crashes) - 1), _BACKOFF_CAP)
        log.warning("worker %d (pid %d) %s; restarting in %.1fs (crash %d of %d allowed "
                    "within %gs)", slot.number, pid, how, pause, len(self._crashes),
                    CRASHES_ALLOWED - 1, CRASH_WINDOW)  # fmt: skip
        slot.restart_at = now + pause

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            if slot.process is None and slot.restart_at is not None and now >= slot.restart_at:
                self._start(slot, self.limits)

    def _stop_children(self, wakeup: int) -> int:
        """SIGTERM every child and wait for them all; a second SIGINT kills them."""
        outcome = self._outcome if self._outcome is not None else EXIT_CLEAN
        self._signal_children(signal.SIGTERM)
        log.info("sent SIGTERM to the workers; waiting for them to finish what they hold")
        killed = False
        while any(slot.process is not None for slot in self._slots):
            if self._flags.interrupts > 1 and not killed:
                log.warning("second SIGINT: killing the workers; what they held is redelivered")
                self._signal_children(signal.SIGKILL)
                killed, outcome = True, EXIT_ABORTED
            for slot in self._slots:
                if slot.process is None or slot.process.poll() is None:
                    continue
                status = slot.process.returncode
                # -SIGTERM: a child still starting up, before its handlers; it held nothing.
                if status not in (EXIT_CLEAN, EXIT_LIMIT, -signal.SIGTERM) and not killed:
                    log.warning("worker %d (pid %d) stopped with status %d", slot.number,
                                slot.process.pid, status)  # fmt: skip
                    outcome = outcome or EXIT_ERROR
                self.exited(slot.process.pid)
                slot.process = None
            if any(slot.process is not None for slot in self._slots):
                self._wait(wakeup)
        log.info("supervisor %d stopped (exit %d)", os.getpid(), outcome)
        return outcome

    def _signal_children(self, signum: signal.Signals) -> None:
        for slot in self._slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.send_signal(signum)

    # -- reload --------------------------------------------------------------------------

    def _scan(self) -> dict[Path, float]:
        """The modification time of every watched ``.py`` file."""
        found: dict[Path, float] = {}
        for root in self.watch:
            for path in root.rglob("*.py") if root.is_dir() else [root]:
                try:
                    found[path] = path.stat().st_mtime
                except FileNotFoundError:  # removed while we looked: the next scan sees it
                    continue
        return found

    def _reload_if_changed(self) -> None:
        if not self.watch:
            return
        seen, before = self._scan(), self._mtimes
        if seen == before:
            return
        self._mtimes = seen
        changed = next(p for p in sorted(seen.keys() | before.keys())
                       if seen.get(p) != before.get(p))  # fmt: skip
        log.info("%s changed: restarting the workers after the messages in hand", changed)
        for slot in self._slots:
            if slot.process is not None:
                slot.retiring = True
                slot.process.send_signal(signal.SIGTERM)
            else:  # crashed (waiting for this change) or waiting for its backoff
                self._start(slot, self.limits)

    # -- signals and waiting -------------------------------------------------------------

    @contextmanager
    def _signals(self) -> Iterator[int]:
        """Install the flag-setting handlers and the wake-up pipe; restore both after."""
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        handled = (*STOP_SIGNALS, signal.SIGCHLD)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        try:
            yield read_end
        finally:
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(read_end)
            os.close(write_end)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Flags only (see the module docstring); SIGCHLD just wakes the loop.
        if signum == signal.SIGINT:
            self._flags.interrupts += 1
        if signum != signal.SIGCHLD and self._flags.stop is None:
            self._flags.stop = signal.Signals(signum).name

    def _wait(self, wakeup: int) -> None:
        """Sleep until a signal (a child's exit included) or the next due restart or scan."""
        timeout = _TICK
        due = [s.restart_at for s in self._slots if s.restart_at is not None]
        if due:
            timeout = max(0.0, min(timeout, min(due) - time.monotonic()))
        ready, _, _ = select.select([wakeup], [], [], timeout)
        if ready:
            while True:
                try:
                    if not os.read(wakeup, 512):
                        break
                except BlockingIOError:
                    break
