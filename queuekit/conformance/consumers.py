"""Consumers that run beside the case: threads for ``process_local`` transports, else processes.

A real broker is only proven by consumers in other processes that really die (SIGKILL) or
are really told to stop (SIGTERM). ``memory://`` queues live inside one process, so there a
consumer is a thread and "dies" by closing its transport without acking, which the contract
says returns its un-acked deliveries.

Both kinds report the same events (``ready``, ``got``, ``error``, ``exit``) to a
:class:`Consumer` handle the case waits on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..spi.registry import transport_factory
from ..spi.transport import Transport
from .context import CaseFailure, Context

Event = dict[str, Any]
Emit = Callable[[Event], None]


def consume(
    transport: Transport,
    queue: str,
    emit: Emit,
    stop: threading.Event,
    *,
    hold: bool = False,
    work_seconds: float = 0.0,
) -> None:
    """Receive from ``queue`` until ``stop``; ack each (``got`` after the ack), or with
    ``hold`` take one message, report it and wait for ``stop`` without acking."""
    emit({"event": "ready"})
    while not stop.is_set():
        delivery = transport.receive(queue, 0.1)
        if delivery is None:
            continue
        event = {
            "event": "got",
            "body": delivery.body.decode("utf-8", "replace"),
            "redelivered": delivery.redelivered,
            "count": delivery.delivery_count,
        }
        if hold:
            emit(event)
            stop.wait()
            return
        if work_seconds:
            time.sleep(work_seconds)  # stands in for work, so consumers overlap
        transport.ack(delivery)
        emit(event)


class Consumer:
    """A handle on a consumer thread or process; events arrive from another thread."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = threading.Condition()

    def record(self, event: Event) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def bodies(self) -> list[str]:
        with self._changed:
            return [e["body"] for e in self.events if e["event"] == "got"]

    def wait_for(self, what: str, count: int = 1, timeout: float = 30.0) -> list[Event]:
        """Wait until ``count`` events named ``what`` arrived; fail on an error or exit."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [e for e in self.events if e["event"] == what]
                if len(found) >= count:
                    return found
                for event in self.events:
                    if event["event"] in ("error", "exit"):
                        raise CaseFailure(f"consumer ended early: {event.get('detail', event)}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CaseFailure(f"consumer: no {what!r} within {timeout:g}s")
                self._changed.wait(remaining)

    def stop(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError


class ThreadConsumer(Consumer):
    """A consumer thread with its own transport (for ``process_local`` transports)."""

    def __init__(self, ctx: Context, queue: str, *, hold: bool = False, work: float = 0.0):
        super().__init__()
        self._transport = ctx.open()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(queue, hold, work), name="conformance-consumer", daemon=True
        )
        self._thread.start()

    def _run(self, queue: str, hold: bool, work: float) -> None:
        try:
            consume(self._transport, queue, self.record, self._stop, hold=hold, work_seconds=work)
        except Exception as exc:  # reported to the case, which fails with it
            self.record({"event": "error", "detail": f"{type(exc).__name__}: {exc}"})

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._transport.close()

    def kill(self) -> None:
        """Simulated crash: stop without acking, then close (un-acked work returns)."""
        self.stop()


class ProcessConsumer(Consumer):
    """A consumer in a child process (``python -m queuekit.conformance.child``)."""

    def __init__(self, ctx: Context, spec: dict[str, Any]) -> None:
        super().__init__()
        self.process = spawn_child(ctx, spec)
        self._stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                try:
                    self.record(json.loads(line))
                except ValueError:
                    self._stderr.append(line)
        code = self.process.wait()
        if code not in (0, -signal.SIGKILL):
            time.sleep(0.05)  # let the stderr reader catch the traceback's last lines
            tail = "".join(self._stderr)[-400:].strip()
            self.record({"event": "exit", "detail": f"exit code {code}: {tail}"})

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        with self.process.stderr:
            for line in self.process.stderr:
                self._stderr.append(line)

    def stop(self) -> None:
        """Ask the child to finish (stdin closes), then wait for it."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(5)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._reader.join(5)
        if self.process.stdin is not None:
            self.process.stdin.close()

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)


def start_consumer(ctx: Context, queue: str, *, hold: bool = False, work: float = 0.0) -> Consumer:
    """A consumer in a thread for process-local transports, else in a child process."""
    if ctx.process_local:
        return ThreadConsumer(ctx, queue, hold=hold, work=work)
    return ProcessConsumer(ctx, {"role": "consume", "queue": queue, "hold": hold, "work": work})


def spawn_child(ctx: Context, spec: dict[str, Any]) -> subprocess.Popen[str]:
    """Start ``queuekit.conformance.child`` with ``spec``; the URL (with its secret) goes
    through the environment, never the command line other users can read."""
    env = dict(os.environ)
    env["QUEUEKIT_CONFORMANCE_URL"] = ctx.url.render(reveal=True)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    factory = ctx.settings.factory or factory_reference(ctx.url.scheme)
    if factory:
        spec = {**spec, "factory": factory}
    return subprocess.Popen(
        [sys.executable, "-m", "queuekit.conformance.child", json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def factory_reference(scheme: str) -> str | None:
    """``module:qualname`` of the factory serving ``scheme``, so a child process opens the
    same adapter even when it was registered at run time; ``None`` if not importable."""
    factory = transport_factory(scheme)
    module, name = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
    if not module or "<" in name or module == "__main__":
        return None
    return f"{module}:{name}"
