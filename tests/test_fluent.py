"""The fluent publish form: options in any order, then ``publish()``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuekit import AbstractQueue, Connection, Message, connect
from tests.workers.harness import sqlite_url

SAFETY = 20.0


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[Connection]:
    with connect(sqlite_url(tmp_path / "fluent.db")) as connection:
        yield connection


class WelcomeMail(AbstractQueue):
    queue = "emails"

    def work(self, message: Message) -> None:
        return None


def one(conn: Connection, queue: str) -> Message:
    got: list[Message] = []
    conn.queue(queue).dispatch(got.append, max_messages=1, max_seconds=SAFETY)
    [message] = got
    return message


def test_options_in_any_order_give_the_same_message(conn: Connection) -> None:
    start = time.time()
    first = WelcomeMail.job(7).using(conn).delay(0.05).priority(20).with_key("user-7")
    second = WelcomeMail.job(8).priority(20).with_key("user-8").delay(0.05).using(conn)
    first.publish()
    second.publish()
    a, b = one(conn, "emails"), one(conn, "emails")
    for message, n in ((a, 7), (b, 8)):
        meta = message.metadata
        assert message.payload == n
        assert (meta.name, meta.priority, meta.key) == ("WelcomeMail", 20, f"user-{n}")
        assert meta.not_before is not None and meta.not_before >= start + 0.05


def test_on_queue_routes_elsewhere(conn: Connection) -> None:
    WelcomeMail.job({"to": "a"}).on_queue("vip-emails").using(conn).publish()
    assert conn.queue("vip-emails").depth() == 1
    assert conn.queue("emails").depth() == 0


def test_a_queue_has_the_fluent_form_too(conn: Connection) -> None:
    queue = conn.queue("reports")
    message_id = queue.job("r").priority(3).named("Report").record().publish()
    message = one(conn, "reports")
    assert (message.id, message.metadata.priority, message.metadata.name) == (message_id, 3,
                                                                              "Report")  # fmt: skip
    assert conn.job(message_id) is not None
    queue.job("x").on_queue("other").publish()
    assert conn.queue("other").depth() == 1


def test_while_pending_is_the_key_dedup(conn: Connection) -> None:
    queue = conn.queue("dedup")
    queue.job(1).with_key("k").while_pending().publish()
    queue.job(2).while_pending().with_key("k").publish()
    assert queue.depth() == 1
    with pytest.raises(ValueError, match="needs a key"):
        queue.job(3).while_pending().publish()


def test_the_issue_chain_runs_once_ever_and_in_its_group(conn: Connection) -> None:
    for user_id in (1, 1, 2):
        WelcomeMail.job(user_id).using(conn).on_queue("emails").delay(0.01).with_key(
            f"user-{user_id}"
        ).once_ever().in_group("welcome").publish()
    seen: list[Message] = []
    conn.queue("emails").dispatch(seen.append, max_messages=2, max_seconds=SAFETY)
    assert [(m.payload, m.metadata.group, m.metadata.once) for m in seen] == [
        (1, "welcome", True),
        (2, "welcome", True),
    ]
    WelcomeMail.job(1).using(conn).with_key("user-1").once_ever().publish()
    assert conn.queue("emails").depth() == 0
    with pytest.raises(ValueError, match="ever dedup needs a key"):
        WelcomeMail.job(3).using(conn).once_ever().publish()


def test_a_class_priority_is_the_default_and_a_message_overrides_it(conn: Connection) -> None:
    class Urgent(WelcomeMail):
        queue = "urgent"
        priority = 200

    Urgent.job("default").using(conn).publish()
    Urgent(conn).publish("own", priority=3)
    got = [one(conn, "urgent").metadata.priority for _ in range(2)]
    assert got == [200, 3]


def test_a_bad_option_is_refused_where_it_is_written(conn: Connection) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        WelcomeMail.job(1).delay("next tuesday-ish")
    with pytest.raises(ValueError, match="priority"):
        WelcomeMail.job(1).priority(999).using(conn).publish()


def test_a_template_is_immutable_and_reusable(conn: Connection) -> None:
    urgent = conn.queue("t").job(None).priority(200)
    urgent.with_headers(trace="a").publish()
    plain = urgent.priority(1)
    plain.publish()
    first, second = one(conn, "t"), one(conn, "t")
    assert (first.metadata.priority, first.headers) == (200, {"trace": "a"})
    assert (second.metadata.priority, second.headers) == (1, {})


class Recorded(AbstractQueue):
    queue = "recorded-fluent"
    keep_records = True

    def work(self, message: Message) -> None:
        return None


def test_a_class_without_a_connection_opens_its_configured_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sqlite_url(tmp_path / "configured.db")
    monkeypatch.setenv("QUEUEKIT_URL", url)
    message_id = Recorded.job("hi").publish()
    with connect(url) as conn:
        assert conn.queue("recorded-fluent").depth() == 1
        record = conn.job(message_id)
        assert record is not None and record.state == "queued" and record.name == "Recorded"


def test_fluent_publishes_join_a_bulk_block(conn: Connection) -> None:
    queue = conn.queue("bulked")
    with queue.bulk(size=10):
        queue.job(1).priority(5).publish()
        WelcomeMail.job(2).on_queue("bulked").using(conn).publish()
        assert queue.depth() == 0
    assert queue.depth() == 2
