"""``worker run --processes P`` and ``--reload`` as a user runs them: a real supervisor process
with real children, killed, recycled and stopped; and the configs ``worker deploy`` prints,
the supervisord one run by the real supervisord.

Every wait is on an event: a line in the supervisor's log (its stderr and its children's, in
one file) or in the files the test queue classes write (``tests/workers/queues.py``).
"""

from __future__ import annotations

import configparser
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuekit import connect
from tests.support import require_broker, wait_until
from tests.workers.harness import child_env, lines, run_worker, sqlite_url, worker_command

AMQP = "amqp://guest:guest@127.0.0.1:5672/"
STARTED = re.compile(r"worker (\d+) started: pid (\d+)")


class Supervised:
    """``worker -v run ARGS`` in its own session (so cleanup reaches the children too), its
    output in ``log``."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str]) -> None:
        self.log = cwd / f"supervisor-{uuid.uuid4().hex[:6]}.log"
        with self.log.open("w") as output:
            self.process = subprocess.Popen(
                worker_command("-v", "run", *args),
                cwd=cwd,
                env=child_env(env),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def lines(self) -> list[str]:
        return lines(self.log)

    def count(self, needle: str) -> int:
        return sum(needle in line for line in self.lines())

    def wait_for(self, needle: str, count: int = 1, timeout: float = 60) -> None:
        wait_until(lambda: self.count(needle) >= count or self.process.poll() is not None,
                   timeout, f"{count} line(s) with {needle!r} in {self.log}")  # fmt: skip
        assert self.count(needle) >= count, "\n".join(self.lines())

    def children(self) -> list[tuple[int, int]]:
        """(worker number, pid) of every child started so far, in order."""
        found = (STARTED.search(line) for line in self.lines())
        return [(int(m[1]), int(m[2])) for m in found if m]

    def stop(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill_all(self) -> None:
        """Cleanup: the supervisor and every child, whatever state the test left them in."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)


@pytest.fixture
def supervise(tmp_path: Path) -> Iterator[type[Supervised]]:
    started: list[Supervised] = []

    class Tracked(Supervised):
        def __init__(self, *args: str, cwd: Path = tmp_path, env: dict[str, str]) -> None:
            super().__init__(*args, cwd=cwd, env=env)
            started.append(self)

    yield Tracked
    for supervised in started:
        supervised.kill_all()


@pytest.fixture(params=["sqlite", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "rabbitmq":
        require_broker("rabbitmq", "127.0.0.1", 5672)
        return AMQP
    return sqlite_url(tmp_path / "queues.db", lease="2")


@pytest.fixture
def queue_name(broker_url: str) -> Iterator[str]:
    name = f"super-{uuid.uuid4().hex[:8]}"
    yield name
    with connect(broker_url) as conn:
        conn.transport.delete(name)


def gated_env(tmp_path: Path) -> dict[str, str]:
    return {"QK_EVENTS": str(tmp_path / "events.txt"), "QK_RELEASE": str(tmp_path / "release"),
            "QK_OUT": str(tmp_path / "out.txt")}  # fmt: skip


# -- --processes ---------------------------------------------------------------------------


def test_a_child_killed_with_sigkill_is_replaced_and_its_message_redone(
    tmp_path: Path, broker_url: str, queue_name: str, supervise: type[Supervised]
) -> None:
    # Given two children, each in the middle of one message
    with connect(broker_url) as conn:
        conn.queue(queue_name).publish_many([{"n": 0}, {"n": 1}])
    env = gated_env(tmp_path)
    events = Path(env["QK_EVENTS"])
    supervisor = supervise("tests.workers.queues:GatedQueue", "--url", broker_url,
                           "--queue", queue_name, "--processes", "2", "--prefetch", "1",
                           env=env)  # fmt: skip
    wait_until(lambda: {"started 0", "started 1"} <= set(lines(events)), 60, "both started")
    (number, pid), _ = supervisor.children()

    # When one of them is killed
    os.kill(pid, signal.SIGKILL)

    # Then the supervisor says so and starts another, and the message comes back to be redone
    supervisor.wait_for(f"worker {number} (pid {pid}) was killed by SIGKILL; restarting in")
    wait_until(lambda: len(supervisor.children()) == 3, 60, "a third child")
    wait_until(lambda: len(lines(events)) == 3, 60, "the killed child's message to start again")
    Path(env["QK_RELEASE"]).touch()
    wait_until(lambda: len(lines(Path(env["QK_OUT"]))) == 2, 60, "both messages done")
    assert supervisor.stop() == 0, "\n".join(supervisor.lines())
    assert sorted(lines(Path(env["QK_OUT"]))) == ["0", "1"]
    with connect(broker_url) as conn:
        assert conn.queue(queue_name).depth() == 0


def test_children_of_a_supervisor_killed_with_sigkill_finish_their_message_and_stop(
    tmp_path: Path, supervise: type[Supervised]
) -> None:
    # Given a supervisor whose child is in the middle of a message
    url, queue = sqlite_url(tmp_path / "queues.db", lease="2"), "orphans"
    with connect(url) as conn:
        conn.queue(queue).publish({"n": 0})
    env = gated_env(tmp_path)
    supervisor = supervise("tests.workers.queues:GatedQueue", "--url", url, "--queue", queue,
                           "--processes", "1", env=env)  # fmt: skip
    wait_until(lambda: lines(Path(env["QK_EVENTS"])) == ["started 0"], 60, "the message to start")
    [(_, child)] = supervisor.children()

    # When the supervisor is killed with SIGKILL (it cannot pass a signal on)
    supervisor.process.kill()
    supervisor.process.wait(10)

    # Then its child finishes the message in hand, settles it and exits by itself
    Path(env["QK_RELEASE"]).touch()
    wait_until(lambda: not _alive(child), 30, "the orphaned child to exit")
    assert lines(Path(env["QK_OUT"])) == ["0"]
    with connect(url) as conn:
        assert conn.queue(queue).depth() == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie (reaped by init soon) is not alive
        return stat.read().split(") ")[1][0] != "Z"


def test_max_messages_recycles_the_children_one_at_a_time_while_the_queue_drains(
    tmp_path: Path, supervise: type[Supervised]
) -> None:
    # Given 400 messages that take 10 ms each
    url = sqlite_url(tmp_path / "queues.db")
    with connect(url) as conn:
        conn.queue("paced").publish_many([{"n": n} for n in range(400)])
    out = tmp_path / "out.txt"

    # When two children with --max-messages 100 (and two threads each) work them off
    supervisor = supervise("tests.workers.queues:PacedQueue", "--url", url, "--processes", "2",
                           "--max-messages", "100", "-c", "2",
                           env={"QK_OUT": str(out), "QK_PAUSE": "0.02"})  # fmt: skip
    wait_until(lambda: len(lines(out)) >= 400, 120, "400 messages processed")
    assert supervisor.stop() == 0, "\n".join(supervisor.lines())

    # Then every message ran once, no child ran more than 100, and the children were replaced
    # in turn (the first one's limit was staggered to 50), never both at once
    done = [line.split() for line in lines(out)]
    assert sorted(int(n) for n, _ in done) == list(range(400))
    per_child = {pid: sum(p == pid for _, p in done) for _, pid in done}
    assert max(per_child.values()) <= 100, per_child
    recycled = [int(m[1]) for line in supervisor.lines()
                if (m := re.search(r"worker (\d) \(pid \d+\) reached a limit", line))]  # fmt: skip
    assert len(recycled) >= 3, recycled
    assert recycled[:4] == [1, 2, 1, 2][: len(recycled[:4])], recycled


def test_sigterm_stops_every_child_after_its_message_with_exit_0(
    tmp_path: Path, supervise: type[Supervised]
) -> None:
    # Given two children in the middle of a message each, and two more messages waiting
    url = sqlite_url(tmp_path / "queues.db")
    with connect(url) as conn:
        conn.queue("gated").publish_many([{"n": n} for n in range(4)])
    env = gated_env(tmp_path)
    events = Path(env["QK_EVENTS"])
    supervisor = supervise("tests.workers.queues:GatedQueue", "--url", url, "--processes", "2",
                           "--prefetch", "1", "--shutdown-timeout", "60", env=env)  # fmt: skip
    wait_until(lambda: len(lines(events)) == 2, 60, "two messages started")

    # When the supervisor gets SIGTERM, and the work in hand may then finish
    supervisor.process.send_signal(signal.SIGTERM)
    supervisor.wait_for("sent SIGTERM to the workers")
    Path(env["QK_RELEASE"]).touch()

    # Then both finish and are acked, nothing else starts, nothing is lost, and it exits 0
    assert supervisor.process.wait(60) == 0, "\n".join(supervisor.lines())
    started = [line.split()[1] for line in lines(events) if line.startswith("started")]
    assert sorted(lines(events)) == sorted([f"done {n}" for n in started] +
                                           [f"started {n}" for n in started])  # fmt: skip
    assert sorted(lines(Path(env["QK_OUT"]))) == sorted(started)
    with connect(url) as conn:
        assert conn.queue("gated").depth() == 2  # the two that never started


def test_a_child_over_the_workers_limit_waits_and_is_not_a_crash(
    tmp_path: Path, supervise: type[Supervised]
) -> None:
    # Given a queue with a workers limit of 2, and a supervisor of 3 children
    supervisor = supervise("tests.workers.queues:LimitedQueue", "--processes", "3",
                           "--url", sqlite_url(tmp_path / "q.db"), env={})  # fmt: skip

    # Then the one over the limit is started again later, and the supervisor goes on
    supervisor.wait_for("the queue has its workers limit of live workers; trying again in 10s")
    assert supervisor.process.poll() is None
    assert supervisor.stop() == 0, "\n".join(supervisor.lines())


def test_a_second_sigint_kills_the_children_and_their_messages_come_back(
    tmp_path: Path, supervise: type[Supervised]
) -> None:
    # Given two children in the middle of a message each
    url = sqlite_url(tmp_path / "queues.db", lease="1")
    with connect(url) as conn:
        conn.queue("gated").publish_many([{"n": 0}, {"n": 1}])
    env = gated_env(tmp_path)
    events = Path(env["QK_EVENTS"])
    supervisor = supervise("tests.workers.queues:GatedQueue", "--url", url, "--processes", "2",
                           "--prefetch", "1", env=env)  # fmt: skip
    wait_until(lambda: len(lines(events)) == 2, 60, "two messages started")

    # When the supervisor gets SIGINT twice
    supervisor.process.send_signal(signal.SIGINT)
    supervisor.wait_for("sent SIGTERM to the workers")
    supervisor.process.send_signal(signal.SIGINT)

    # Then it kills them and exits 130, and a fresh worker gets both messages again
    assert supervisor.process.wait(60) == 130, "\n".join(supervisor.lines())
    assert "second SIGINT: killing the workers" in "\n".join(supervisor.lines())
    Path(env["QK_RELEASE"]).touch()
    again = run_worker("run", "tests.workers.queues:GatedQueue", "--url", url,
                       "--max-messages", "2", cwd=tmp_path, env=env)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert sorted(lines(Path(env["QK_OUT"]))) == ["0", "1"]


def test_a_child_that_cannot_stay_up_ends_the_supervisor_with_status_4(
    tmp_path: Path, supervise: type[Supervised]
) -> None:
    supervisor = supervise("tests.workers.unimportable:AnyQueue", "--processes", "2",
                           "--url", sqlite_url(tmp_path / "q.db"), env={})  # fmt: skip
    assert supervisor.process.wait(120) == 4
    log = "\n".join(supervisor.lines())
    assert "RuntimeError: this module fails to import, on purpose" in log
    assert "restarting in 0.1s (crash 1 of 4 allowed within 60s)" in log
    assert "5 crashes within 60s, giving up (exit 4)" in log


def test_a_class_that_is_not_found_ends_the_supervisor_with_status_2(
    tmp_path: Path, supervise: type[Supervised]
) -> None:
    supervisor = supervise("tests.workers.queues:Missing", "--processes", "2",
                           "--url", sqlite_url(tmp_path / "q.db"), env={})  # fmt: skip
    assert supervisor.process.wait(120) == 2
    log = "\n".join(supervisor.lines())
    assert "'Missing' is not found" in log
    assert "bad configuration" in log


# -- --reload ------------------------------------------------------------------------------

VERSIONED = """
import os
from queuekit import AbstractQueue

VERSION = {version}

class VersionQueue(AbstractQueue):
    queue = "versions"

    def work(self, message):
        with open(os.environ["QK_OUT"], "a") as out:
            out.write(f"v{{VERSION}} {{message.payload['n']}}\\n")
"""


def test_reload_restarts_the_children_when_a_file_of_the_package_changes(
    tmp_path: Path, supervise: type[Supervised]
) -> None:
    # Given a worker with --reload on a project package in its working directory
    package = tmp_path / "reloadapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "jobs.py").write_text(VERSIONED.format(version=1))
    url, out = sqlite_url(tmp_path / "q.db"), tmp_path / "out.txt"
    supervisor = supervise("reloadapp.jobs:VersionQueue", "--url", url, "--reload",
                           env={"QK_OUT": str(out)})  # fmt: skip
    with connect(url) as conn:
        conn.queue("versions").publish({"n": 0})
        wait_until(lambda: lines(out) == ["v1 0"], 60, "version 1 at work")

        # When its code changes
        (package / "jobs.py").write_text(VERSIONED.format(version=2))
        stat = (package / "jobs.py").stat()
        os.utime(package / "jobs.py", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

        # Then the child is replaced, and the next message runs the new code
        supervisor.wait_for("jobs.py changed: restarting the workers")
        wait_until(lambda: len(supervisor.children()) == 2, 60, "a new child")
        conn.queue("versions").publish({"n": 1})
        wait_until(lambda: lines(out) == ["v1 0", "v2 1"], 60, "version 2 at work")
    assert supervisor.stop() == 0, "\n".join(supervisor.lines())


# -- worker deploy -------------------------------------------------------------------------


def test_deploy_systemd_prints_a_unit_with_the_stop_timeout(tmp_path: Path) -> None:
    result = run_worker("deploy", "systemd", "tests.workers.queues:RecordingQueue",
                        "--processes", "2", "--max-memory", "300M", "--url", "sqlite:///x.db",
                        cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    unit = configparser.ConfigParser(interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(result.stdout)
    service = unit["Service"]
    command = service["ExecStart"].split()
    assert Path(command[0]).is_absolute() and command[0].endswith("/worker")
    assert command[1:] == ["run", "tests.workers.queues:RecordingQueue", "--processes", "2",
                           "--max-memory", "300M", "--shutdown-timeout", "30"]  # fmt: skip
    assert service["Environment"] == "QUEUEKIT_URL=sqlite:///x.db"
    assert service["WorkingDirectory"] == str(tmp_path)
    assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed"
    assert service["TimeoutStopSec"] == "40"  # the shutdown timeout (default 30 s) + 10
    assert service["Restart"] == "always" and service["RestartPreventExitStatus"] == "2"


def test_deploy_supervisor_waits_the_shutdown_timeout_and_escapes_percent(tmp_path: Path) -> None:
    result = run_worker("deploy", "supervisor", "app.jobs:EmailQueue", "--processes", "3",
                        "--shutdown-timeout", "5", "--url", "amqp://u:p%40ss@host/", "--queue",
                        "mail", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = result.stdout
    assert "[program:queuekit-emailqueue]" in config
    assert re.search(r"^command=/\S+/worker run app.jobs:EmailQueue --shutdown-timeout 5 "
                     r"--queue mail$", config, re.MULTILINE), config  # fmt: skip
    assert "numprocs=3" in config and "stopwaitsecs=15" in config and "stopsignal=TERM" in config
    assert 'environment=QUEUEKIT_URL="amqp://u:p%%40ss@host/"' in config  # supervisord's %%
    assert "password" in config.splitlines()[1]  # a comment says the file holds one


def test_deploy_supervisor_refuses_one_metrics_port_for_several_programs(tmp_path: Path) -> None:
    result = run_worker("deploy", "supervisor", "app.jobs:EmailQueue", "--processes", "2",
                        "--metrics-port", "9191", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert "would all serve --metrics-port 9191: deploy with systemd" in result.stderr
    single = run_worker("deploy", "supervisor", "app.jobs:EmailQueue", "--metrics-port", "9191",
                        cwd=tmp_path)  # fmt: skip
    assert single.returncode == 0, single.stderr


def test_deploy_supervisor_runs_under_supervisord_and_stops_gracefully(
    tmp_path: Path,
) -> None:
    # Given the printed program section in a supervisord config, and two messages waiting
    url = sqlite_url(tmp_path / "queues.db")
    logs = tmp_path / "logs"
    logs.mkdir()
    printed = run_worker("deploy", "supervisor", "tests.workers.queues:GatedQueue",
                         "--processes", "2", "--prefetch", "1", "--url", url, "--name", "gated",
                         "--log-dir", str(logs), cwd=tmp_path)  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    assert "numprocs=2" in printed.stdout and "stopwaitsecs=40" in printed.stdout
    socket = tmp_path / "supervisor.sock"
    config = tmp_path / "supervisord.conf"
    config.write_text(
        f"[supervisord]\nlogfile={tmp_path}/supervisord.log\npidfile={tmp_path}/supervisord.pid\n"
        f"childlogdir={logs}\n\n[unix_http_server]\nfile={socket}\n\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
        f"[supervisorctl]\nserverurl=unix://{socket}\n\n{printed.stdout}"
    )
    with connect(url) as conn:
        conn.queue("gated").publish_many([{"n": 0}, {"n": 1}])
    env = gated_env(tmp_path)
    events, out = Path(env["QK_EVENTS"]), Path(env["QK_OUT"])
    bin_dir = Path(sys.executable).parent

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(bin_dir / "supervisorctl"), "-c", str(config), *args],
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip

    supervisord = subprocess.Popen([str(bin_dir / "supervisord"), "-n", "-c", str(config)],
                                   cwd=tmp_path, env=child_env(env))  # fmt: skip
    try:
        # When both supervised workers are in the middle of a message and we stop them
        wait_until(lambda: len(lines(events)) == 2, 60, "both workers at work")
        stop = [str(bin_dir / "supervisorctl"), "-c", str(config), "stop", "gated:*"]
        stopping = subprocess.Popen(stop, stdout=subprocess.PIPE, text=True)
        wait_until(lambda: ctl("status").stdout.count("STOPPING") == 2, 60, "both stopping")
        Path(env["QK_RELEASE"]).touch()
        stopped, _ = stopping.communicate(timeout=60)

        # Then they finish what they hold, ack it and exit 0 (no SIGKILL), and start again
        assert stopping.returncode == 0, stopped
        assert sorted(lines(out)) == ["0", "1"]
        status = ctl("status").stdout
        assert status.count("STOPPED") == 2, status
        with connect(url) as conn:
            assert conn.queue("gated").depth() == 0
            assert ctl("start", "gated:*").returncode == 0
            conn.queue("gated").publish({"n": 2})
            wait_until(lambda: "2" in lines(out), 60, "the restarted workers at work")
        log = (tmp_path / "supervisord.log").read_text()
        assert "exit status 0" in log and "SIGKILL" not in log, log
    finally:
        ctl("shutdown")
        supervisord.wait(60)
