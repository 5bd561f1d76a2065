"""Where to connect: --url > QUEUEKIT_URL > queuekit.toml (with per-queue routes) > default."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from queuekit import ConfigurationError, QueuekitError, connect
from queuekit.client.config import (
    broker_jobstore,
    load_config,
    resolve_jobstore,
    resolve_url,
    state_dir,
)
from queuekit.jobstore import open_jobstore
from queuekit.spi.urls import TransportURL
from tests.support import require_broker
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


def test_nothing_configured_gives_the_embedded_default(clean: Path, state_home: Path) -> None:
    default = f"sqlite:///{state_home}/queuekit/queuekit.db"
    assert resolve_url() == default
    assert resolve_url(queue="reports") == default
    assert resolve_jobstore() is None


def test_the_defaults_do_not_depend_on_the_working_directory(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a web app's directory and a worker's directory
    (clean / "app").mkdir()
    (clean / "worker").mkdir()
    amqp = TransportURL.parse("amqp://guest:guest@rabbit:5672/")
    seen = set()
    for where in ("app", "worker"):
        monkeypatch.chdir(clean / where)
        # When each resolves the defaults, Then both get the same absolute locations
        seen.add((resolve_url(), broker_jobstore(amqp)))
    [(url, jobs)] = seen
    assert url.startswith("sqlite:////") and jobs.startswith("sqlite:////")


def test_the_state_directory_follows_xdg(
    clean: Path, state_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert state_dir() == state_home / "queuekit"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/dir")  # ignored, as the XDG spec says
    assert state_dir() == Path.home() / ".local" / "state" / "queuekit"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert state_dir() == Path.home() / ".local" / "state" / "queuekit"


def test_a_broker_s_job_store_is_named_by_the_broker_never_its_password(clean: Path) -> None:
    def store(url: str) -> str:
        return broker_jobstore(TransportURL.parse(url))

    one = store("amqp://app:s3cret@Rabbit:5672/prod")
    assert "s3cret" not in one and "rabbit" in one
    # the same broker, however the password or options are spelled: the same store
    assert store("amqp://app:other@rabbit:5672/prod?heartbeat=10") == one
    assert store("stomp://u@b:1,a:2") == store("stomp://u@a:2,b:1")  # failover order
    # another vhost, user, host or protocol: another store
    others = {
        store(u)
        for u in (
            "amqp://app@rabbit:5672/test",
            "amqp://ops@rabbit:5672/prod",
            "amqp://app@rabbit2:5672/prod",
            "stomp://app@rabbit:5672/prod",
        )
    }
    assert len(others) == 4 and one not in others


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


def test_a_sqlite_url_naming_no_file_is_refused_not_put_in_the_cwd(clean: Path) -> None:
    with pytest.raises(ConfigurationError, match="names no file"):
        connect("sqlite://")
    with pytest.raises(ConfigurationError, match="names no file"):
        open_jobstore("sqlite://")
    assert list(clean.iterdir()) == []


# -- one routing rule: the CLI and connect().queue(name) alike -------------------------------


def routed_config(clean: Path, route: str) -> Path:
    """A queuekit.toml: every queue in main.db, except ``reports`` on ``route``."""
    path = clean / "queuekit.toml"
    path.write_text(f'url = "sqlite:///{clean}/main.db"\n[queues]\nreports = "{route}"\n',
                    encoding="utf-8")  # fmt: skip
    return path


def test_a_connection_from_the_configuration_follows_its_routes(clean: Path) -> None:
    routed_config(clean, f"sqlite:///{clean}/reports.db")
    # Given a connection opened from the configuration (no URL)
    with connect() as conn:
        # When it publishes to a routed queue and to another
        reports, email = conn.queue("reports"), conn.queue("email")
        reports.publish({"n": 1})
        email.publish({"n": 2})
        assert reports.connection is not conn and email.connection is conn
        assert conn.connection_for("reports") is reports.connection  # opened once
    # Then each message is on its own broker, where its worker looks
    with connect(f"sqlite:///{clean}/reports.db") as direct:
        assert direct.queue("reports").depth() == 1
    with connect(f"sqlite:///{clean}/main.db") as direct:
        assert direct.queue("reports").depth() == 0 and direct.queue("email").depth() == 1
    # and the routed connection was closed with its parent
    with pytest.raises(QueuekitError, match="closed"):
        reports.publish({"n": 3})


def test_an_explicit_url_or_queuekit_url_means_that_broker_for_every_queue(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    routed_config(clean, f"sqlite:///{clean}/reports.db")
    with connect(f"sqlite:///{clean}/main.db") as conn:
        assert conn.routes == {} and conn.queue("reports").connection is conn
    monkeypatch.setenv("QUEUEKIT_URL", f"sqlite:///{clean}/env.db")
    with connect() as conn:
        assert conn.routes == {} and conn.queue("reports").connection is conn


def test_worker_failed_without_queue_covers_every_configured_broker(
    clean: Path, state_home: Path
) -> None:
    # Given a dead letter on the default broker and one on the routed broker
    config = routed_config(clean, f"sqlite:///{clean}/reports.db")
    with connect() as conn:
        for queue in ("email", "reports"):
            conn.connection_for(queue).jobs.add_failed(queue, b"{}", f"{queue} broke")
    env = {"QUEUEKIT_CONFIG": str(config)}
    # When `worker failed list` runs without --queue, Then it shows both
    listed = run_worker("failed", "list", cwd=clean, env=env)
    assert listed.returncode == 0, listed.stderr
    assert "email broke" in listed.stdout and "reports broke" in listed.stdout
    assert "2 failed message(s)" in listed.stderr
    # and `worker failed purge` without --queue empties both
    purged = run_worker("failed", "purge", cwd=clean, env=env)
    assert "2 failed message(s) removed" in purged.stderr, purged.stderr


def test_a_routed_queue_on_rabbitmq_reaches_its_worker_and_its_dead_letters_come_back(
    clean: Path, state_home: Path
) -> None:
    require_broker("rabbitmq", "127.0.0.1", 5672)
    queue = f"routed-{uuid.uuid4().hex[:10]}"
    config = clean / "queuekit.toml"
    config.write_text(f'url = "sqlite:///{clean}/main.db"\n[queues]\n'
                      f'"{queue}" = "amqp://guest:guest@127.0.0.1:5672/"\n',
                      encoding="utf-8")  # fmt: skip
    env = {"QUEUEKIT_CONFIG": str(config), "QK_OUT": str(clean / "out.txt"),
           "QK_FIXED": str(clean / "fixed")}  # fmt: skip
    try:
        # Given a message published by the application through connect().queue(name)
        with connect() as conn:
            conn.queue(queue).publish({"n": 1})
        # When the routed worker runs (it fails until fixed), Then it got the message
        run = ["run", "tests.workers.queues:BrokenUntilFixedQueue", "--queue", queue,
               "--max-messages", "1", "--max-seconds", "60"]  # fmt: skip
        done = run_worker(*run, cwd=clean, env=env)
        assert done.returncode == 0, done.stderr
        # and `worker failed list` / `retry all` without --queue find it and send it back
        listed = run_worker("failed", "list", cwd=clean, env=env)
        assert queue in listed.stdout and "not fixed yet" in listed.stdout, listed.stderr
        (clean / "fixed").touch()
        retried = run_worker("failed", "retry", "all", cwd=clean, env=env)
        assert "1 message(s) back on their queue" in retried.stderr, retried.stderr
        done = run_worker(*run, cwd=clean, env=env)
        assert done.returncode == 0, done.stderr
        assert (clean / "out.txt").read_text() == "1\n"
    finally:
        with connect("amqp://guest:guest@127.0.0.1:5672/") as direct:
            direct.transport.delete(queue)
