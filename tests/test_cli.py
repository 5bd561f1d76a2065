"""The ``worker`` command as a user runs it: real processes, real files, exit codes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

import queuekit
from queuekit import EventManager, bridge, connect
from tests.support import wait_until
from tests.workers.harness import (
    child_env,
    lines,
    run_worker,
    sqlite_url,
    start_worker,
    stop,
    wait_for_line,
    worker_command,
)

EXAMPLE = "examples.welcome_mail.queues:EmailQueue"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return sqlite_url(tmp_path / "cli.db")


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    error_lines = result.stderr.strip().splitlines()
    assert len(error_lines) == 1, result.stderr
    assert error_lines[0].startswith("worker: ")
    return error_lines[0]


# -- help -------------------------------------------------------------------------------------


def test_worker_help_explains_the_commands(tmp_path: Path) -> None:
    result = run_worker("--help", cwd=tmp_path)
    assert result.returncode == 0
    for word in ("run", "publish", "failed", "conformance", "QUEUEKIT_URL", "queuekit.toml"):
        assert word in result.stdout


def test_worker_run_help_lists_the_limits(tmp_path: Path) -> None:
    result = run_worker("run", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for option in ("--url", "--queue", "--max-messages", "--max-seconds", "--max-memory"):
        assert option in result.stdout
    assert "module:Class" in result.stdout


def test_worker_run_help_lists_the_supervisor_options_and_the_exit_statuses(
    tmp_path: Path,
) -> None:
    result = run_worker("run", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for text in ("--processes", "--reload", "--limit-exit-code", "exit status:", "gave up"):
        assert text in result.stdout


def test_python_dash_m_queuekit_is_the_same_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "queuekit", "--help"],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("usage: worker")


def test_version_is_the_installed_distributions_one_source_of_truth(tmp_path: Path) -> None:
    result = run_worker("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"worker {queuekit.__version__}\n"
    assert queuekit.__version__ == version("queuekit")
    with (Path(__file__).parents[1] / "pyproject.toml").open("rb") as pyproject:
        assert queuekit.__version__ == tomllib.load(pyproject)["project"]["version"]


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    result = run_worker(cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: worker" in result.stderr


# -- publish and run --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "class_path", ["tests.workers.queues.RecordingQueue", "tests.workers.queues:RecordingQueue"]
)
def test_publish_then_run_processes_the_messages(tmp_path: Path, url: str, class_path: str) -> None:
    ids = []
    for n in range(3):
        published = run_worker("publish", "records", json.dumps({"n": n}), "--url", url,
                               cwd=tmp_path)  # fmt: skip
        assert published.returncode == 0, published.stderr
        ids.append(published.stdout.strip())
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids), ids

    out = tmp_path / "out.txt"
    result = run_worker("run", class_path, "--url", url, "--max-messages", "3", cwd=tmp_path,
                        env={"QK_OUT": str(out)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert lines(out) == ["0", "1", "2"]
    assert "processed 3 message(s) from 'records'" in result.stderr
    with connect(url) as conn:
        assert conn.queue("records").depth() == 0


def test_run_uses_queuekit_url_and_the_queue_option(tmp_path: Path, url: str) -> None:
    env = {"QUEUEKIT_URL": url}
    assert run_worker("publish", "other", '{"n": 5}', cwd=tmp_path, env=env).returncode == 0
    out = tmp_path / "out.txt"
    result = run_worker(
        "run", "tests.workers.queues:RecordingQueue", "--queue", "other", "--max-messages", "1",
        cwd=tmp_path, env={**env, "QK_OUT": str(out)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert lines(out) == ["5"]
    assert not (tmp_path / "queuekit.db").exists()  # the default was not used


def test_publish_options_priority_delay_and_dedup_key(tmp_path: Path, url: str) -> None:
    def publish(payload: dict[str, int], *options: str) -> None:
        result = run_worker("publish", "records", json.dumps(payload), "--url", url, *options,
                            cwd=tmp_path)  # fmt: skip
        assert result.returncode == 0, result.stderr

    publish({"n": 1})
    publish({"n": 2}, "--priority", "9")
    publish({"n": 3}, "--key", "k")
    publish({"n": 4}, "--key", "k")  # dropped: one with key k is pending
    publish({"n": 5}, "--delay", "1 hour")
    publish({"n": 6}, "--at", "2999-01-01T00:00:00+00:00")
    out = tmp_path / "out.txt"
    result = run_worker("run", "tests.workers.queues:RecordingQueue", "--url", url,
                        "--max-messages", "3", cwd=tmp_path,
                        env={"QK_OUT": str(out)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert lines(out) == ["2", "1", "3"]
    with connect(url) as conn:
        assert conn.queue("records").depth() == 0  # nothing ready: the two delayed ones wait
        assert conn.queue("records").purge() == 2


def test_run_stops_by_itself_on_limits_and_says_why_without_v(tmp_path: Path, url: str) -> None:
    limits = {
        "--max-seconds": ("0.2", "stopped: ran 0.2s"),
        "--max-memory": ("1K", "stopped: resident memory reached "),
        "--max-messages": ("0", "stopped: max_messages is 0"),
    }
    for option, (value, says) in limits.items():
        result = run_worker("run", "tests.workers.queues:RecordingQueue", "--url", url,
                            option, value, cwd=tmp_path)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert says in result.stderr
        assert "processed 0 message(s)" in result.stderr


@pytest.mark.parametrize(
    ("verbose", "where"),
    [([], "-"), (["-v"], "before"), (["-v"], "after"), (["--verbose"], "after")],
    ids=["default", "-v before run", "-v after run", "--verbose after run"],
)
def test_verbose_logs_every_message_event_before_or_after_the_command(
    tmp_path: Path, url: str, verbose: list[str], where: str
) -> None:
    # Given a message that fails its first attempt and one that validate() rejects
    def publish(payload: str) -> str:
        result = run_worker("publish", "flaky", payload, "--url", url, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    flaky, rejected = publish('{"n": 1}'), publish('{"no": "n"}')
    # When a worker runs with -v before or after `run`, or without it
    run = ["run", "tests.workers.queues:FlakyQueue", "--url", url, "--max-messages", "3"]
    args = [*verbose, *run] if where == "before" else [*run, *verbose]
    result = run_worker(*args, cwd=tmp_path, env={"QK_OUT": str(tmp_path / "out.txt")})
    assert result.returncode == 0, result.stderr
    assert lines(tmp_path / "out.txt") == ["1"]

    # Then -v logs one line per event, with the attempt and how long it took; retries,
    # failures and the reason the worker stopped are logged at the default level too
    took = r" in \d+\.\dms"
    said = {
        "received 1": rf"message {flaky} received on 'flaky' \(attempt 1\)$",
        "retried": rf"message {flaky} retried on 'flaky' \(attempt 1\){took}: due in 0s "
        r"after RuntimeError\('the first attempt fails'\)$",
        "received 2": rf"message {flaky} received on 'flaky' \(attempt 2\)$",
        "done": rf"message {flaky} done on 'flaky' \(attempt 2\){took}$",
        "failed": rf"message {rejected} failed on 'flaky' \(attempt 1\){took}: "
        r"rejected by validate\(\)$",
        "stopped": r"worker \d+ stopped: processed 3 messages$",
    }
    logged = {name for name, line in said.items() if re.search(line, result.stderr, re.M)}
    always = {"retried", "failed", "stopped"}
    assert logged == (set(said) if verbose else always), result.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_is_accepted_around_a_delegated_command(tmp_path: Path, where: str) -> None:
    command = ["conformance", "memory://verbose", "--only", "round_trip"]
    result = run_worker(*(["-v", *command] if where == "before" else [*command, "-v"]),
                        cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.search(r"^round_trip .* pass", result.stdout, re.M), result.stdout


def test_an_idle_worker_stops_cleanly_on_sigterm(tmp_path: Path, url: str) -> None:
    worker = start_worker("-v", "run", "tests.workers.queues:RecordingQueue", "--url", url,
                          cwd=tmp_path)  # fmt: skip
    try:
        assert worker.stderr is not None
        wait_for_line(worker.stderr, "consuming")
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=20)
    finally:
        stop(worker)
    assert worker.returncode == 0, stderr
    assert "received SIGTERM" in stderr
    assert "processed 0 message(s)" in stderr


def test_sigterm_during_work_finishes_and_acks_that_message(tmp_path: Path, url: str) -> None:
    # Given a worker in the middle of the first of two messages
    with connect(url) as conn:
        conn.queue("gated").publish_many([{"n": 0}, {"n": 1}])
    events, release = tmp_path / "events.txt", tmp_path / "release"
    env = {"QK_EVENTS": str(events), "QK_RELEASE": str(release), "QK_OUT": str(tmp_path / "o")}
    worker = start_worker("run", "tests.workers.queues:GatedQueue", "--url", url,
                          "--prefetch", "1", cwd=tmp_path, env=env)  # fmt: skip
    try:
        wait_until(lambda: lines(events) == ["started 0"], 30, "work() to start")
        # When it gets SIGTERM, and its work() may then finish
        worker.send_signal(signal.SIGTERM)
        release.touch()
        _, stderr = worker.communicate(timeout=30)
    finally:
        stop(worker)
    # Then that message is acked, the other is left for later, and the exit is clean
    assert worker.returncode == 0, stderr
    assert "processed 1 message(s)" in stderr
    assert lines(events) == ["started 0", "done 0"]
    with connect(url) as conn:
        assert conn.queue("gated").depth() == 1


@pytest.mark.parametrize(
    ("class_path", "says"),
    [
        ("tests.workers.nowhere:EmailQueue", "cannot import 'tests.workers.nowhere'"),
        ("tests.workers.queues:Missing", "'Missing' is not found"),
        ("tests.workers.queues.NotAQueue", "not an AbstractQueue subclass"),
        ("tests.workers.queues:_append", "not an AbstractQueue subclass"),
        ("EmailQueue", "is not a class path"),
        ("tests.workers.queues:", "is not a class path"),
    ],
)
def test_a_wrong_class_path_is_one_line_and_exit_2(
    tmp_path: Path, url: str, class_path: str, says: str
) -> None:
    result = run_worker("run", class_path, "--url", url, cwd=tmp_path)
    assert result.returncode == 2
    assert says in one_error_line(result)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["publish", "q", "{not json"], "payload is not JSON"),
        (["failed", "show"], "needs the numeric id"),
        (["failed", "retry", "abc"], "needs the numeric id"),
        (["failed", "show", "999"], "no failed message 999"),
        (["failed", "retry", "7"], "no failed message 7"),
    ],
)
def test_command_line_mistakes_are_one_line_and_exit_2(
    tmp_path: Path, url: str, args: list[str], says: str
) -> None:
    result = run_worker(*args, "--url", url, cwd=tmp_path)
    assert result.returncode == 2
    assert says in one_error_line(result)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["{}", "--delay", "soonish"], "soonish"),
        (["{}", "--at", "notadate"], "notadate"),
        (["{}", "--priority", "300"], "0-255"),
        (["[NaN]"], "JSON"),
    ],
    ids=["delay", "at", "priority", "nan"],
)
def test_a_bad_publish_option_is_one_line_not_a_traceback(
    tmp_path: Path, url: str, args: list[str], says: str
) -> None:
    result = run_worker("publish", "q", *args, "--url", url, cwd=tmp_path)
    assert result.returncode == 2
    assert says in one_error_line(result)


def test_a_bad_size_is_a_usage_error(tmp_path: Path, url: str) -> None:
    result = run_worker("run", "tests.workers.queues:RecordingQueue", "--max-memory", "lots",
                        cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert "not a size: 'lots'" in result.stderr


@pytest.mark.parametrize("command", [("status", "--json", "a", "b"), ("failed", "list")])
def test_a_reader_closing_stdout_early_ends_the_command_quietly(
    tmp_path: Path, url: str, command: tuple[str, ...]
) -> None:
    # Given a pipe whose reading end is gone before the command writes (as `| head -1` is
    # once it has its line)
    with connect(url) as conn:
        conn.jobs.add_failed("picky", b"{}", "test")
    read_end, write_end = os.pipe()
    os.close(read_end)
    # When the command prints to it
    try:
        result = subprocess.run(worker_command(*command, "--url", url), cwd=tmp_path,
                                env=child_env(), stdout=write_end, stderr=subprocess.PIPE,
                                text=True, timeout=60, check=False)  # fmt: skip
    finally:
        os.close(write_end)
    # Then it exits with the status of a process SIGPIPE ended, and says nothing about it
    assert result.returncode == 141, result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr


# -- the failed store from the command line ---------------------------------------------------


def test_failed_list_show_retry_purge_round_trip(tmp_path: Path, url: str) -> None:
    def worker(*args: str) -> subprocess.CompletedProcess[str]:
        result = run_worker(*args, "--url", url, cwd=tmp_path, env={"QK_OUT": str(out)})
        assert result.returncode == 0, result.stderr
        return result

    out = tmp_path / "out.txt"
    message_id = worker("publish", "picky", '{"subject": "no recipient"}').stdout.strip()
    worker("publish", "picky", '{"to": "ada@example.com"}')
    worker("run", "tests.workers.queues:PickyQueue", "--max-messages", "2")
    assert lines(out) == ["ada@example.com"]

    listed = worker("failed", "list")
    [row] = listed.stdout.splitlines()
    failed_id, _when, queue, listed_id, reason = row.split("\t")
    assert (queue, listed_id, reason) == ("picky", message_id, "rejected by validate()")
    assert "1 failed message(s)" in listed.stderr
    assert worker("failed", "list", "--queue", "elsewhere").stdout == ""

    shown = worker("failed", "show", failed_id).stdout
    assert f"message: {message_id}" in shown
    assert "reason: rejected by validate()" in shown
    assert "no recipient" in shown

    assert "1 message(s) back on their queue" in worker("failed", "retry", failed_id).stderr
    assert worker("failed", "list").stdout == ""
    with connect(url) as conn:
        assert conn.queue("picky").depth() == 1

    worker("run", "tests.workers.queues:PickyQueue", "--max-messages", "1")  # rejected again
    assert len(worker("failed", "list").stdout.splitlines()) == 1
    assert "1 failed message(s) removed" in worker("failed", "purge").stderr
    assert worker("failed", "list").stdout == ""


def test_failed_retry_all(tmp_path: Path, url: str) -> None:
    with connect(url) as conn:
        for n in range(3):
            conn.jobs.add_failed("picky", f'{{"bad": {n}}}'.encode(), "test")
    result = run_worker("failed", "retry", "all", "--url", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "3 message(s) back on their queue" in result.stderr
    with connect(url) as conn:
        assert conn.queue("picky").depth() == 3
        assert conn.failed.list() == []


# -- the welcome-mail example -----------------------------------------------------------------


def test_worker_run_on_the_welcome_mail_example(tmp_path: Path, url: str) -> None:
    from examples.welcome_mail.services import User, UserService

    with connect(url) as conn:
        events = EventManager()
        bridge(events, "user.saved", conn.queue("email"),
               to_payload=lambda e: {"to": e.params["email"], "subject": "Welcome"})  # fmt: skip
        users = UserService(events)
        users.save(User(1, "Ada", "ada@example.com"))
        users.save(User(2, "Nobody", "not-an-address"))
        assert conn.queue("email").depth() == 2

    outbox = tmp_path / "outbox.jsonl"
    result = run_worker("run", EXAMPLE, "--url", url, "--max-messages", "2", cwd=tmp_path,
                        env={"WELCOME_OUTBOX": str(outbox)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    [mail] = [json.loads(line) for line in lines(outbox)]
    assert (mail["to"], mail["subject"]) == ("ada@example.com", "Welcome")
    with connect(url) as conn:
        [failed] = conn.failed.list("email")
        assert failed.reason == "rejected by validate()"
        assert b"not-an-address" in failed.body


def test_the_demo_runs_end_to_end(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.welcome_mail.demo"],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "ada@example.com" in result.stdout
    assert "failed store" in result.stdout
    assert (tmp_path / "var" / "outbox.jsonl").exists()
