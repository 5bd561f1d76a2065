"""Where to connect: --url > QUEUEKIT_URL > queuekit.toml (with per-queue routes) > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from queuekit import ConfigurationError
from queuekit.client.config import DEFAULT_URL, load_config, resolve_jobstore, resolve_url
from tests.workers.harness import run_worker

CONFIG = """
url = "sqlite:///from-file.db"
jobstore = "sqlite:///jobs-from-file.db"

[queues]
reports = "memory://reports"
"""


@pytest.fixture
def clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory and no queuekit variables."""
    monkeypatch.chdir(tmp_path)
    for name in ("QUEUEKIT_URL", "QUEUEKIT_CONFIG", "QUEUEKIT_JOBSTORE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_nothing_configured_gives_the_embedded_default(clean: Path) -> None:
    assert resolve_url() == DEFAULT_URL == "sqlite:///queuekit.db"
    assert resolve_url(queue="reports") == DEFAULT_URL
    assert resolve_jobstore() is None


def test_the_config_file_sets_the_url_and_routes_queues(clean: Path) -> None:
    (clean / "queuekit.toml").write_text(CONFIG, encoding="utf-8")
    assert resolve_url() == "sqlite:///from-file.db"
    assert resolve_url(queue="email") == "sqlite:///from-file.db"
    assert resolve_url(queue="reports") == "memory://reports"
    assert resolve_jobstore() == "sqlite:///jobs-from-file.db"


def test_the_environment_beats_the_file(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean / "queuekit.toml").write_text(CONFIG, encoding="utf-8")
    monkeypatch.setenv("QUEUEKIT_URL", "memory://env")
    monkeypatch.setenv("QUEUEKIT_JOBSTORE", "sqlite:///env-jobs.db")
    assert resolve_url() == "memory://env"
    assert resolve_url(queue="reports") == "memory://env"
    assert resolve_jobstore() == "sqlite:///env-jobs.db"


def test_an_explicit_url_beats_everything(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean / "queuekit.toml").write_text(CONFIG, encoding="utf-8")
    monkeypatch.setenv("QUEUEKIT_URL", "memory://env")
    assert resolve_url("memory://explicit", queue="reports") == "memory://explicit"
    assert resolve_jobstore("sqlite:///explicit.db") == "sqlite:///explicit.db"


def test_queuekit_config_names_another_file(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = clean / "conf" / "elsewhere.toml"
    other.parent.mkdir()
    other.write_text('url = "memory://elsewhere"\n', encoding="utf-8")
    monkeypatch.setenv("QUEUEKIT_CONFIG", str(other))
    assert resolve_url() == "memory://elsewhere"


def test_a_named_config_file_that_is_missing_is_an_error(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUEUEKIT_CONFIG", str(clean / "nope.toml"))
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_config()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("url = [", "cannot read"),
        ("url = 5", "url must be a string"),
        ("jobstore = true", "jobstore must be a string"),
        ("queues = 3", "must map queue names to URLs"),
        ("[queues]\nemail = 3", "must map queue names to URLs"),
    ],
)
def test_a_bad_config_file_says_what_is_wrong(clean: Path, text: str, says: str) -> None:
    (clean / "queuekit.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigurationError, match=says):
        load_config()


def test_the_cli_follows_the_same_precedence(clean: Path) -> None:
    """`worker publish` without --url uses the file's route; --url and QUEUEKIT_URL win."""
    (clean / "queuekit.toml").write_text(
        'url = "sqlite:///file.db"\n[queues]\nrouted = "sqlite:///routed.db"\n', encoding="utf-8"
    )
    assert run_worker("publish", "plain", "1", cwd=clean).returncode == 0
    assert run_worker("publish", "routed", "1", cwd=clean).returncode == 0
    env = {"QUEUEKIT_URL": "sqlite:///env.db"}
    assert run_worker("publish", "routed", "1", cwd=clean, env=env).returncode == 0
    flag = ["--url", "sqlite:///flag.db"]
    assert run_worker("publish", "routed", "1", *flag, cwd=clean, env=env).returncode == 0
    assert sorted(p.name for p in clean.glob("*.db")) == [
        "env.db",
        "file.db",
        "flag.db",
        "routed.db",
    ]
    from queuekit import connect

    for db, queue in [("file", "plain"), ("routed", "routed"), ("env", "routed")]:
        with connect(f"sqlite:///{clean}/{db}.db") as conn:
            assert conn.queue(queue).depth() == 1, db
