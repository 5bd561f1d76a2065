"""``worker status`` with real worker processes, on SQLite and RabbitMQ.

Given a queue with known contents (one failed message, two messages in the hands of two
live workers on two "hosts", three ready, one delayed) and a worker on another queue killed
with SIGKILL, ``worker status --json`` reports each count the broker can tell, null where
it cannot (RabbitMQ cannot count delayed or in-flight messages, nor their age), the live
workers with host, pid, concurrency, messages in hand and memory, and drops the killed
worker once its heartbeat is older than ``QUEUEKIT_WORKER_TIMEOUT``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from queuekit import connect
from tests.support import require_broker, wait_until
from tests.workers.harness import lines, run_worker, sqlite_url, start_worker, stop

TIMEOUT = 3.0  # seconds without a heartbeat before a worker counts as dead
AMQP = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass
class Setup:
    kind: str
    url: str
    queue: str
    tmp: Path
    jobstore: str

    def env(self, host: str = "status-host") -> dict[str, str]:
        return {
            "QUEUEKIT_JOBSTORE": self.jobstore,
            "QUEUEKIT_WORKER_TIMEOUT": str(TIMEOUT),
            "QUEUEKIT_HOSTNAME": host,
            "QK_OUT": str(self.tmp / "out.txt"),
            "QK_EVENTS": str(self.tmp / "events.txt"),
            "QK_RELEASE": str(self.tmp / "release"),
        }

    def start(self, host: str, cls: str, queue: str, *extra: str) -> subprocess.Popen[str]:
        return start_worker("run", f"tests.workers.queues.{cls}", "--url", self.url,
                            "--queue", queue, *extra, cwd=self.tmp,
                            env=self.env(host))  # fmt: skip

    def status(self, *extra: str) -> subprocess.CompletedProcess[str]:
        done = run_worker("status", "--url", self.url, *extra, cwd=self.tmp, env=self.env())
        assert done.returncode == 0, done.stderr
        return done

    def snapshot(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.status("--json").stdout)
        return data


@pytest.fixture(params=["sqlite", "rabbitmq"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    if request.param == "rabbitmq":
        require_broker("rabbitmq", "127.0.0.1", 5672)
        url = AMQP
    else:
        url = sqlite_url(tmp_path / "queues.db")
    made = Setup(request.param, url, f"status-{uuid.uuid4().hex[:10]}", tmp_path,
                 sqlite_url(tmp_path / "jobs.db"))  # fmt: skip
    yield made
    with connect(url, jobstore=made.jobstore) as conn:
        conn.transport.delete(made.queue)


def queue_row(data: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((q for q in data["queues"] if q["name"] == name), None)


def test_status_reports_counts_workers_and_drops_a_killed_worker(setup: Setup) -> None:
    queue, other = setup.queue, f"{setup.queue}-other"
    started: list[subprocess.Popen[str]] = []
    try:
        with connect(setup.url, jobstore=setup.jobstore) as conn:
            # Given one message rejected to the failed store by a real worker
            conn.queue(queue).publish({"n": 0})
            picky = run_worker("run", "tests.workers.queues.PickyQueue", "--url", setup.url,
                               "--queue", queue, "--max-messages", "1", cwd=setup.tmp,
                               env=setup.env())  # fmt: skip
            assert picky.returncode == 0, picky.stderr
            # And two gated messages, one in the hands of each of two workers on two hosts
            # (a thread runner, so their loops keep beating while work() waits)
            conn.queue(queue).publish_many([{"n": 1}, {"n": 2}])
            for host in ("host-a", "host-b"):
                started.append(setup.start(host, "GatedQueue", queue, "--prefetch", "1",
                                           "--shutdown-timeout", "30"))  # fmt: skip
            events = setup.tmp / "events.txt"
            wait_until(lambda: sorted(lines(events)) == ["started 1", "started 2"], 30,
                       "both workers to start a message")  # fmt: skip
            # And three ready messages and one delayed by an hour
            conn.queue(queue).publish_many([{"n": n} for n in (3, 4, 5)])
            conn.queue(queue).publish({"n": 6}, delay=3600)
        # And a worker of another queue, killed without a word
        killed = setup.start("host-c", "RecordingQueue", other)
        started.append(killed)
        wait_until(lambda: (row := queue_row(setup.snapshot(), other)) is not None
                   and row["workers"] == 1, 30, "the doomed worker to register")  # fmt: skip
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)

        # When status is asked once both workers have reported what they hold
        wait_until(lambda: queue_row(setup.snapshot(), queue)["working"] == 2,  # type: ignore[index]
                   30, "two messages in hand")  # fmt: skip
        data = setup.snapshot()

        # Then the queue's counts are the broker's, or null where it cannot count
        row = queue_row(data, queue)
        assert row is not None
        native = setup.kind == "sqlite"
        assert (row["ready"], row["failed"], row["workers"], row["working"]) == (3, 1, 2, 2)
        assert row["delayed"] == (1 if native else None)
        assert row["in_flight"] == (2 if native else None)
        assert (row["latency"] is not None) == native
        assert row["error"] is None
        # And the live workers are listed with what they hold
        mine = [w for w in data["workers"] if w["queue"] == queue]
        assert sorted((w["host"], w["pid"]) for w in mine) == [
            ("host-a", started[0].pid), ("host-b", started[1].pid)]  # fmt: skip
        for worker in mine:
            assert worker["concurrency"] == 1
            assert len(worker["current"]) == 1
            assert worker["rss"] > 0
            assert worker["failed"] == 0
        assert "guest:guest" not in json.dumps(data)  # secrets redacted

        # And the table says "unknown" where the broker cannot count
        [line] = [x for x in setup.status().stdout.splitlines() if x.startswith(f"{queue} ")]
        assert line.split()[1:] == (
            ["3", "1", "2", "2", "1", line.split()[6], "2", "-"] if native
            else ["3", "unknown", "unknown", "2", "1", "unknown", "2", "-"])  # fmt: skip
        assert row["paused"] is False

        # And the killed worker drops out once its heartbeat is older than the timeout
        wait_until(lambda: queue_row(setup.snapshot(), other) is None, TIMEOUT + 15,
                   "the killed worker to drop out")  # fmt: skip
        assert len([w for w in setup.snapshot()["workers"] if w["queue"] == queue]) == 2
    finally:
        (setup.tmp / "release").touch()
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in started:
            stop(process)
