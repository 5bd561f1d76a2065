"""Helpers shared by the tests: broker availability and waiting on conditions."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from queuekit import Connection, Message, connect
from queuekit.features.envelope import Metadata


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


class GroupLog:
    """Work on ``[group, number]`` payloads that notes, per group, the order they ran in
    and how often two of one group overlapped."""

    def __init__(self, pause: float = 0.01) -> None:
        self.pause = pause
        self.lock = threading.Lock()
        self.order: dict[str, list[int]] = {}
        self.running: dict[str, int] = {}
        self.overlaps = 0

    def __call__(self, message: Message) -> None:
        group, number = message.payload
        with self.lock:
            self.running[group] = self.running.get(group, 0) + 1
            self.overlaps += self.running[group] > 1
            self.order.setdefault(group, []).append(number)
        time.sleep(self.pause)
        with self.lock:
            self.running[group] -= 1


def work_in_threads(
    url: str, jobstore: str, queue: str, work: Callable[[Message], object], *, workers: int = 3
) -> None:
    """Run ``workers`` workers on ``queue`` for 3 s, each on its own connection (one host
    each, in effect), and wait for them."""

    def worker() -> None:
        with connect(url, jobstore=jobstore) as own:
            own.queue(queue).dispatch(work, max_seconds=3.0, handle_signals=False)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


#: What ``feature_connection`` opens: the in-process brokers, and one whose delays and
#: dedup keys live in the job store (``tests/workers/transports.py``).
FEATURE_BROKERS = ["memory", "sqlite", "emulated"]


def feature_connection(kind: str, tmp_path: Path) -> Iterator[Connection]:
    """A connection of ``kind`` (see ``FEATURE_BROKERS``) with its job store in ``tmp_path``."""
    from tests.workers.transports import NODELAY

    urls = {
        "memory": f"memory://{uuid.uuid4().hex}",
        "sqlite": f"sqlite:///{tmp_path}/queues.db",
        "emulated": f"{NODELAY}://{uuid.uuid4().hex}",
    }
    with connect(urls[kind], jobstore=f"sqlite:///{tmp_path}/jobs.db") as connection:
        yield connection


def publish_undecodable(conn: Connection, queue: str, group: str) -> str:
    """A grouped message from a newer producer: its envelope has a metadata field this
    worker does not know, so its body does not decode here. Returns its id."""
    prepared = conn.broker.prepare(queue, "from the future", Metadata(group=group), None, None)
    envelope = json.loads(prepared.outgoing.body)
    envelope["metadata"]["future"] = 1
    body = json.dumps(envelope).encode()
    conn.broker.send_prepared(
        queue, [replace(prepared, outgoing=replace(prepared.outgoing, body=body))]
    )
    return prepared.message.id
