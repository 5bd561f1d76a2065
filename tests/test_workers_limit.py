"""The workers limit with real ``worker run`` processes, on SQLite and RabbitMQ.

Given ``LimitedQueue`` (``workers_limit = 2``) and a job store shared by two "hosts"
(processes with their own ``QUEUEKIT_HOSTNAME``): two workers run; a third exits at once
with one line naming who holds the slots and status 75; a fourth waits for a slot
(``--wait-for-slot``), and takes the slot of a worker killed with SIGKILL once its heartbeat
is older than the timeout (``QUEUEKIT_WORKER_TIMEOUT``, 3 s here). ``--workers-limit``
overrides the class's limit.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from queuekit import connect
from queuekit.features.registry import OVER_LIMIT_EXIT
from queuekit.jobstore import open_jobstore
from queuekit.jobstore.base import JobStore, WorkerInfo
from tests.support import require_broker, wait_until
from tests.workers.harness import (
    lines,
    run_worker,
    sqlite_url,
    start_worker,
    stop,
    wait_for_line,
)

TIMEOUT = 3.0  # seconds without a heartbeat before a worker counts as dead
AMQP = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass
class Hosts:
    url: str
    queue: str
    tmp: Path
    jobstore: str

    def env(self, host: str) -> dict[str, str]:
        return {
            "QUEUEKIT_JOBSTORE": self.jobstore,
            "QUEUEKIT_WORKER_TIMEOUT": str(TIMEOUT),
            "QUEUEKIT_HOSTNAME": host,
            "QK_OUT": str(self.tmp / "out.txt"),
        }

    def args(self, *extra: str) -> list[str]:
        return ["run", "tests.workers.queues.LimitedQueue", "--url", self.url,
                "--queue", self.queue, *extra]  # fmt: skip

    def start(self, host: str, *extra: str) -> subprocess.Popen[str]:
        return start_worker(*self.args(*extra), cwd=self.tmp, env=self.env(host))

    def run(self, host: str) -> subprocess.CompletedProcess[str]:
        return run_worker(*self.args(), cwd=self.tmp, env=self.env(host))


@pytest.fixture(params=["sqlite", "rabbitmq"])
def hosts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Hosts]:
    if request.param == "rabbitmq":
        require_broker("rabbitmq", "127.0.0.1", 5672)
        url = AMQP
    else:
        url = sqlite_url(tmp_path / "queues.db")
    setup = Hosts(url, f"limited-{uuid.uuid4().hex[:10]}", tmp_path,
                  sqlite_url(tmp_path / "jobs.db"))  # fmt: skip
    yield setup
    with connect(url, jobstore=setup.jobstore) as conn:
        conn.transport.delete(setup.queue)


@pytest.fixture
def store(hosts: Hosts) -> Iterator[JobStore]:
    opened = open_jobstore(hosts.jobstore)
    try:
        yield opened
    finally:
        opened.close()


def slot_holders(store: JobStore, queue: str) -> list[tuple[str, int]]:
    return [(w.host, w.pid) for w in store.workers(queue) if w.slot]


def test_a_third_worker_exits_and_a_dead_workers_slot_goes_to_a_waiting_one(
    hosts: Hosts, store: JobStore
) -> None:
    first, second = hosts.start("host-a"), hosts.start("host-b")
    waiting: subprocess.Popen[str] | None = None
    try:
        # Given two workers of the queue, on two hosts, holding its two slots
        wait_until(lambda: len(slot_holders(store, hosts.queue)) == 2, 30, "two workers")
        assert sorted(slot_holders(store, hosts.queue)) == [
            ("host-a", first.pid), ("host-b", second.pid)]  # fmt: skip

        # When a third starts, then it says so in one line and exits with its own status
        third = hosts.run("host-a")
        assert third.returncode == OVER_LIMIT_EXIT, third.stderr
        [line] = third.stderr.splitlines()
        assert line.startswith(f"worker: queue {hosts.queue!r} has its limit of 2 workers")
        assert line.endswith(f"; exiting with status {OVER_LIMIT_EXIT}")
        assert f"host-a pid {first.pid}" in line and f"host-b pid {second.pid}" in line

        # When a fourth waits for a slot and one holder dies without a word
        waiting = hosts.start("host-b", "--wait-for-slot")
        assert waiting.stderr is not None
        wait_for_line(waiting.stderr, "this worker waits for a slot")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)

        # Then the dead worker's slot frees within the timeout and the waiting one takes it
        wait_until(lambda: sorted(slot_holders(store, hosts.queue)) == sorted(
            [("host-b", second.pid), ("host-b", waiting.pid)]),  # type: ignore[union-attr]
            TIMEOUT + 15, "the waiting worker to take the dead one's slot")  # fmt: skip
        assert first.pid not in {w.pid for w in store.workers(hosts.queue)}
        with connect(hosts.url, jobstore=hosts.jobstore) as conn:
            conn.queue(hosts.queue).publish_many([{"n": n} for n in range(6)])
        out = hosts.tmp / "out.txt"
        wait_until(lambda: sorted(lines(out)) == [str(n) for n in range(6)], 30, "the work")

        # And the two left deregister when they stop
        for worker in (second, waiting):
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0
        assert store.workers(hosts.queue) == []
    finally:
        for process in (first, second, waiting):
            if process is not None:
                stop(process)


def test_the_command_line_overrides_the_class_limit(tmp_path: Path) -> None:
    hosts = Hosts(sqlite_url(tmp_path / "queues.db"), "limited", tmp_path,
                  sqlite_url(tmp_path / "jobs.db"))  # fmt: skip
    with closing(open_jobstore(hosts.jobstore)) as store:
        # Given one worker elsewhere holding a slot of a queue whose class allows two
        elsewhere = WorkerInfo("w-1", "limited", "elsewhere", 4242, 1, time.time())
        assert store.register_worker(elsewhere, timeout=60, limit=2)
        # When a worker starts with --workers-limit 1, then it is over the limit
        refused = run_worker(*hosts.args("--workers-limit", "1"), cwd=tmp_path,
                             env=hosts.env("here"))  # fmt: skip
        assert refused.returncode == OVER_LIMIT_EXIT, refused.stderr
        assert "elsewhere pid 4242" in refused.stderr
        # And given a second holder, --workers-limit 0 lifts the class's limit of two
        store.register_worker(WorkerInfo("w-2", "limited", "elsewhere", 4343, 1, time.time()),
                              timeout=60, limit=2)  # fmt: skip
        store.heartbeat_worker("w-1", processed=0)
        ran = run_worker(*hosts.args("--workers-limit", "0", "--max-seconds", "0.5"),
                         cwd=tmp_path, env=hosts.env("here"))  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        assert [w.pid for w in store.workers("limited")] == [4242, 4343]  # it left again
