"""Finding transports by scheme: entry points, run-time registration and clear one-line errors."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from queuekit import ConfigurationError, MissingDependency, UnknownScheme, connect
from queuekit.adapters.memory import MemoryTransport
from queuekit.adapters.sqlite import SQLiteTransport
from queuekit.spi.registry import available_schemes, open_transport, register_transport
from queuekit.spi.urls import TransportURL
from tests.workers.harness import ROOT, child_env, run_worker

BUILT_IN = ["amqp", "amqps", "gearman", "memory", "sqlite", "stomp", "stomp+ssl", "xmpp", "zmq"]


def test_every_built_in_scheme_is_declared_by_entry_point() -> None:
    assert set(BUILT_IN) <= set(available_schemes())


def test_memory_and_sqlite_open_through_the_registry(tmp_path: Path) -> None:
    memory = open_transport("memory://registry")
    sqlite = open_transport(TransportURL.parse(f"sqlite:///{tmp_path}/r.db"))
    try:
        assert isinstance(memory, MemoryTransport)
        assert isinstance(sqlite, SQLiteTransport)
    finally:
        memory.close()
        sqlite.close()


def test_unknown_scheme_suggests_the_closest_one() -> None:
    with pytest.raises(UnknownScheme, match=r"did you mean sqlite://\?"):
        open_transport("sqlit:///jobs.db")


def test_unknown_scheme_without_a_close_match_lists_the_known_ones() -> None:
    with pytest.raises(UnknownScheme) as caught:
        open_transport("qqqqqqqq://x")
    assert "known:" in str(caught.value)
    assert "sqlite" in str(caught.value)
    assert isinstance(caught.value, ConfigurationError)


def test_register_transport_adds_a_scheme_at_run_time() -> None:
    scheme = f"qk-{uuid.uuid4().hex[:8]}"
    register_transport(scheme.upper(), MemoryTransport)
    with connect(f"{scheme}://shared") as conn:
        assert isinstance(conn.transport, MemoryTransport)
    assert scheme in available_schemes()


def test_missing_dependency_error_names_the_extra() -> None:
    error = MissingDependency("amqp", "amqp", "kombu")
    assert str(error).endswith("install queuekit[amqp]")
    assert "kombu" in str(error)
    assert isinstance(error, ConfigurationError)


BLOCK = "import sys\nfor name in {modules!r}: sys.modules[name] = None\n"


def _without(modules: list[str], code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where importing ``modules`` fails."""
    return subprocess.run(
        [sys.executable, "-c", BLOCK.format(modules=modules) + code],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("amqp://guest:s3cret-Zq9@localhost:5672/", "kombu", "amqp"),
        ("stomp://guest:s3cret-Zq9@localhost:61613/", "stomp", "stomp"),
        ("zmq://localhost:5555/", "zmq", "zmq"),
    ],
)
def test_opening_a_url_without_its_client_library_says_what_to_install(
    url: str, module: str, extra: str
) -> None:
    code = (
        "from queuekit import connect, MissingDependency\n"
        f"try:\n    connect({url!r}, jobstore='sqlite:///:memory:')\n"
        "except MissingDependency as exc:\n    print(exc)\n"
    )
    result = _without([module], code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"install queuekit[{extra}]"), result.stdout
    assert module in result.stdout
    assert "s3cret" not in result.stdout


def test_worker_publish_without_the_client_library_is_one_line_not_a_traceback() -> None:
    code = (
        "from queuekit.cli import main\n"
        "sys.exit(main(['publish', 'email', '{\"to\": \"a@b\"}', "
        "'--url', 'amqp://guest:s3cret-Zq9@localhost:5672/']))\n"
    )
    result = _without(["kombu"], code)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "worker: the amqp:// transport needs an optional dependency (kombu): install queuekit[amqp]"
    ]
    assert "s3cret" not in result.stderr + result.stdout


def test_worker_with_an_unknown_scheme_is_one_line(tmp_path: Path) -> None:
    result = run_worker("publish", "q", "{}", "--url", "amqq://u:s3cret-Zq9@h/", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "did you mean amqp://?" in lines[0]
    assert "s3cret" not in result.stderr
