"""Signed messages (queuekit.features.signing): keys, signing, verifying, and real workers.

Given signing keys, every message is signed with the first; a worker verifies with any
listed key; an unsigned, forged, altered or moved message goes to the failed store with the
reason and never runs; no secret appears in a log line or in ``worker failed show``.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuekit import ConfigurationError, Connection, Intervals, NoRetry, connect
from queuekit.features.envelope import Message, Metadata, encode
from queuekit.features.signing import MAGIC, Signer, SigningKey, envelope_of, parse_keys
from queuekit.spi.errors import UnverifiedMessage
from tests.support import require_broker
from tests.workers.harness import lines, run_worker, sqlite_url

SECRET_1, SECRET_2 = b"1" * 16 + os.urandom(16), b"2" * 16 + os.urandom(16)
K1 = "k1:" + base64.b64encode(SECRET_1).decode()
K2 = "k2:" + base64.b64encode(SECRET_2).decode()
ROTATED = f"{K2},{K1}"  # sign with k2, still accept k1
AMQP_URL = os.environ.get("QUEUEKIT_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def body(payload: object = 1) -> bytes:
    return encode(Message(payload, Metadata(name="job")))


# -- keys ----------------------------------------------------------------------------------


def test_keys_parse_in_order_and_never_show_their_secret() -> None:
    keys = parse_keys(f" {K2} , {K1} ")
    assert [k.id for k in keys] == ["k2", "k1"]
    assert keys[0].secret == SECRET_2
    assert base64.b64encode(SECRET_2).decode() not in repr(keys)
    assert Signer(keys).key_ids == ["k2", "k1"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("k1:" + base64.b64encode(b"short").decode(), "is 5 bytes; at least 32"),
        ("k1:not*base64!", "the secret of key 'k1' is not base64"),
        (f"{K1},{K1}", "key id 'k1' is listed twice"),
        ("just-a-secret", "key 1 is not 'ID:BASE64SECRET'"),
        (f"{K1},", "key 2 is not 'ID:BASE64SECRET'"),
        ("bad id:" + K1[3:], "key 1 is not 'ID:BASE64SECRET'"),
    ],
)
def test_bad_keys_are_refused_with_a_clear_error_naming_no_secret(text: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match="QUEUEKIT_SIGNING_KEYS") as err:
        parse_keys(text)
    assert says in str(err.value)
    secret = text.partition(":")[2]
    assert not secret or secret not in str(err.value)


def test_short_key_in_the_environment_stops_connect(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("QUEUEKIT_SIGNING_KEYS", "k1:" + base64.b64encode(b"x" * 31).decode())
    with pytest.raises(ConfigurationError, match="31 bytes; at least 32"):
        connect(sqlite_url(tmp_path / "q.db"))


def test_config_file_keys_apply_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "queuekit.toml"
    config.write_text(f'signing_keys = "{K1}"\n', encoding="utf-8")
    monkeypatch.setenv("QUEUEKIT_CONFIG", str(config))
    with connect(sqlite_url(tmp_path / "q.db")) as conn:
        assert conn.broker.signer is not None and conn.broker.signer.key_ids == ["k1"]
    monkeypatch.setenv("QUEUEKIT_SIGNING_KEYS", ROTATED)
    with connect(sqlite_url(tmp_path / "q.db")) as conn:
        assert conn.broker.signer is not None and conn.broker.signer.key_ids == ["k2", "k1"]


# -- signing and verifying -------------------------------------------------------------------


def test_a_signed_body_verifies_for_its_queue_with_any_listed_key() -> None:
    old, new = Signer(parse_keys(K1)), Signer(parse_keys(ROTATED))
    envelope = body()
    signed = new.sign("email", envelope)
    assert signed.startswith(MAGIC + b"k2 ") and signed.endswith(b"\n" + envelope)
    assert new.verify("email", signed) == envelope
    assert new.verify("email", old.sign("email", envelope)) == envelope  # rotation
    with pytest.raises(UnverifiedMessage, match="key 'k2', which is not among"):
        old.verify("email", signed)  # an old worker meets the new key


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda s: s.replace(b'"payload":1', b'"payload":7'), "does not match"),
        (lambda s: s.replace(b'"name":"job"', b'"name":"rm"'), "does not match"),
        (lambda s: s[s.index(b"\n") + 1 :], "is not signed"),
        (lambda s: s.replace(b"k2 ", b"k2  ", 1), "signature line is malformed"),
        (lambda s: s.replace(b"\n", b" ", 1), "signature line is malformed"),
        (lambda s: s.replace(b"k2 ", b"k\xff ", 1), "signature line is malformed"),
        (lambda s: s[:20] + s[30:], "signature line is malformed"),
    ],
)
def test_an_altered_body_is_refused(tamper: object, reason: str) -> None:
    signer = Signer(parse_keys(ROTATED))
    signed = signer.sign("email", body())
    with pytest.raises(UnverifiedMessage, match=reason) as err:
        signer.verify("email", tamper(signed))  # type: ignore[operator]
    assert err.value.body == tamper(signed)  # type: ignore[operator]


def test_a_body_signed_for_another_queue_or_with_another_secret_is_refused() -> None:
    signer = Signer(parse_keys(ROTATED))
    with pytest.raises(UnverifiedMessage, match="queue 'email'"):
        signer.verify("email", signer.sign("billing", body()))
    forger = Signer([SigningKey("k2", os.urandom(32))])
    with pytest.raises(UnverifiedMessage, match="does not match"):
        signer.verify("email", forger.sign("email", body()))


def test_without_keys_a_signed_body_is_refused_and_an_unsigned_one_passes() -> None:
    signed = Signer(parse_keys(K1)).sign("q", body())
    with pytest.raises(UnverifiedMessage, match="set QUEUEKIT_SIGNING_KEYS"):
        envelope_of(None, "q", signed)
    unsigned = body()
    assert envelope_of(None, "q", unsigned) is unsigned


# -- through a connection -------------------------------------------------------------------


@pytest.fixture
def signed_conn(tmp_path: Path) -> Iterator[Connection]:
    with connect(sqlite_url(tmp_path / "q.db"), signing_keys=ROTATED) as conn:
        yield conn


def test_every_send_path_signs_and_the_worker_runs_what_verifies(signed_conn: Connection) -> None:
    queue = signed_conn.queue("email")
    queue.publish({"n": 1})
    queue.publish_many([{"n": 2}, {"n": 3}])
    with queue.bulk():
        queue.publish({"n": 4}, group="g")
    queue.publish({"n": 5}, delay=0.01)
    seen: list[int] = []
    queue.dispatch(lambda m: seen.append(m.payload["n"]), max_messages=5, max_seconds=20)
    assert sorted(seen) == [1, 2, 3, 4, 5]
    assert signed_conn.failed.list() == []


def test_a_retry_is_signed_again_and_runs(signed_conn: Connection) -> None:
    queue = signed_conn.queue("email")
    queue.publish({"n": 1})
    tries: list[int] = []

    def work(message: Message) -> None:
        tries.append(message.metadata.attempts)
        if len(tries) == 1:
            raise RuntimeError("once")

    queue.dispatch(work, retry=Intervals([0]), max_messages=2, max_seconds=20)
    assert tries == [0, 1]
    assert signed_conn.failed.list() == []


def test_replies_are_signed_and_verified(signed_conn: Connection) -> None:
    queue = signed_conn.queue("rpc")

    def serve() -> None:
        queue.dispatch(lambda m: m.payload * 2, max_messages=1, max_seconds=20,
                       handle_signals=False)  # fmt: skip

    worker = threading.Thread(target=serve)
    worker.start()
    assert queue.call(21, timeout=20) == 42
    worker.join()


def test_failed_retry_resigns_only_what_verifies(signed_conn: Connection, tmp_path: Path) -> None:
    # Given an unsigned message and a signed one that failed for good
    queue = signed_conn.queue("email")
    with connect(sqlite_url(tmp_path / "q.db")) as plain:
        plain.transport.send("email", body({"n": 1}), {})
    queue.publish({"n": 2})
    queue.dispatch(lambda m: 1 / 0, retry=NoRetry(), max_messages=2, max_seconds=20)
    entries = {e.reason.split(" ")[0]: e for e in signed_conn.failed.list()}
    assert set(entries) == {"the", "ZeroDivisionError:"}, entries
    # When both are retried
    for entry in entries.values():
        assert signed_conn.failed.retry(entry.id)
    seen: list[int] = []
    queue.dispatch(lambda m: seen.append(m.payload["n"]), max_messages=2, max_seconds=20)
    # Then the signed one runs again; the unsigned one went back as it was and fails again
    assert seen == [2]
    [again] = signed_conn.failed.list()
    assert "not signed" in again.reason and not again.body.startswith(MAGIC)


# -- real worker processes ------------------------------------------------------------------


def _forgeries(conn: Connection, queue: str) -> dict[int, bytes]:
    """Bodies a worker with ROTATED keys must refuse, by payload ``n``."""
    forger = Signer([SigningKey("k2", os.urandom(32))])
    genuine = Signer(parse_keys(K2))
    signed = genuine.sign(queue, encode(Message({"n": 6}, Metadata())))
    return {
        3: encode(Message({"n": 3}, Metadata())),  # unsigned
        4: forger.sign(queue, encode(Message({"n": 4}, Metadata()))),  # forged
        5: genuine.sign("another", encode(Message({"n": 5}, Metadata()))),  # moved
        6: signed.replace(b'{"n":6}', b'{"n":9}'),  # altered after signing
        7: Signer([SigningKey("k0", os.urandom(32))]).sign(queue, encode(Message({"n": 7}))),
    }


def _run_signed_worker(url: str, queue: str, tmp_path: Path, jobstore: str) -> None:
    """Given messages signed with k2 and k1 and five bad ones on ``queue``, when a worker
    process with keys k2,k1 runs (once with -v text logs, once with JSON logs), then the
    two genuine ones run, the five bad ones are in the failed store with their reasons,
    and no secret shows in the logs or in ``worker failed show``."""
    with connect(url, jobstore=jobstore, signing_keys=K2) as new:
        new.queue(queue).publish({"n": 1})
    with connect(url, jobstore=jobstore, signing_keys=K1) as old:
        old.queue(queue).publish({"n": 2})
    with connect(url, jobstore=jobstore) as plain:
        for forged in _forgeries(plain, queue).values():
            plain.transport.send(queue, forged, {})
    out = tmp_path / "out.txt"
    env = {"QUEUEKIT_SIGNING_KEYS": ROTATED, "QUEUEKIT_JOBSTORE": jobstore, "QK_OUT": str(out)}
    logs = []
    for fmt, count in (("text", "3"), ("json", "4")):
        done = run_worker("-v", "run", "tests.workers.queues:RecordingQueue", "--url", url,
                          "--queue", queue, "--log-format", fmt, "--max-messages", count,
                          "--max-seconds", "60", cwd=tmp_path, env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr
        logs.append(done.stderr)
    assert sorted(lines(out)) == ["1", "2"]
    assert "signed with key 'k2' and must verify with one of k2, k1" in logs[0]
    json_lines = [json.loads(line) for line in logs[1].splitlines() if line.startswith("{")]
    assert json_lines and all("logger" in line for line in json_lines)
    with connect(url, jobstore=jobstore, signing_keys=ROTATED) as conn:
        failed = conn.failed.list(queue)
    reasons = sorted(f.reason for f in failed)
    assert len(reasons) == 5, reasons
    assert sum("is not signed" in r for r in reasons) == 1
    assert sum("does not match" in r for r in reasons) == 3  # forged, moved, altered
    assert sum("key 'k0', which is not among" in r for r in reasons) == 1
    shown = [
        run_worker("failed", "show", str(f.id), "--url", url, cwd=tmp_path, env=env).stdout
        for f in failed
    ]
    assert all("reason: " in s for s in shown)
    everything = "\n".join([*logs, *shown])
    for secret in (SECRET_1, SECRET_2):
        for spelling in (base64.b64encode(secret).decode(), secret.hex(),
                         secret.decode("latin-1")[16:]):  # fmt: skip
            assert spelling not in everything


def test_a_real_worker_on_sqlite_runs_signed_messages_only(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "q.db")
    _run_signed_worker(url, "signed", tmp_path, sqlite_url(tmp_path / "jobs.db"))


def test_a_real_worker_on_rabbitmq_runs_signed_messages_only(tmp_path: Path) -> None:
    require_broker("rabbitmq", "127.0.0.1", 5672)
    queue = f"test-signing-{uuid.uuid4().hex}"
    try:
        _run_signed_worker(AMQP_URL, queue, tmp_path, sqlite_url(tmp_path / "jobs.db"))
    finally:
        with connect(AMQP_URL, jobstore=sqlite_url(tmp_path / "jobs.db")) as conn:
            conn.transport.delete(queue)
