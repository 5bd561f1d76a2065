"""The event manager and the bridge from service events to queue messages."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from queuekit import Event, EventManager, bridge, connect
from queuekit.features.envelope import decode


def test_attach_trigger_detach() -> None:
    events = EventManager()
    seen: list[tuple[str, object, dict[str, object]]] = []

    def listener(event: Event) -> str:
        seen.append((event.name, event.target, event.params))
        return "ok"

    assert events.attach("user.saved", listener) is listener
    assert events.trigger("user.saved", "ada", email="a@example.com") == ["ok"]
    assert seen == [("user.saved", "ada", {"email": "a@example.com"})]

    assert events.trigger("user.deleted") == []
    assert events.detach(listener) is True
    assert events.detach(listener) is False
    assert events.trigger("user.saved") == []
    assert len(seen) == 1


def test_detach_from_one_pattern_keeps_the_others() -> None:
    events = EventManager()
    calls: list[str] = []

    def listener(event: Event) -> None:
        calls.append(event.name)

    events.attach("a.x", listener)
    events.attach("b.x", listener)
    assert events.detach(listener, "a.x") is True
    events.trigger("a.x")
    events.trigger("b.x")
    assert calls == ["b.x"]


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("user.*", ["user.saved", "user.deleted"], ["user", "user.saved.twice", "order.saved"]),
        ("#", ["user", "user.saved", "a.b.c.d"], []),
        ("user.#", ["user.saved", "user.a.b", "user"], ["users.saved"]),
        ("*.saved", ["user.saved", "order.saved"], ["saved", "a.b.saved"]),
        ("user.saved", ["user.saved"], ["user.save", "user.saved.x"]),
    ],
)
def test_wildcard_patterns(pattern: str, matches: list[str], misses: list[str]) -> None:
    events = EventManager()
    seen: list[str] = []
    events.attach(pattern, lambda e: seen.append(e.name))
    for name in matches + misses:
        events.trigger(name)
    assert seen == matches


def test_listeners_run_by_priority_then_attachment_order() -> None:
    events = EventManager()
    order: list[str] = []
    events.attach("e", lambda e: order.append("low"), priority=-5)
    events.attach("e", lambda e: order.append("first-default"))
    events.attach("#", lambda e: order.append("high"), priority=10)
    events.attach("e", lambda e: order.append("second-default"))
    events.trigger("e")
    assert order == ["high", "first-default", "second-default", "low"]


def test_stop_propagation_ends_the_trigger() -> None:
    events = EventManager()
    order: list[str] = []

    def stopper(event: Event) -> str:
        order.append("stopper")
        event.stop_propagation()
        return "stopped"

    events.attach("e", lambda e: order.append("first"), priority=2)
    events.attach("e", stopper, priority=1)
    events.attach("e", lambda e: order.append("never"))
    assert events.trigger("e") == [None, "stopped"]
    assert order == ["first", "stopper"]


def test_a_listener_may_detach_itself_while_triggered() -> None:
    events = EventManager()
    calls: list[str] = []

    def once(event: Event) -> None:
        calls.append(event.name)
        events.detach(once)

    events.attach("e", once)
    events.trigger("e")
    events.trigger("e")
    assert calls == ["e"]


def test_bridge_queues_one_message_per_event_named_after_it() -> None:
    with connect(f"memory://{uuid.uuid4().hex}") as conn:
        queue = conn.queue("email")
        events = EventManager()
        listener = bridge(
            events,
            "user.*",
            queue,
            to_payload=lambda e: {"to": e.params["email"], "user": e.target},
        )
        [first_id] = events.trigger("user.saved", "ada", email="ada@example.com")
        [second_id] = events.trigger("user.updated", "bob", email="bob@example.com")
        events.trigger("order.saved", "x", email="nobody@example.com")
        assert queue.depth() == 2

        received = []
        for _ in range(2):
            delivery = conn.transport.receive("email", 1)
            assert delivery is not None
            received.append(decode(delivery.body))
            conn.transport.ack(delivery)
        assert [(m.id, m.metadata.name, m.payload) for m in received] == [
            (first_id, "user.saved", {"to": "ada@example.com", "user": "ada"}),
            (second_id, "user.updated", {"to": "bob@example.com", "user": "bob"}),
        ]

        assert events.detach(listener)
        events.trigger("user.saved", "eve", email="eve@example.com")
        assert queue.depth() == 0


def test_bridge_default_payload_and_publish_options() -> None:
    with connect(f"memory://{uuid.uuid4().hex}") as conn:
        events = EventManager()
        bridge(events, "#", conn.queue("audit"), priority=3, headers={"source": "svc"})
        events.trigger("user.saved", object(), id=7)
        delivery = conn.transport.receive("audit", 1)
        assert delivery is not None
        message = decode(delivery.body)
        assert message.payload == {"event": "user.saved", "params": {"id": 7}}
        assert message.metadata.name == "user.saved"
        assert message.headers == {"source": "svc"}


def test_bridging_to_a_queue_type_checks(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    snippet = tmp_path / "user_code.py"
    snippet.write_text(
        "from queuekit import EventManager, bridge, connect\n"
        "with connect('memory://x') as conn:\n"
        "    bridge(EventManager(), 'user.saved', conn.queue('email'))\n"
        "    bridge(EventManager(), 'user.saved', conn.topic('users'))\n",
        encoding="utf-8",
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", str(snippet)],
        cwd=root,  # the project's .mypy_cache: warm after the first run
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout
