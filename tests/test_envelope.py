"""The envelope: JSON in, the same payload out; anything else is MalformedMessage with a reason."""

from __future__ import annotations

import json
import re
import sys
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queuekit import MalformedMessage, Message, Metadata
from queuekit.features.envelope import decode, encode

DETERMINISTIC = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow],
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**60), max_value=10**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@DETERMINISTIC
@given(json_values)
def test_json_payloads_round_trip(payload: object) -> None:
    message = Message(payload, Metadata(name="job"))
    decoded = decode(encode(message))
    assert decoded.payload == payload
    assert type(decoded.payload) is type(payload)
    assert decoded.metadata == message.metadata


@DETERMINISTIC
@given(st.binary(max_size=512))
def test_bytes_payloads_round_trip_exactly_and_stay_bytes(payload: bytes) -> None:
    decoded = decode(encode(Message(payload)))
    assert decoded.payload == payload
    assert isinstance(decoded.payload, bytes)


def test_a_string_that_looks_like_base64_stays_a_string() -> None:
    assert decode(encode(Message("aGVsbG8="))).payload == "aGVsbG8="


def test_unicode_and_big_integers_survive() -> None:
    payload = {"name": "Zoë 🚀 ñandú 漢字", "big": 2**200, "neg": -(2**64) - 1, "\u2028": "x"}
    body = encode(Message(payload))
    assert "Zoë".encode() in body  # readable UTF-8 on the wire, not \\u escapes
    assert decode(body).payload == payload


def test_every_metadata_field_survives() -> None:
    meta = Metadata(
        name="welcome",
        attempts=3,
        not_before=1_900_000_000.5,
        priority=7,
        key="user-1",
        group="g",
        correlation_id="c",
        reply_to="replies",
        retry={"kind": "repeat", "times": 2, "every": 1.0},
        headers={"traceparent": "00-abc"},
    )
    assert decode(encode(Message({"a": 1}, meta))).metadata == meta


@pytest.mark.parametrize(
    "payload",
    [float("nan"), float("inf"), object(), {1j}, 10**5000],
    ids=["nan", "inf", "object", "set", "huge-int"],
)
def test_a_payload_json_cannot_carry_is_refused_at_encode(payload: object) -> None:
    with pytest.raises(TypeError, match="cannot be sent as JSON"):
        encode(Message(payload))


# -- typed values: datetime, date, UUID, Decimal, bytes anywhere in a payload ---------------

typed_scalars = (
    st.datetimes(timezones=st.none() | st.timezones())
    | st.dates()
    | st.uuids()
    | st.decimals(allow_nan=False)
    | st.binary(max_size=20)
)
typed_values = st.recursive(
    json_scalars | typed_scalars | st.dictionaries(st.just("$qk:date"), st.text(), max_size=1),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


def _same(a: object, b: object) -> bool:
    """Equal, and of the same types all the way down (1 == True, but not here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)  # type: ignore[attr-defined,index]
    if isinstance(a, datetime):
        # the wall time and its UTC offset survive, not a zone's name (ZoneInfo); compared
        # without tzinfo, as == across zones is False for a time in a DST gap or fold
        same_offset = a.utcoffset() == b.utcoffset()  # type: ignore[attr-defined]
        return same_offset and a.replace(tzinfo=None) == b.replace(tzinfo=None)  # type: ignore[attr-defined]
    return a == b or (isinstance(a, Decimal) and str(a) == str(b))


@DETERMINISTIC
@given(typed_values)
def test_typed_values_round_trip_as_their_own_types(payload: object) -> None:
    assert _same(decode(encode(Message(payload))).payload, payload)


def test_typed_values_come_back_typed_and_plain_payloads_are_not_flagged() -> None:
    at = datetime(2026, 12, 5, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    ident = uuid.uuid4()
    payload = {"at": at, "day": date(2026, 12, 5), "user": ident, "amount": Decimal("10.50"),
               "raw": [b"\x00\xff"], "pair": (1, 2)}  # fmt: skip
    body = encode(Message(payload))
    assert json.loads(body)["metadata"]["types"] is True
    got = decode(body).payload
    assert got == {**payload, "pair": [1, 2]}
    assert str(got["amount"]) == "10.50" and got["at"].utcoffset() == timedelta(hours=2)
    assert "types" not in json.loads(encode(Message({"n": 1, "$qk:date": "x"})))["metadata"]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"$qk:uuid": "not a uuid"}, "broken typed value"),
        ({"$qk:decimal": "one"}, "broken typed value"),
        ({"$qk:frobnicate": "x"}, "unknown typed value"),
        ({"$qk:date": 7}, "broken typed value"),
    ],
)
def test_a_broken_typed_value_is_malformed(payload: object, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        decode(_body(payload, types=True))


def _body(payload: object = 1, **meta: object) -> bytes:
    return json.dumps({"payload": payload, "metadata": {"id": "m1", **meta}}).encode()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"garbage", "not JSON"),
        (b"", "not JSON"),
        (b"[1, 2]", "not a queuekit envelope"),
        (b'{"payload": 1}', "not a queuekit envelope"),
        (b'{"metadata": {"id": "x"}}', "not a queuekit envelope"),
        (b'{"payload": 1, "metadata": [1]}', "metadata is not an object"),
        (_body(attempts="3"), "'attempts' has the wrong type"),
        (_body(attempts=True), "'attempts' has the wrong type"),
        (_body(priority=1.5), "'priority' has the wrong type"),
        (_body(headers=["a"]), "'headers' has the wrong type"),
        (_body(not_before="soon"), "'not_before' has the wrong type"),
        (_body(surprise=1), "unknown metadata field 'surprise'"),
        (b'{"payload": 1, "metadata": {"name": "x"}}', "has no id"),
        (_body("!!!not base64", encoding="base64"), "not valid base64"),
        (_body(12, encoding="base64"), "base64 payload is not a string"),
        (_body("x", encoding="rot13"), "unknown payload encoding 'rot13'"),
    ],
)
def test_malformed_bodies_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage) as caught:
        decode(body)
    assert reason in caught.value.reason
    assert caught.value.body == body
    assert "malformed message" in str(caught.value)


@DETERMINISTIC
@given(st.binary(max_size=256) | st.text(max_size=256).map(str.encode))
def test_any_bytes_decode_or_raise_malformed_and_nothing_else(body: bytes) -> None:
    try:
        decode(body)
    except MalformedMessage as exc:
        assert exc.body == body


def test_deeply_nested_garbage_is_malformed_not_a_crash() -> None:
    with pytest.raises(MalformedMessage):
        decode(b"[" * (sys.getrecursionlimit() * 20))


def test_an_integer_too_long_to_parse_is_malformed() -> None:
    with pytest.raises(MalformedMessage, match="not JSON"):
        decode(b'{"payload": ' + b"9" * 5000 + b', "metadata": {"id": "x"}}')


def test_no_pickle_anywhere_in_queuekit() -> None:
    package = Path(__file__).resolve().parents[1] / "queuekit"
    pattern = re.compile(r"\b(c?pickle|marshal|shelve|dill|cloudpickle)\b")
    offenders = [
        f"{path.relative_to(package.parent)}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line) and not line.lstrip().startswith("#")
    ]
    # The word may appear in prose that says it is *not* used; code may not import it.
    imports = [o for o in offenders if re.search(r"\bimport\b|\bloads?\(|\bdumps?\(", o)]
    assert imports == [], imports
