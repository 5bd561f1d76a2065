"""``worker status`` with real worker processes, on every broker the tests start (memory://
is left out: it lives in one process, so no worker process can share it).

Given a queue with known contents (one failed message, two messages in the hands of two
live workers on two "hosts", three ready, one delayed) and a worker on another queue killed
with SIGKILL, ``worker status --json`` reports each count the broker can tell, null where
it cannot (:data:`BROKERS` says which, as docs/observability.md does), the live workers with
host, pid, concurrency, messages in hand and memory, and drops the killed worker once its
heartbeat is older than ``QUEUEKIT_WORKER_TIMEOUT``.

On XMPP (a queue has one consumer: a second worker of it gets duplicates, docs/xmpp.md) and
ZeroMQ (a worker takes one message beyond its prefetch while it works on one, so "one in
each of two workers' hands" cannot be arranged) one worker holds one message.
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
from tests.proxy import Proxy
from tests.support import require_broker, wait_until
from tests.workers.harness import lines, run_worker, sqlite_url, start_worker, stop

TIMEOUT = 3.0  # seconds without a heartbeat before a worker counts as dead


@dataclass(frozen=True)
class Tells:
    """The counts a broker tells for the scenario above; ``None``: it cannot (null).
    ``workers``: how many workers hold a message each (1 where a queue has one consumer)."""

    ready: int | None
    delayed: int | None
    in_flight: int | None
    latency: bool
    workers: int = 2


XMPP = (
    "xmpp://queuekit:queuekit@127.0.0.1:5222/?domain=localhost&pubsub=pubsub.localhost"
    "&tls=off&allow_plaintext=1"
)
#: name -> (URL, the port that must answer, what the broker tells); sqlite's URL is a file.
BROKERS = {
    "sqlite": ("", 0, Tells(3, 1, 2, latency=True)),
    "rabbitmq": ("amqp://guest:guest@127.0.0.1:5672/", 5672, Tells(3, None, None, latency=False)),
    "rabbitmq-stomp": ("stomp://guest:guest@127.0.0.1:61613", 61613,
                       Tells(None, 1, None, latency=False)),  # no native delay: the job store
    "activemq": ("stomp://guest:guest@127.0.0.1:61623", 61623,
                 Tells(None, None, None, latency=False)),
    "gearman": ("gearman://127.0.0.1:4730?durable=1", 4730, Tells(3, 1, None, latency=False)),
    "prosody": (XMPP, 5222, Tells(3, 1, None, latency=False, workers=1)),
    "ejabberd": (XMPP.replace(":5222/", ":5322/"), 5322,
                 Tells(3, 1, None, latency=False, workers=1)),
    "zmq": ("zmq://127.0.0.1:5560", 5560, Tells(None, 1, None, latency=False, workers=1)),
}  # fmt: skip


@dataclass
class Setup:
    kind: str
    tells: Tells
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


@pytest.fixture(params=sorted(BROKERS))
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    url, port, tells = BROKERS[request.param]
    if port:
        require_broker(request.param, "127.0.0.1", port)
    else:
        url = sqlite_url(tmp_path / "queues.db")
    made = Setup(request.param, tells, url, f"status-{uuid.uuid4().hex[:10]}", tmp_path,
                 sqlite_url(tmp_path / "jobs.db"))  # fmt: skip
    yield made
    with connect(url, jobstore=made.jobstore) as conn:
        for queue in (made.queue, f"{made.queue}-other"):
            conn.transport.delete(queue)


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
            # And a gated message in the hands of each of two workers on two hosts (one worker
            # where a queue has one consumer; a thread runner keeps beating while work() waits)
            hosts = ["host-a", "host-b"][: setup.tells.workers]
            held = [f"started {n}" for n in range(1, len(hosts) + 1)]
            conn.queue(queue).publish_many([{"n": n} for n in range(1, len(hosts) + 1)])
            for host in hosts:
                started.append(setup.start(host, "GatedQueue", queue, "--prefetch", "1",
                                           "--shutdown-timeout", "30"))  # fmt: skip
            events = setup.tmp / "events.txt"
            wait_until(lambda: sorted(lines(events)) == held, 30,
                       "each worker to start a message")  # fmt: skip
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
        wait_until(lambda: queue_row(setup.snapshot(), queue)["working"] == len(hosts),  # type: ignore[index]
                   30, "the messages in hand")  # fmt: skip
        data = setup.snapshot()

        # Then the queue's counts are the broker's, or null where it cannot count
        row = queue_row(data, queue)
        assert row is not None
        tells = setup.tells
        assert (row["failed"], row["workers"], row["working"]) == (1, len(hosts), len(hosts))
        assert (row["ready"], row["delayed"], row["in_flight"]) == (
            tells.ready, tells.delayed, tells.in_flight)  # fmt: skip
        assert (row["latency"] is not None) == tells.latency
        assert row["error"] is None
        # And the live workers are listed with what they hold
        mine = [w for w in data["workers"] if w["queue"] == queue]
        assert sorted((w["host"], w["pid"]) for w in mine) == [
            (host, process.pid) for host, process in zip(hosts, started, strict=False)]  # fmt: skip
        for worker in mine:
            assert worker["concurrency"] == 1
            assert len(worker["current"]) == 1
            assert worker["rss"] > 0
            assert worker["failed"] == 0
        assert "guest:guest" not in json.dumps(data)  # secrets redacted

        # And the table says "unknown" where the broker cannot count
        [line] = [x for x in setup.status().stdout.splitlines() if x.startswith(f"{queue} ")]
        shown = ["unknown" if n is None else str(n)
                 for n in (tells.ready, tells.delayed, tells.in_flight)]  # fmt: skip
        oldest = line.split()[6] if tells.latency else "unknown"
        count = str(len(hosts))
        assert line.split()[1:] == [*shown, count, "1", oldest, count, "-"]
        assert row["paused"] is False

        # And the killed worker drops out once its heartbeat is older than the timeout
        wait_until(lambda: queue_row(setup.snapshot(), other) is None, TIMEOUT + 15,
                   "the killed worker to drop out")  # fmt: skip
        assert len([w for w in setup.snapshot()["workers"] if w["queue"] == queue]) == len(hosts)
    finally:
        (setup.tmp / "release").touch()
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in started:
            stop(process)


#: Well under the AMQP adapter's default ``reconnect_timeout`` (60 s), which an inspection
#: used to wait out: a status that takes longer than this has hung on a dead broker.
UNDER_RECONNECT_TIMEOUT = 30


@pytest.mark.parametrize("broker", ["rabbitmq", "rabbitmq-stomp"])
def test_status_says_a_broker_that_went_away_is_unreachable_without_waiting_for_it(
    broker: str, tmp_path: Path
) -> None:
    url, port, _ = BROKERS[broker]
    require_broker(broker, "127.0.0.1", port)
    # Given a broker reached through a proxy (default options: the long reconnect_timeout),
    # and the proxy stopped: the broker is gone
    proxy = Proxy(("127.0.0.1", port))
    proxy.stop()
    gone = url.replace(f":{port}", f":{proxy.port}")
    # When worker status asks it
    done = run_worker("status", "--url", gone, "--json", "status-gone", cwd=tmp_path,
                      env={"QUEUEKIT_JOBSTORE": sqlite_url(tmp_path / "jobs.db")},
                      timeout=UNDER_RECONNECT_TIMEOUT)  # fmt: skip
    # Then it answers (no hang) and says the broker could not be reached
    if broker == "rabbitmq":  # an inspection gives up after inspect_timeout: the queue says so
        assert done.returncode == 0, done.stderr
        row = queue_row(json.loads(done.stdout), "status-gone")
        assert row is not None and "no broker reachable" in row["error"]
    else:  # STOMP connects at open, and says at once that no server answered
        assert done.returncode == 1
        assert "no STOMP server answered" in done.stderr
