"""Hostile input: any bytes from a broker end as a failed-store entry or a clear error.

Property tests (hypothesis, bounded: few examples, a deadline each) over every parser in
tests/fuzz/targets.py and over a real worker pipeline; then one regression test for each
crash the fuzzing found, and the size caps on the read paths. tests/fuzz/run.py runs the
same targets for longer.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queuekit import Connection, MessageTooLarge, NoRetry, connect
from queuekit.adapters.amqp.messages import user_headers as amqp_headers
from queuekit.adapters.gearman import frame as gearman_frame
from queuekit.adapters.sqlite import decode_headers as sqlite_headers
from queuekit.adapters.zmq import wire
from queuekit.features.envelope import decode
from queuekit.spi.errors import ConnectionLost, MalformedMessage
from tests.fuzz.targets import TARGETS, inputs
from tests.support import require_broker
from tests.workers.harness import sqlite_url

BOUNDED = settings(max_examples=150, deadline=1000, database=None,
                   suppress_health_check=[HealthCheck.too_slow])  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
FIELDS = ["id", "name", "created_at", "attempts", "not_before", "priority", "key", "once",
          "group", "correlation_id", "reply_to", "retry", "headers", "record", "store",
          "types", "encoding", "unknown"]  # fmt: skip


@pytest.fixture(autouse=True)
def quiet_parsers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)  # the STOMP header parser warns per bad header


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_any_bytes_give_a_result_or_a_clear_error(target: str) -> None:
    @BOUNDED
    @given(inputs(target))
    def check(data: bytes) -> None:
        TARGETS[target](data)

    check()


@BOUNDED
@given(payload=json_values, meta=st.dictionaries(st.sampled_from(FIELDS), json_values))
def test_any_envelope_shaped_json_decodes_or_is_malformed(payload: object, meta: dict) -> None:  # type: ignore[type-arg]
    meta.setdefault("id", "x")
    TARGETS["envelope"](json.dumps({"payload": payload, "metadata": meta}).encode())


@pytest.fixture
def memory_conn() -> Iterator[Connection]:
    with connect(f"memory://{uuid.uuid4().hex}?max_message_size=4096") as conn:
        yield conn


def test_a_worker_settles_any_body_without_crashing(memory_conn: Connection) -> None:
    """Given any body on a queue, when a worker takes it, then it either ran or is in the
    failed store with a reason; the worker goes on to the next."""
    queue = memory_conn.queue("hostile")

    @settings(max_examples=60, deadline=2000, database=None)
    @given(st.binary(max_size=600) | json_values.map(lambda v: json.dumps(
        {"payload": v, "metadata": {"id": "x", "attempts": 0}}).encode()))  # fmt: skip
    def check(body: bytes) -> None:
        before = len(memory_conn.failed.list())
        memory_conn.transport.send("hostile", body, {})
        ran: list[object] = []
        assert queue.dispatch(ran.append, retry=NoRetry(), max_messages=1, max_seconds=10,
                              handle_signals=False) == 1  # fmt: skip
        failed = memory_conn.failed.list()[before:]
        assert len(ran) + len(failed) == 1
        if failed:
            assert failed[0].reason and failed[0].body == body

    check()


# -- regressions: one per crash the fuzzing found ------------------------------------------


def test_a_deeply_nested_typed_payload_is_malformed_not_a_recursion_error() -> None:
    body = b'{"payload":' + b"[" * 900 + b"]" * 900 + b',"metadata":{"id":"x","types":true}}'
    with pytest.raises(MalformedMessage, match="nests too deeply"):
        decode(body)


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        ('"priority":100000', "'priority' is not 0-255"),
        ('"attempts":-3', "'attempts' is negative"),
        ('"headers":{"a":1}', "'headers' has a value that is not a string"),
        ('"created_at":NaN', "NaN is not JSON"),
        ('"not_before":Infinity', "Infinity is not JSON"),
    ],
)
def test_metadata_a_worker_could_not_use_later_is_malformed(meta: str, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        decode(b'{"payload":1,"metadata":{"id":"x",' + meta.encode() + b"}}")


def test_a_message_with_a_hostile_priority_fails_instead_of_stopping_the_worker(
    memory_conn: Connection,
) -> None:
    """Before the decoder checked ranges, a retry re-published priority 300 and the
    Broker's check raised out of the worker's settle step."""
    memory_conn.transport.send("q", b'{"payload":1,"metadata":{"id":"x","priority":300}}', {})
    queue = memory_conn.queue("q")
    queue.dispatch(lambda m: 1 / 0, max_messages=1, max_seconds=10, handle_signals=False)
    [entry] = memory_conn.failed.list()
    assert "'priority' is not 0-255" in entry.reason


def test_gearman_job_data_with_deeply_nested_headers_is_all_body() -> None:
    data = gearman_frame.MAGIC + (2000).to_bytes(4, "big") + b"[" * 1000 + b"]" * 1000
    assert gearman_frame.decode(data).body == data


def test_zmq_record_headers_nested_too_deeply_read_as_none() -> None:
    assert wire.decode_headers(b"[" * 5000 + b"]" * 5000) == {}
    record = wire.pack_record(0, b"{" * 10, b"body")
    [delivery], dropped = wire.unpack_work("q", wire.pack_index([1]), [record])
    assert (delivery.body, delivery.headers, dropped) == (b"body", {}, 0)


def test_amqp_header_bytes_that_are_not_utf8_keep_their_bytes_as_escapes() -> None:
    assert amqp_headers({"trace": b"\xff\xfeok", "n": 7}) == {"trace": "\\xff\\xfeok", "n": "7"}


def test_sqlite_headers_column_that_is_not_a_json_object_reads_as_none() -> None:
    assert sqlite_headers("not json") == {}
    assert sqlite_headers("[1, 2]") == {}
    assert sqlite_headers("[" * 5000) == {}
    assert sqlite_headers('{"a": 1}') == {"a": "1"}


def test_a_damaged_sqlite_row_reaches_the_failed_store(tmp_path: Path) -> None:
    """A row another process wrote with headers that are not JSON: before, receive raised
    JSONDecodeError out of the worker; now the body goes to the failed store."""
    url = sqlite_url(tmp_path / "q.db")
    with connect(url) as conn:
        conn.queue("q").publish(1)
        with sqlite3.connect(tmp_path / "q.db") as db:
            db.execute("UPDATE queuekit_messages SET headers = 'garbage', body = x'ff00'")
        conn.queue("q").dispatch(lambda m: None, max_messages=1, max_seconds=10,
                                 handle_signals=False)  # fmt: skip
        [entry] = conn.failed.list()
        assert entry.body == b"\xff\x00" and "not UTF-8" in entry.reason


def test_a_real_rabbitmq_message_with_a_binary_header_is_delivered(tmp_path: Path) -> None:
    """Another AMQP client's message with a header value that is not UTF-8: before, the
    consumer raised UnicodeDecodeError; now the worker gets it (and fails it: not ours)."""
    require_broker("rabbitmq", "127.0.0.1", 5672)
    import amqp

    queue = f"test-hostile-{uuid.uuid4().hex}"
    store = sqlite_url(tmp_path / "jobs.db")
    with connect("amqp://guest:guest@127.0.0.1:5672/", jobstore=store) as conn:
        try:
            conn.queue(queue).publish("first")  # declares the queue as the adapter does
            with amqp.Connection("127.0.0.1:5672", userid="guest", password="guest") as raw:
                channel = raw.channel()
                message = amqp.Message(b"not an envelope", application_headers={"x": b"\xff"})
                channel.basic_publish(message, exchange="", routing_key=queue)
            ran: list[object] = []
            conn.queue(queue).dispatch(ran.append, max_messages=2, max_seconds=20,
                                       handle_signals=False)  # fmt: skip
            [entry] = conn.failed.list(queue)
            assert entry.headers == {"x": "\\xff"} and entry.body == b"not an envelope"
            assert len(ran) == 1
        finally:
            conn.transport.delete(queue)


# -- size caps --------------------------------------------------------------------------------


def test_publish_and_receive_refuse_a_body_above_the_limit(memory_conn: Connection) -> None:
    with pytest.raises(MessageTooLarge):
        memory_conn.queue("big").publish("x" * 5000)
    memory_conn.transport.send("big", b"y" * 5000, {})  # from a producer without the limit
    memory_conn.queue("big").dispatch(lambda m: None, max_messages=1, max_seconds=10,
                                      handle_signals=False)  # fmt: skip
    [entry] = memory_conn.failed.list()
    assert entry.reason == "the body is 5000 bytes, above the limit of 4096 (max_message_size)"
    assert len(entry.body) == 5000


def test_sqlite_and_memory_default_to_a_64_mib_limit(tmp_path: Path) -> None:
    with connect(sqlite_url(tmp_path / "q.db")) as conn:
        assert conn.broker.max_body == 64 * 1024 * 1024


def test_a_gearman_worker_drops_a_server_sending_a_job_above_its_limit(tmp_path: Path) -> None:
    require_broker("gearman", "127.0.0.1", 4731)
    queue = f"test-hostile-{uuid.uuid4().hex[:12]}"
    store = sqlite_url(tmp_path / "jobs.db")
    with connect("gearman://127.0.0.1:4731", jobstore=store) as big, \
            connect("gearman://127.0.0.1:4731?max_message_size=1000",
                    jobstore=store) as small:  # fmt: skip
        try:
            big.transport.send(queue, b"z" * 300_000, {})
            with pytest.raises(ConnectionLost):
                small.transport.receive(queue, 5)
            delivery = big.transport.receive(queue, 5)  # the job went back to gearmand
            assert delivery is not None and len(delivery.body) == 300_000
            big.transport.ack(delivery)
        finally:
            big.transport.purge(queue)
