"""The conformance suite itself: it passes on memory:// and sqlite://, it fails on adapters
that break a declared promise (tests/broken_adapters.py), and its entry points work."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

import tests.broken_adapters  # noqa: F401 - registers the broken schemes
from queuekit.conformance import capability_table
from queuekit.conformance.cases import all_cases
from queuekit.conformance.cli import command

ROOT = Path(__file__).resolve().parent.parent


def run(argv: list[str], tmp_path: Path) -> tuple[int, str, dict[str, Any]]:
    """Run ``worker conformance`` in-process; return exit code, table and JSON report."""
    report = tmp_path / f"report-{uuid.uuid4().hex[:6]}.json"
    out = io.StringIO()
    code = command([*argv, "--json", str(report)], out=out)
    data = json.loads(report.read_text()) if report.exists() else {}
    return code, out.getvalue(), data


def statuses(data: dict[str, Any]) -> dict[str, str]:
    return {c["case"]: c["status"] for c in data["cases"]}


def sqlite_url(tmp_path: Path, scheme: str = "sqlite") -> str:
    # A short lease so a SIGKILLed consumer's message comes back in seconds, not 30.
    return f"{scheme}:///{tmp_path}/conformance.db?lease=2"


# -- the real adapters pass ------------------------------------------------------------------


def test_memory_passes_every_declared_case(tmp_path: Path) -> None:
    code, table, data = run([f"memory://conformance-{uuid.uuid4().hex}", "--short"], tmp_path)
    print(table)
    assert code == 0, table
    result = statuses(data)
    assert result["durable"] == "not supported"  # memory:// declares it is not durable
    assert all(s in ("pass", "not supported", "skipped") for s in result.values()), result
    assert sum(s == "pass" for s in result.values()) >= 15


def test_sqlite_passes_every_declared_case(tmp_path: Path) -> None:
    code, table, data = run([sqlite_url(tmp_path), "--short"], tmp_path)
    print(table)
    assert code == 0, table
    result = statuses(data)
    assert result["durable"] == "pass"
    assert result["redelivery"] == "pass"  # a real child process, really SIGKILLed
    assert result["restart"] == "skipped"  # no --restart-command given


def test_restart_case_runs_the_restart_command(tmp_path: Path) -> None:
    # sqlite has no server: "restarting" it is a no-op command, but the case still checks
    # that every confirmed message published around the command arrives.
    marker = tmp_path / "restarted"
    argv = [sqlite_url(tmp_path), "--short", "--only", "restart"]
    code, table, data = run([*argv, "--restart-command", f"touch {marker}"], tmp_path)
    assert code == 0, table
    assert statuses(data) == {"restart": "pass"}
    assert marker.exists()


# -- broken adapters fail the matching case ---------------------------------------------------

#: Broken adapters make the suite wait its full timeouts for what never comes: shorten them.
FAST_FAIL = ["--short", "--timeout", "2", "--redelivery-timeout", "3"]

BROKEN = [
    ("lossy://x", ["no_loss"], "missing"),
    ("at-most-once://x", ["redelivery", "nack_requeue"], "nothing received"),
    ("no-priority://x", ["priority"], "received priorities in order"),
    ("any-priority://x", ["priority_range"], "a 10-40 consumer took priorities"),
    ("silent-delay://x", ["unsupported"], "did not raise Unsupported"),
    ("header-dropping://x", ["round_trip"], "headers changed"),
    ("lifo://x", ["fifo"], "order broken at position 0"),
    ("one-word-hash://x", ["topics"], "pattern ROOT.# received"),
]


@pytest.mark.parametrize(("url", "cases", "reason"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_adapter_fails_its_case(
    url: str, cases: list[str], reason: str, tmp_path: Path
) -> None:
    code, table, data = run([url, *FAST_FAIL, "--only", *cases], tmp_path)
    assert code == 1, table
    result = {c["case"]: c for c in data["cases"]}
    assert result[cases[0]]["status"] == "FAIL"
    assert reason in result[cases[0]]["detail"]
    assert f"FAIL: {result[cases[0]]['detail'][:40]}" in table


def test_at_most_once_fails_redelivery_across_processes(tmp_path: Path) -> None:
    # Not process-local: the consumer is a child process killed with SIGKILL, and the child
    # finds the runtime-registered scheme through the factory reference.
    url = sqlite_url(tmp_path, "at-most-once-sqlite")
    code, table, data = run([url, *FAST_FAIL, "--only", "redelivery"], tmp_path)
    assert code == 1, table
    assert statuses(data) == {"redelivery": "FAIL"}
    assert "killed consumer" in data["cases"][0]["detail"]


def test_lossy_adapter_fails_the_model_and_competing_consumers(tmp_path: Path) -> None:
    code, table, data = run(["lossy://x", *FAST_FAIL, "--only", "competing_consumers"], tmp_path)
    assert code == 1, table
    assert "missing" in data["cases"][0]["detail"]


def test_at_most_once_fails_the_model(tmp_path: Path) -> None:
    code, table, data = run(["at-most-once://x", *FAST_FAIL, "--only", "model"], tmp_path)
    assert code == 1, table
    assert statuses(data) == {"model": "FAIL"}


# -- the command line -------------------------------------------------------------------------


def test_table_lists_capability_declared_and_result(tmp_path: Path) -> None:
    code, table, _ = run(["memory://t", "--short", "--only", "fifo", "durable"], tmp_path)
    assert code == 0
    lines = table.splitlines()
    assert any(line.split()[:4] == ["case", "capability", "declared", "result"] for line in lines)
    assert any(line.startswith("fifo") and "yes" in line and "pass" in line for line in lines)
    assert any(
        line.startswith("durable") and "not supported: messages live in this process" in line
        for line in lines
    )


def test_unknown_capability_and_scheme_are_usage_errors(tmp_path: Path) -> None:
    assert run(["memory://t", "--only", "teleport"], tmp_path)[0] == 2
    code, text, _ = run(["nosuchbroker://h"], tmp_path)
    assert code == 2 and "no transport for nosuchbroker://" in text


def test_password_never_printed(tmp_path: Path) -> None:
    # A scheme that fails to connect must not echo the secret from the URL.
    code, text, _ = run(["at-most-once-sqlite://u:s3cret@host/x.db"], tmp_path)
    assert code == 2 and "s3cret" not in text and "***" in text


def test_stress_runs_copies_in_parallel(tmp_path: Path) -> None:
    argv = [sqlite_url(tmp_path), "--short", "--stress", "2", "--only", "no_loss", "fifo"]
    code, table, data = run(argv, tmp_path)
    assert code == 0, table
    assert statuses(data) == {"no_loss": "pass", "fifo": "pass"}


def test_stress_reports_a_failure_of_any_copy(tmp_path: Path) -> None:
    argv = ["lossy://x", *FAST_FAIL, "--stress", "2", "--only", "no_loss"]
    code, table, data = run(argv, tmp_path)
    assert code == 1, table
    assert statuses(data) == {"no_loss": "FAIL"}


def test_every_case_has_a_summary_and_a_known_capability() -> None:
    from queuekit.spi.capabilities import FLAGS

    cases = all_cases()
    assert len({c.name for c in cases}) == len(cases)
    for case in cases:
        assert case.summary and (case.needs is None or case.needs in FLAGS)


# -- the pytest plugin ------------------------------------------------------------------------


def _pytest(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
    )


def test_plugin_runs_the_cases_for_each_url() -> None:
    done = _pytest("--pyargs", "queuekit.conformance", "--queuekit-url", "memory://plugin",
                   "--queuekit-short", "-k", "fifo or durable or no_loss")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout and "1 skipped" in done.stdout


def test_plugin_reports_a_broken_adapter() -> None:
    url = "no-priority://x"
    done = _pytest("-p", "tests.broken_adapters", "--pyargs", "queuekit.conformance",
                   "--queuekit-url", url, "--queuekit-short", "-k", "priority")  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "received priorities in order" in done.stdout


def test_plugin_is_inert_without_a_url() -> None:
    done = _pytest("--pyargs", "queuekit.conformance")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 skipped" in done.stdout


# -- the capability table in the docs ----------------------------------------------------------


def test_capability_table_in_docs_is_up_to_date() -> None:
    committed = (ROOT / "docs" / "capabilities.md").read_text(encoding="utf-8")
    assert committed == capability_table.render(), (
        "docs/capabilities.md is stale: run "
        "`python -m queuekit.conformance.capability_table > docs/capabilities.md`"
    )
