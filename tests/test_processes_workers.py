"""Process managers with real ``worker run`` processes, on SQLite, RabbitMQ and ActiveMQ
(STOMP): two workers at ``-c 8`` (one of them killed with SIGKILL mid-run, so what it held
comes back) change each instance once per event and schedule once per step; the
order-tracking example runs end to end, also with every event sent twice and two workers of
each class, and asks its provider nothing after an order completed; ``worker processes
list`` shows the instances.

The brokers are started by ``scripts/brokers up rabbitmq activemq``; without one a test
skips by hand and fails under ``CI``. The queues a test makes there are deleted afterwards.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuekit import Connection, Unsupported, connect
from queuekit.features.processes import event_message
from tests.support import require_broker, wait_until
from tests.workers.harness import child_env, run_worker, sqlite_url, start_worker, stop
from tests.workers.processes import Bump, Started

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/"
ACTIVEMQ = "stomp://guest:guest@127.0.0.1:61623"


@pytest.fixture(params=["sqlite", "rabbitmq", "activemq"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "rabbitmq":
        require_broker("rabbitmq", "127.0.0.1", 5672)
        return RABBITMQ
    if request.param == "activemq":
        require_broker("activemq", "127.0.0.1", 61623)
        return ACTIVEMQ
    return sqlite_url(tmp_path / "queues.db", lease="2")  # a killed worker's comes back soon


@pytest.fixture
def queue(url: str) -> Iterator[str]:
    name = f"counter-{uuid.uuid4().hex[:8]}"
    yield name
    with connect(url) as conn:
        conn.transport.delete(name)


def seen_all(conn: Connection, keys: list[str], bumps: int) -> bool:
    found = {i.key: i for i in conn.jobs.processes("Counter")}
    return all(k in found and len(found[k].state["seen"]) >= bumps for k in keys) and all(
        found[k].state["ticks"] >= 2 * (bumps // 10) for k in keys
    )


def drained(conn: Connection, queue: str) -> bool:
    """Nothing ready in ``queue``; STOMP cannot count a queue, and there the exact
    versions asserted afterwards say whether anything ran twice."""
    try:
        return conn.queue(queue).depth() == 0
    except Unsupported:
        return True


def test_two_workers_at_c8_with_a_kill_change_each_instance_once(
    url: str, queue: str, tmp_path: Path
) -> None:
    keys, bumps = [f"o-{k}" for k in range(4)], 60
    worker = ("run", "tests.workers.processes:Counter", "--url", url, "--queue", queue, "-c", "8")
    env = {"COUNTER_PAUSE": "0.02"}  # so the kill lands while work is in hand
    first = start_worker(*worker, cwd=tmp_path, env=env, log=tmp_path / "first.log")
    second = start_worker(*worker, cwd=tmp_path, env=env, log=tmp_path / "second.log")
    replacement = None
    try:
        with connect(url) as conn:
            for key in keys:  # an instance must exist before the events that move it on
                name, payload = event_message(Started(key))
                conn.queue(queue).publish(payload, name=name)
            wait_until(lambda: len(conn.jobs.processes("Counter")) == 4, timeout=30,
                       what="four instances")  # fmt: skip
            name = event_message(Bump("", 0))[0]
            conn.queue(queue).publish_many(
                [{"key": k, "n": n} for n in range(1, bumps + 1) for k in keys], name=name
            )
            wait_until(lambda: sum(len(i.state["seen"]) for i in conn.jobs.processes()) >= 20,
                       timeout=30, what="work under way")  # fmt: skip
            first.send_signal(signal.SIGKILL)  # what it held comes back: seen, or not yet
            replacement = start_worker(*worker, cwd=tmp_path, env=env,
                                       log=tmp_path / "third.log")  # fmt: skip
            wait_until(lambda: seen_all(conn, keys, bumps), timeout=90, what="every bump, tick")
            wait_until(lambda: conn.jobs.next_due() is None and drained(conn, queue),
                       timeout=30, what="everything to settle")  # fmt: skip
            instances = conn.jobs.processes("Counter")
            assert conn.failed.list() == []
    finally:
        for process in (first, second, replacement):
            if process is not None:
                process.send_signal(signal.SIGTERM)
                stop(process)
    for done in instances:
        assert sorted(done.state["seen"]) == list(range(1, bumps + 1)), done.key
        assert done.state["ticks"] == 2 * (bumps // 10), done.key  # each tick once
        assert done.version == 1 + bumps + 2 * (bumps // 10), done.key  # one step per message


@pytest.mark.parametrize(
    "options", [[], ["--twice", "--workers", "2"], ["--kill"]], ids=["once", "twice", "killed"]
)
def test_the_order_tracking_example_runs_end_to_end(
    url: str, options: list[str], tmp_path: Path
) -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "examples.order_tracking.demo", *options],
        cwd=tmp_path, env=child_env({"QUEUEKIT_URL": url}), capture_output=True, text=True,
        timeout=180, check=False,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout + demo.stderr
    steps = ("o-1 stalled", "o-1 shipped", "o-2 canceled", "printer-7 retired", "dropped",
             "nothing left to run", "timeline", "provider asked about o-1: shipped")  # fmt: skip
    for step in steps:
        assert step in demo.stdout
    assert "failed store" not in demo.stdout and "after completion" not in demo.stdout
    log = (tmp_path / "var/partner.json.log").read_text(encoding="utf-8")
    asked = [json.loads(line) for line in log.splitlines()]
    answers = [a["answer"] for a in asked if a["order"] == "o-1"]
    assert answers[-1] == "shipped" and answers.count("shipped") == 1  # one chain of checks
    with connect(url) as conn:
        instances = {i.key: i for i in conn.jobs.processes()}
    assert {k: i.completed for k, i in instances.items()} == {
        "o-1": True, "o-2": True, "printer-7": True,
    }  # fmt: skip
    o1 = instances["o-1"].state
    assert o1["status"] == "shipped" and o1["lines"] == {"front": "packaged", "back": "packaged"}
    assert o1["checks"] >= 3  # two or more that found no change, then "shipped"
    health = instances["printer-7"]
    assert health.version == 1 + health.state["checks"] + 1  # each check once: no doubles
    listed = run_worker("processes", "list", "OrderTracking", "--state", "completed",
                        "--url", url, "--json", cwd=tmp_path)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["key"], r["state"]) for r in rows] == [("o-1", "completed"), ("o-2", "completed")]
    assert run_worker("processes", "list", "--state", "running", "--url", url,
                      cwd=tmp_path).stdout.strip() == "no process instances"  # fmt: skip


def test_processes_list_shows_the_next_timeout(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "q.db")
    with connect(url) as conn:
        name, payload = event_message(Bump("o-1", 10))
        conn.queue("counter").publish({"key": "o-1"}, name=event_message(Started(""))[0])
        conn.queue("counter").publish(payload, name=name)
    env = {"COUNTER_TICK_DELAY": "3600"}
    done = run_worker("run", "tests.workers.processes:Counter", "--url", url,
                      "--max-messages", "3", cwd=tmp_path, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr  # started, bump, and the tick due now
    listed = run_worker("processes", "list", "Counter", "--url", url, cwd=tmp_path)
    header, row = listed.stdout.splitlines()
    assert header.split() == ["manager", "key", "state", "version", "updated", "next",
                              "timeout", "data"]  # fmt: skip
    assert row.split()[:4] == ["Counter", "o-1", "running", "3"]
    assert re.search(r"\(in (59\.\d|60\.0)m\)", row), row
    assert '{"seen":[10],"ticks":1}' in row


def test_a_worker_killed_between_commit_and_ack_does_not_count_twice(
    url: str, queue: str, tmp_path: Path
) -> None:
    env = {"QK_MARK": str(tmp_path / "killed")}
    worker = ("run", "tests.workers.processes:KilledAfterCommit", "--url", url,
              "--queue", queue)  # fmt: skip
    with connect(url) as conn:
        for event in (Started("o-1"), Bump("o-1", 10)):
            name, payload = event_message(event)
            conn.queue(queue).publish(payload, name=name)
        killed = run_worker(*worker, cwd=tmp_path, env=env)
        assert killed.returncode == -signal.SIGKILL and (tmp_path / "killed").exists()
        [before] = conn.jobs.processes("KilledAfterCommit")
        assert before.state == {"seen": [10], "ticks": 0} and before.version == 2  # committed
        # the bump again (redelivered, found handled), then the two ticks
        again = run_worker(*worker, "--max-messages", "3", cwd=tmp_path, env=env)
        assert again.returncode == 0, again.stderr
        [after] = conn.jobs.processes("KilledAfterCommit")
    assert after.state == {"seen": [10], "ticks": 2} and after.version == 4
