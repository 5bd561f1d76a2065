"""Helpers shared by the tests: broker availability and waiting on conditions."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import pytest


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_broker(name: str, host: str, port: int) -> None:
    """Skip when the broker is missing, but fail when ``CI`` is set: CI must never go green
    by skipping the adapters it was meant to prove."""
    if port_open(host, port):
        return
    reason = f"{name} is not answering on {host}:{port} (start it: scripts/brokers up {name})"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def wait_until(condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``condition`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.01)
