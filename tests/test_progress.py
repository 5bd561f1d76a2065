"""Long commands show progress: ``worker publish --file`` and ``worker failed retry all``.

Given a real ``worker`` process whose stderr is a pipe, progress is plain lines and stdout
carries only the message ids; given one whose stderr is a terminal (a pty), it is rich's
live bar, and stdout (a pipe) still carries only the ids. ``publish --file`` sends a
JSON-lines file in batches, refuses a file with a malformed line before sending anything,
and after a refused line or a failed batch says exactly which lines the broker holds, which
it may hold and which were never sent.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuekit import Message, connect
from tests.support import require_broker
from tests.workers.harness import child_env, run_worker, sqlite_url, worker_command

AMQP = "amqp://guest:guest@127.0.0.1:5672/"
BAR = "\N{BOX DRAWINGS HEAVY HORIZONTAL}"  # what rich draws a bar with


@pytest.fixture
def url(tmp_path: Path) -> str:
    return sqlite_url(tmp_path / "q.db")


def jsonl(path: Path, *rows: str) -> Path:
    path.write_text("".join(f"{row}\n" for row in rows), encoding="utf-8")
    return path


def payloads(url: str, queue: str, count: int) -> list[object]:
    got: list[Message] = []
    with connect(url) as conn:
        conn.queue(queue).dispatch(got.append, max_messages=count, max_seconds=20)
        assert conn.queue(queue).depth() == 0
    return [m.payload for m in got]


def on_terminal(*args: str, cwd: Path) -> tuple[int, str, str]:
    """Run ``worker ARGS`` with stderr on a pty (80 columns) and stdout on a pipe; return
    the exit status, stdout and what the terminal showed."""
    controller, terminal = os.openpty()
    env = child_env({"TERM": "xterm-256color", "COLUMNS": "100"})
    with subprocess.Popen(worker_command(*args), cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=terminal, text=True) as process:  # fmt: skip
        os.close(terminal)
        shown = b"".join(_drain(controller))
        stdout = process.stdout.read() if process.stdout else ""
        status = process.wait(timeout=60)
    os.close(controller)
    return status, stdout, shown.decode("utf-8", "replace")


def _drain(controller: int) -> Iterator[bytes]:
    while True:
        ready, _, _ = select.select([controller], [], [], 60)
        if not ready:
            raise AssertionError("the terminal stayed silent for 60s")
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: every writer of the pty is gone
            return
        if not chunk:
            return
        yield chunk


# -- publish --file -----------------------------------------------------------------------


def test_publish_file_sends_every_line_in_batches_with_plain_progress(
    tmp_path: Path, url: str
) -> None:
    # Given a JSON-lines file of seven payloads and a blank line
    rows = [json.dumps({"n": n}) for n in range(7)]
    source = jsonl(tmp_path / "jobs.jsonl", *rows[:3], "", *rows[3:])
    # When it is published in batches of three, stderr being a pipe
    done = run_worker("publish", "jobs", "--file", str(source), "--batch-size", "3",
                      "--url", url, cwd=tmp_path)  # fmt: skip
    # Then stdout has one id per message, stderr plain progress lines and a summary
    assert done.returncode == 0, done.stderr
    assert len(set(done.stdout.split())) == 7
    *before, last, summary = done.stderr.splitlines()
    assert (last, summary) == (
        "publish 'jobs': 7/7 (100%)",
        f"published 7 message(s) from {source} to 'jobs' (lines 1-8)",
    )
    assert all(re.fullmatch(r"publish 'jobs': [36]/7 \(\d+%\)", line) for line in before)
    assert "\x1b" not in done.stderr and "\r" not in done.stderr
    # And the queue holds the payloads in the file's order
    assert payloads(url, "jobs", 7) == [{"n": n} for n in range(7)]


def test_publish_file_from_stdin_resumes_at_a_line(tmp_path: Path, url: str) -> None:
    rows = "".join(json.dumps({"n": n}) + "\n" for n in range(5))
    done = subprocess.run(worker_command("publish", "jobs", "--file", "-", "--from-line", "4",
                                         "--url", url),
                          input=rows, cwd=tmp_path, env=child_env(), capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "published 2 message(s) from stdin to 'jobs' (lines 4-5)" in done.stderr
    assert payloads(url, "jobs", 2) == [{"n": 3}, {"n": 4}]


def test_a_malformed_line_publishes_nothing_and_names_its_line(tmp_path: Path, url: str) -> None:
    source = tmp_path / "jobs.jsonl"
    source.write_bytes(b'{"n": 1}\n{"n": 2\n{"n": 3}\n\xff\xfe\n')
    done = run_worker("publish", "jobs", "--file", str(source), "--url", url, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("worker: 2 malformed line(s), nothing published: line 2: not "
                                  "JSON (Expecting ',' delimiter at column 8); line 4: not "
                                  "UTF-8")  # fmt: skip
    with connect(url) as conn:
        assert conn.queue("jobs").depth() == 0


def test_a_refused_line_says_exactly_what_was_published(tmp_path: Path) -> None:
    # Given RabbitMQ taking messages up to 200 bytes, and a file whose fifth line is larger
    require_broker("rabbitmq", "127.0.0.1", 5672)
    url, queue = f"{AMQP}?max_message_size=200", f"progress-{uuid.uuid4().hex[:10]}"
    rows = [json.dumps({"n": n}) for n in range(10)]
    rows[4] = json.dumps({"n": 4, "pad": "x" * 300})
    source = jsonl(tmp_path / "jobs.jsonl", *rows)
    try:
        # When it is published in batches of three
        done = run_worker("publish", queue, "--file", str(source), "--batch-size", "3",
                          "--url", url, cwd=tmp_path)  # fmt: skip
        # Then the lines before it are published (the first batch, and the fourth line sent
        # as the block ends), the fifth refused, the rest never sent, and stderr says so
        assert done.returncode == 1
        ids = done.stdout.split()
        assert len(ids) == 4
        assert (f"worker: published 4 of 10 message(s) from {source} to {queue!r} (lines 1-4); "
                "line 5 was refused (message of ") in done.stderr  # fmt: skip
        assert ("exceeds amqp's limit of 200 bytes); 5 message(s) (lines 6-10) were not sent. "
                "Resume with --from-line 5 once it is fixed") in done.stderr  # fmt: skip
        assert "guest:guest" not in done.stderr
        # And the broker holds exactly what stdout listed
        got: list[Message] = []
        with connect(url) as conn:
            conn.queue(queue).dispatch(got.append, max_messages=4, max_seconds=20)
            assert conn.queue(queue).depth() == 0
        assert [m.id for m in got] == ids
        assert [m.payload for m in got] == [{"n": n} for n in range(4)]
    finally:
        with connect(AMQP) as conn:
            conn.transport.delete(queue)


def test_a_failed_batch_says_which_lines_the_broker_may_hold(tmp_path: Path) -> None:
    # Given a RabbitMQ queue that refuses publishes beyond four messages (a policy, so the
    # adapter's own declaration stays valid; priority 10 to win over any catch-all policy)
    require_broker("rabbitmq", "127.0.0.1", 5672)
    queue = f"progress-{uuid.uuid4().hex[:10]}"
    policy = ["rabbitmqctl", "-q", "set_policy", "--apply-to", "queues", "--priority", "10",
              queue, f"^{queue}$", '{"max-length": 4, "overflow": "reject-publish"}']  # fmt: skip
    subprocess.run(policy, check=True, timeout=60, capture_output=True)
    source = jsonl(tmp_path / "jobs.jsonl", *(json.dumps({"n": n}) for n in range(10)))
    try:
        # When ten lines are published in batches of three
        done = run_worker("publish", queue, "--file", str(source), "--batch-size", "3",
                          "--url", AMQP, cwd=tmp_path)  # fmt: skip
        # Then the first batch is published, the second failed, the rest never sent
        assert done.returncode == 1
        assert len(done.stdout.split()) == 3
        assert (f"worker: published 3 of 10 message(s) from {source} to {queue!r} (lines 1-3); "
                "the batch of 3 message(s) (lines 4-6) failed (") in done.stderr  # fmt: skip
        assert ("the broker may hold some of them; 4 message(s) (lines 7-10) were not sent. "
                "Resume with --from-line 4 (the failed batch again: some may run twice) or "
                "--from-line 7 (after it)") in done.stderr  # fmt: skip
        # And the broker holds the first batch and, of the failed one, what it took
        got: list[Message] = []
        with connect(AMQP) as conn:
            conn.queue(queue).dispatch(got.append, max_messages=4, max_seconds=20)
            assert conn.queue(queue).depth() == 0
        assert [m.id for m in got[:3]] == done.stdout.split()
        assert [m.payload for m in got] == [{"n": n} for n in range(4)]
    finally:
        subprocess.run(["rabbitmqctl", "-q", "clear_policy", queue], timeout=60, check=False)
        with connect(AMQP) as conn:
            conn.transport.delete(queue)


def test_publish_file_on_a_terminal_draws_a_bar_and_keeps_stdout_clean(
    tmp_path: Path, url: str
) -> None:
    source = jsonl(tmp_path / "jobs.jsonl", *(json.dumps({"n": n}) for n in range(7)))
    status, stdout, shown = on_terminal("publish", "jobs", "--file", str(source),
                                        "--batch-size", "3", "--url", url,
                                        cwd=tmp_path)  # fmt: skip
    assert status == 0, shown
    assert len(set(stdout.split())) == 7 and "\x1b" not in stdout
    assert BAR in shown and "7/7" in shown and "\x1b[" in shown
    assert "publish 'jobs': 7/7 (100%)" not in shown  # the bar, not the plain lines
    assert payloads(url, "jobs", 7) == [{"n": n} for n in range(7)]


# -- failed retry all -----------------------------------------------------------------------


def failed(url: str, count: int) -> None:
    with connect(url) as conn:
        for n in range(count):
            conn.jobs.add_failed("picky", json.dumps({"n": n}).encode(), "test")


def test_failed_retry_all_shows_plain_progress_off_a_terminal(tmp_path: Path, url: str) -> None:
    failed(url, 4)
    done = run_worker("failed", "retry", "all", "--url", url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    *before, last, summary = done.stderr.splitlines()
    assert (last, summary) == ("failed retry: 4/4 (100%)", "4 message(s) back on their queue")
    assert all(re.fullmatch(r"failed retry: [0-3]/4 \(\d+%\)", line) for line in before)
    with connect(url) as conn:
        assert conn.queue("picky").depth() == 4


def test_failed_retry_all_on_a_terminal_draws_a_bar(tmp_path: Path, url: str) -> None:
    failed(url, 4)
    status, _, shown = on_terminal("failed", "retry", "all", "--url", url, cwd=tmp_path)
    assert status == 0, shown
    assert BAR in shown and "4/4" in shown
    assert "4 message(s) back on their queue" in shown
    with connect(url) as conn:
        assert conn.queue("picky").depth() == 4


def test_failed_retry_of_one_shows_no_progress(tmp_path: Path, url: str) -> None:
    failed(url, 1)
    done = run_worker("failed", "retry", "1", "--url", url, cwd=tmp_path)
    assert done.stderr.splitlines() == ["1 message(s) back on their queue"]


# -- conformance ----------------------------------------------------------------------------


def test_conformance_counts_cases_off_and_on_a_terminal(tmp_path: Path) -> None:
    args = ("conformance", "memory://progress", "--short", "--only", "fifo", "priority")
    # Off a terminal: the table on stdout, one plain line on stderr
    done = run_worker(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "fifo " in done.stdout and "priority " in done.stdout
    *before, last = done.stderr.splitlines()
    assert last == "conformance memory://progress: 2/2 (100%)"
    assert all(line.startswith("conformance memory://progress: 1/2") for line in before)
    # On a terminal: the bar on stderr; the table (stdout) goes to the pipe untouched
    status, stdout, shown = on_terminal(*args, cwd=tmp_path)
    assert status == 0, shown
    assert "fifo " in stdout and "priority " in stdout and "\x1b" not in stdout
    assert BAR in shown and "2/2" in shown and "fifo" not in shown
