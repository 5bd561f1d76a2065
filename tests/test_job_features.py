"""The job features on every landed broker, with real ``worker run`` processes.

Dedup (while pending, and "ever" across a worker restart), serial groups kept in order by
three workers, the failed store and ``worker failed retry`` round trip, priority ranges (kept
where the capability is declared, on brokers through one queue per band; refused with a clear
error elsewhere), a delayed job with its record, request/response (``call``, ``gather``) and
a recurring job. Each broker is started by
``scripts/brokers up``; without it a test skips by hand and fails under ``CI``.

Nothing names a job store: the producer (this process, in an ``app`` directory) and the
workers (in a ``worker`` directory) meet on the broker's default store by construction,
as a web app and a supervisor-started worker do. The ``default`` case names no broker
either (the per-user SQLite default). A worker pointed at another store refuses what
depends on the producer's, loudly, and loses nothing.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from queuekit import Connection, Unsupported, connect
from tests.support import publish_undecodable, require_broker, wait_until
from tests.workers.harness import lines, run_worker, sqlite_url, start_worker

XMPP = (
    "xmpp://queuekit:queuekit@127.0.0.1:5222/?domain=localhost&pubsub=pubsub.localhost"
    "&tls=off&allow_plaintext=1"
)


@dataclass(frozen=True)
class Broker:
    name: str  # as scripts/brokers knows it
    port: int
    url: str
    competing: bool = True  # each message to one of many workers

    def __str__(self) -> str:
        return f"{self.name}:{self.port}"


BROKERS = [
    Broker("rabbitmq", 5672, "amqp://guest:guest@127.0.0.1:5672/"),
    Broker("rabbitmq-stomp", 61613, "stomp://guest:guest@127.0.0.1:61613"),
    Broker("activemq", 61623, "stomp://guest:guest@127.0.0.1:61623"),
    Broker("gearman", 4730, "gearman://127.0.0.1:4730?durable=1"),
    Broker("gearman", 4731, "gearman://127.0.0.1:4731"),
    Broker("prosody", 5222, XMPP, competing=False),
    Broker("ejabberd", 5322, XMPP.replace(":5222/", ":5322/"), competing=False),
    Broker("zmq", 5560, "zmq://127.0.0.1:5560"),
]


@dataclass
class Setup:
    url: str | None  # None: nothing configured, the per-user SQLite default
    queue: str
    tmp: Path
    env: dict[str, str]
    competing: bool

    @property
    def worker_dir(self) -> Path:
        """Where workers start: not the producer's directory (that is ``tmp / "app"``)."""
        return self.tmp / "worker"

    def url_args(self) -> list[str]:
        return [] if self.url is None else ["--url", self.url]

    def connect(self) -> Connection:
        return connect(self.url)

    def run(
        self, cls: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_worker("run", f"tests.workers.queues.{cls}", *self.url_args(),
                          "--queue", self.queue, *args, cwd=self.worker_dir,
                          env=env or self.env)  # fmt: skip

    def start(self, cls: str, *args: str) -> subprocess.Popen[str]:
        return start_worker("run", f"tests.workers.queues.{cls}", *self.url_args(),
                            "--queue", self.queue, *args, cwd=self.worker_dir,
                            env=self.env)  # fmt: skip

    def admin(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``worker ARGS`` run from the producer's directory (``failed list``, ...)."""
        return run_worker(*args, *self.url_args(), cwd=Path.cwd(), env=env or self.env)


@pytest.fixture(
    params=["default", None, *BROKERS],
    ids=lambda b: "sqlite" if b is None else str(b),
)
def setup(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Setup]:
    broker: Broker | str | None = request.param
    url: str | None
    if broker == "default":
        url = None
    elif broker is None:
        url = sqlite_url(tmp_path / "queues.db", lease="2")
    else:
        assert isinstance(broker, Broker)
        require_broker(broker.name, "127.0.0.1", broker.port)
        url = broker.url
    for directory in ("app", "worker"):
        (tmp_path / directory).mkdir()
    monkeypatch.chdir(tmp_path / "app")  # the producer's directory; workers start elsewhere
    for name in ("QUEUEKIT_URL", "QUEUEKIT_JOBSTORE", "QUEUEKIT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    env = {"QK_OUT": str(tmp_path / "out.txt"), "QK_FIXED": str(tmp_path / "fixed")}
    competing = not isinstance(broker, Broker) or broker.competing
    setup = Setup(url, f"features-{uuid.uuid4().hex[:10]}", tmp_path, env, competing)
    yield setup
    with setup.connect() as conn:
        conn.transport.delete(setup.queue)


def out(setup: Setup) -> list[str]:
    return lines(Path(setup.env["QK_OUT"]))


def test_keys_hold_while_pending_and_for_ever_across_worker_restarts(setup: Setup) -> None:
    with setup.connect() as conn:
        queue = conn.queue(setup.queue)
        try:
            queue.publish({"n": 1}, key="pending-1")
        except Unsupported as exc:  # ZeroMQ: a lost message would hold its key for ever
            assert "while pending" in str(exc)
        else:
            queue.publish({"n": 2}, key="pending-1")
        queue.publish({"n": 3}, key="welcome-1", dedup="ever")
        queue.publish({"n": 4}, key="welcome-1", dedup="ever")
    expected = ["3"] if setup.url and setup.url.startswith("zmq") else ["1", "3"]
    done = setup.run("RecordingQueue", "--max-messages", str(len(expected)), "--max-seconds", "60")
    assert done.returncode == 0, done.stderr
    assert sorted(out(setup)) == expected
    with setup.connect() as conn:  # a new publisher, after the first worker exited
        conn.queue(setup.queue).publish({"n": 5}, key="welcome-1", dedup="ever")
        conn.queue(setup.queue).publish({"n": 6}, key="welcome-2", dedup="ever")
        again = [] if setup.url and setup.url.startswith("zmq") else ["7"]
        if again:  # the worker freed the pending key in the store the publisher holds it in
            conn.queue(setup.queue).publish({"n": 7}, key="pending-1")
    done = setup.run("RecordingQueue", "--max-messages", str(1 + len(again)),
                     "--max-seconds", "60")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(out(setup)) == sorted([*expected, "6", *again])


def test_serial_groups_keep_order_with_three_workers(setup: Setup) -> None:
    with setup.connect() as conn:
        queue = conn.queue(setup.queue)
        try:
            for n in range(6):
                for group in ("a", "b", "c"):
                    queue.publish([group, n], group=group)
        except Unsupported as exc:  # ZeroMQ: a lost head would stop its group for ever
            assert "serial groups" in str(exc)
            return
    assert_groups_run_in_order(setup)


def assert_groups_run_in_order(setup: Setup, *worker_args: str) -> None:
    """Three SerialQueue workers (one where consumers do not compete) run the 18 messages
    of groups a, b and c published above: each group's one at a time, in publish order."""
    workers = [setup.start("SerialQueue", *worker_args)
               for _ in range(3 if setup.competing else 1)]  # fmt: skip
    try:
        wait_until(lambda: len(out(setup)) >= 36, 120, "18 grouped messages to run")
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            _, errors = worker.communicate(timeout=60)
            assert worker.returncode == 0, errors
    events = out(setup)
    for group in ("a", "b", "c"):
        mine = [e.split()[0] + " " + e.split()[2] for e in events if e.split()[1] == group]
        assert mine == [f"{edge} {n}" for n in range(6) for edge in ("start", "end")], mine


def test_a_grouped_message_that_does_not_decode_does_not_stall_its_group(setup: Setup) -> None:
    # Given a group whose head a newer producer wrote (the worker cannot decode it)
    with setup.connect() as conn:
        try:
            bad = publish_undecodable(conn, setup.queue, "g")
        except Unsupported as exc:  # ZeroMQ: a lost head would stop its group for ever
            assert "serial groups" in str(exc)
            return
        conn.queue(setup.queue).publish({"n": 2}, group="g")
    # When a worker process takes the group's messages
    done = setup.run("RecordingQueue", "--max-messages", "2", "--max-seconds", "60")
    # Then the bad one is in the failed store under its id, and the next one ran
    assert done.returncode == 0, done.stderr
    assert out(setup) == ["2"]
    with setup.connect() as conn:
        [failed] = conn.failed.list(setup.queue)
    assert failed.message_id == bad, failed
    assert "unknown metadata field" in failed.reason


def test_the_failed_store_and_worker_failed_retry_round_trip(setup: Setup) -> None:
    with setup.connect() as conn:
        conn.queue(setup.queue).publish({"n": 7})
    done = setup.run("BrokenUntilFixedQueue", "--max-messages", "1", "--max-seconds", "60")
    assert done.returncode == 0, done.stderr
    listed = setup.admin("failed", "list", "--queue", setup.queue)
    assert "permanent error: not fixed yet" in listed.stdout, listed.stderr
    Path(setup.env["QK_FIXED"]).touch()
    retried = setup.admin("failed", "retry", "all", "--queue", setup.queue)
    assert retried.returncode == 0, retried.stderr
    done = setup.run("BrokenUntilFixedQueue", "--max-messages", "1", "--max-seconds", "60")
    assert done.returncode == 0, done.stderr
    assert out(setup) == ["7"]
    with setup.connect() as conn:
        assert conn.failed.list(setup.queue) == []


def test_a_priority_range_is_kept_or_refused(setup: Setup) -> None:
    with setup.connect() as conn:
        caps = conn.transport.capabilities
        if caps.priority_range:
            for n, priority in enumerate((1, 60, 2, 90)):
                conn.queue(setup.queue).publish({"n": n}, priority=priority)
    done = setup.run("RecordingQueue", "-p", "50-", "--max-seconds", "2")
    if not caps.priority_range:
        assert done.returncode != 0
        assert "does not support priority ranges" in done.stderr, done.stderr
        assert "declares 'priority_range'" in done.stderr, done.stderr
        return
    assert done.returncode == 0, done.stderr
    assert out(setup) == ["3", "1"]
    # the rest waited for a worker without a range
    done = setup.run("RecordingQueue", "--max-messages", "2", "--max-seconds", "60")
    assert done.returncode == 0, done.stderr
    assert sorted(out(setup)[2:]) == ["0", "2"]
    if caps.priority_bands is not None:  # a range must fall on the bands the URL sets
        cut = setup.run("RecordingQueue", "-p", "60-", "--max-seconds", "2")
        assert cut.returncode != 0 and "priority_bands=50,60,100" in cut.stderr, cut.stderr


def test_a_delayed_recorded_job_runs_when_due_and_its_record_says_so(setup: Setup) -> None:
    with setup.connect() as conn:
        published = time.time()
        job_id = conn.queue(setup.queue).publish({"n": 8}, delay=1, record=True)
        record = conn.job(job_id)
        assert record is not None and record.state == "waiting"
    done = setup.run("RecordingQueue", "--max-messages", "1", "--max-seconds", "60")
    assert done.returncode == 0, done.stderr
    assert out(setup) == ["8"]
    with setup.connect() as conn:
        record = conn.job(job_id)
    assert record is not None and (record.state, record.attempts) == ("done", 1)
    assert record.started_at is not None and record.started_at >= published + 1 - 0.05


def test_call_and_gather_get_the_worker_s_replies(setup: Setup) -> None:
    worker = setup.start("DoublingQueue")
    try:
        with setup.connect() as conn:
            queue = conn.queue(setup.queue)
            assert queue.call({"n": 21}, timeout=60) == {"doubled": 42}
            replies = queue.gather([{"n": 1}, {"n": -1}, {"n": 3}], timeout=60)
    finally:
        worker.terminate()
        _, errors = worker.communicate(timeout=60)
    assert worker.returncode == 0, errors
    assert [r.value if r and r.ok else (r and r.error) for r in replies] == [
        {"doubled": 2},
        "permanent error: -1 is negative",
        {"doubled": 6},
    ]


def test_a_recurring_job_is_fired_by_a_worker_of_its_queue(setup: Setup) -> None:
    with setup.connect() as conn:
        conn.schedule(f"digest-{setup.queue}", setup.queue, {"n": 9}, every="1 hour")
    done = setup.run("RecordingQueue", "--max-messages", "1", "--max-seconds", "60")
    assert done.returncode == 0, done.stderr
    assert out(setup) == ["9"]
    with setup.connect() as conn:
        [schedule] = conn.schedules()
        assert schedule.next_run > time.time() + 3000  # moved on: the next run is in an hour


def test_a_worker_on_another_job_store_refuses_what_depends_on_it_and_loses_nothing(
    setup: Setup,
) -> None:
    # Given messages registered in the producer's store (a record, an "ever" key, a group)
    with setup.connect() as conn:
        queue = conn.queue(setup.queue)
        ids = [queue.publish({"n": 1}, record=True),
               queue.publish({"n": 2}, key="welcome-2", dedup="ever")]  # fmt: skip
        with contextlib.suppress(Unsupported):  # ZeroMQ refuses groups
            ids.append(queue.publish({"n": 3}, group="g"))
        queue.publish({"n": 4})  # needs no store
    # When a worker pointed at another store works the queue
    other = {**setup.env, "QUEUEKIT_JOBSTORE": sqlite_url(setup.tmp / "other-jobs.db")}
    done = setup.run("RecordingQueue", "--max-messages", str(len(ids) + 1),
                     "--max-seconds", "60", env=other)  # fmt: skip
    # Then only the plain one runs; the others wait in its failed store, and both the
    # worker's log and the failed store say why and which setting to fix
    assert done.returncode == 0, done.stderr
    assert out(setup) == ["4"]
    assert done.stderr.count("QUEUEKIT_JOBSTORE") == len(ids), done.stderr
    listed = setup.admin("failed", "list", "--queue", setup.queue, env=other)
    assert listed.stdout.count("registered in job store") == len(ids), listed.stdout
    assert sorted(line.split("\t")[3] for line in listed.stdout.splitlines()) == sorted(ids)
    # When they are retried from that store, Then they run there: nothing was lost
    retried = setup.admin("failed", "retry", "all", "--queue", setup.queue, env=other)
    assert retried.returncode == 0, retried.stderr
    done = setup.run("RecordingQueue", "--max-messages", str(len(ids)), "--max-seconds", "60",
                     env=other)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(out(setup)) == sorted(["4", *(str(n) for n in range(1, len(ids) + 1))])


def test_the_matrix_covers_every_server_broker() -> None:
    scripted = subprocess.run(
        ["bash", "scripts/brokers", "list"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    covered = {b.name for b in BROKERS} | {"sqlite"}
    # The same servers again (RabbitMQ over TLS, as a quorum-queue cluster): conformance runs
    # on them, and tests/test_tls.py and tests/test_amqp_cluster.py; chromium is no broker.
    elsewhere = {"rabbitmq-tls", "rabbitmq-cluster", "chromium"}
    assert set(scripted) <= covered | elsewhere, set(scripted) - covered - elsewhere
