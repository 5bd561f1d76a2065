"""Job functions (``@job``): published like any message, worked off by ``worker run`` of
their module on the same pipeline, in worker processes on SQLite and RabbitMQ."""

from __future__ import annotations

import uuid
from datetime import date
from pathlib import Path

import pytest

from queuekit import ConfigurationError, NoRetry, connect, job
from queuekit.client.functions import functions_of, serving
from tests.support import require_broker
from tests.workers import tasks
from tests.workers.harness import lines, run_worker, sqlite_url, start_worker, wait_for_line


def test_a_job_function_is_still_a_function_with_its_options() -> None:
    assert tasks.send_welcome(4, lang="fr") == "sent 4"
    assert tasks.send_welcome.queue == "email"
    assert tasks.send_welcome.name == "tests.workers.tasks:send_welcome"
    assert isinstance(tasks.bounce.retry, NoRetry)  # retry=None: no retries


def test_worker_run_of_a_module_serves_its_functions_of_one_queue(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "q.db")
    out = tmp_path / "out.txt"
    # Given calls of two functions on "email", one failing, and one call on "reports"
    with connect(url) as conn:
        tasks.send_welcome.using(conn).publish(7, lang="de")
        tasks.bounce.using(conn).publish("x@example.com")
        tasks.build_report.using(conn).publish(date(2026, 12, 5))
    # When a worker process runs the module's "email" functions
    done = run_worker("run", "tests.workers.tasks", "--queue", "email", "--url", url,
                      "--max-messages", "2", "--max-seconds", "30", cwd=tmp_path,
                      env={"QK_OUT": str(out)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Then it ran send_welcome with its arguments, and bounce failed for good (no retries)
    assert lines(out) == ["welcome 7 de"]
    with connect(url) as conn:
        [failed] = conn.failed.list("email")
        assert "ValueError: x@example.com bounced" in failed.reason
        assert failed.name == "tests.workers.tasks:bounce"
        assert conn.queue("reports").depth() == 1  # another queue's worker takes that
    # and the "reports" worker gets its date back as a date
    done = run_worker("run", "tests.workers.tasks:build_report", "--url", url,
                      "--max-messages", "1", "--max-seconds", "30", cwd=tmp_path,
                      env={"QK_OUT": str(out)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert lines(out)[-1] == "report 2026-12-05 date"


def test_a_module_with_functions_on_several_queues_needs_one_picked(tmp_path: Path) -> None:
    done = run_worker("run", "tests.workers.tasks", "--url", sqlite_url(tmp_path / "q.db"),
                      cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert "on 2 queues" in done.stderr
    assert "worker run tests.workers.tasks --queue email" in done.stderr
    assert "worker run tests.workers.tasks --queue reports" in done.stderr
    done = run_worker("run", "tests.workers.tasks", "--queue", "nope", cwd=tmp_path)
    assert done.returncode == 2 and "no @job functions on queue 'nope'" in done.stderr


def test_call_waits_for_the_return_value_from_a_worker_process(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "q.db")
    worker = start_worker("-v", "run", "tests.workers.tasks.send_welcome", "--url", url,
                          cwd=tmp_path, log=tmp_path / "worker.log")  # fmt: skip
    try:
        with connect(url) as conn:
            assert tasks.send_welcome.using(conn).call(3) == "sent 3"
    finally:
        worker.terminate()
        worker.communicate(timeout=30)
    assert worker.returncode == 0


def test_the_fluent_form_and_a_worker_process_on_rabbitmq(tmp_path: Path) -> None:
    require_broker("rabbitmq", "127.0.0.1", 5672)
    url = "amqp://guest:guest@127.0.0.1:5672/"
    queue = f"functions-{uuid.uuid4().hex[:10]}"
    out = tmp_path / "out.txt"
    try:
        with connect(url) as conn:
            tasks.send_welcome.job(5, lang="nl").on_queue(queue).priority(7).using(conn).publish()
        worker = start_worker("run", "tests.workers.tasks.send_welcome", "--url", url,
                              "--queue", queue, "--max-messages", "1", "--max-seconds", "60",
                              cwd=tmp_path, env={"QK_OUT": str(out)})  # fmt: skip
        wait_for_line(worker.stderr, "processed 1 message", 60)  # type: ignore[arg-type]
        worker.communicate(timeout=30)
        assert worker.returncode == 0
        assert lines(out) == ["welcome 5 nl"]
    finally:
        with connect(url) as conn:
            conn.transport.delete(queue)


def test_a_message_for_a_function_this_worker_lacks_fails_with_a_clear_reason(
    tmp_path: Path,
) -> None:
    with connect(sqlite_url(tmp_path / "q.db")) as conn:
        conn.queue("email").publish({"args": [], "kwargs": {}}, name="tests.workers.tasks:gone")
        conn.queue("email").publish(["not", "a", "call"], name=tasks.send_welcome.name)
        handler = serving(f for f in functions_of(tasks) if f.queue == "email")
        handler(conn).dispatch(max_messages=2, max_seconds=10, handle_signals=False)
        reasons = sorted(f.reason for f in conn.failed.list("email"))
    assert "no job function 'tests.workers.tasks:gone'" in reasons[0]
    assert "not a job function call" in reasons[1]


def test_job_refuses_what_a_worker_could_not_find_or_run() -> None:
    async def coroutine() -> None: ...

    def local() -> None: ...

    with pytest.raises(ConfigurationError, match="async def"):
        job("q")(coroutine)
    with pytest.raises(ConfigurationError, match="top level"):
        job("q")(local)
    with pytest.raises(ConfigurationError, match="one queue"):
        serving([tasks.send_welcome, tasks.build_report])
