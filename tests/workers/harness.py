"""Starting ``worker`` processes the way a user does, and reading what they report."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(sys.executable).parent / "worker"


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment minus queuekit settings, with the repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUEKIT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def worker_command(*args: str) -> list[str]:
    """``worker ARGS`` (the console script when installed, else ``python -m queuekit``)."""
    if WORKER.exists():
        return [str(WORKER), *args]
    return [sys.executable, "-m", "queuekit", *args]


def run_worker(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        worker_command(*args),
        cwd=cwd,
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_worker(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[str]:
    """``log``: the child's stderr goes to this file instead of a pipe, for a chatty child
    (``worker -v`` logs every message) that would block on a full pipe nobody reads."""
    with contextlib.ExitStack() as files:
        stderr = files.enter_context(log.open("w", encoding="utf-8")) if log else subprocess.PIPE
        return subprocess.Popen(
            worker_command(*args),
            cwd=cwd,
            env=child_env(env),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )


def wait_for_line(stream: IO[str], needle: str, timeout: float = 30) -> str:
    """Read ``stream`` (a child's pipe) until a line containing ``needle``; fail on timeout/EOF.

    A child's readiness line is an event to wait on: no sleeping, no guessing.
    """
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no line with {needle!r} within {timeout}s; got {seen!r}")
        ready, _, _ = select.select([stream], [], [], remaining)
        if not ready:
            continue
        line = stream.readline()
        if not line:
            raise AssertionError(f"stream ended before a line with {needle!r}; got {seen!r}")
        seen.append(line)
        if needle in line:
            return line


def lines(path: Path) -> list[str]:
    """The complete lines of ``path`` so far (none if it does not exist yet)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]


def sqlite_url(path: Path, **options: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


def stop(process: subprocess.Popen[str], timeout: float = 30) -> None:
    """Reap a child the test started (kill it only if it is still running)."""
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=timeout)


__all__: Sequence[str] = [
    "ROOT",
    "child_env",
    "lines",
    "run_worker",
    "sqlite_url",
    "start_worker",
    "stop",
    "wait_for_line",
    "worker_command",
]
