"""Priority ranges: workers that take only part of a queue's priorities."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from queuekit import Connection, Message, PriorityRange, Unsupported, connect
from queuekit.spi.errors import ConfigurationError
from queuekit.spi.priorities import PriorityBands
from queuekit.spi.urls import TransportURL
from tests.workers.harness import lines, run_worker, sqlite_url
from tests.workers.transports import NODELAY

SAFETY = 20.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10", (10, 10)), ("20-40", (20, 40)), ("25-", (25, 255)), ("-20", (0, 20))],
)
def test_ranges_read_as_the_cli_writes_them(text: str, expected: tuple[int, int]) -> None:
    parsed = PriorityRange.parse(text)
    assert (parsed.lowest, parsed.highest) == expected
    assert expected[0] in parsed and expected[1] in parsed
    assert expected[1] + 1 not in parsed


@pytest.mark.parametrize("text", ["", "-", "x", "40-20", "256", "1-2-3", "-300"])
def test_a_bad_range_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="priority range"):
        PriorityRange.parse(text)


def test_bands_partition_the_scale_and_a_range_must_fall_on_them() -> None:
    bands = PriorityBands()
    assert [str(b) for b in bands.ranges] == ["0-49", "50-99", "100-149", "150-199", "200-255"]
    assert [bands.start_of(p) for p in (None, 0, 49, 50, 199, 200, 255)] == [0, 0, 0, 50, 150,
                                                                            200, 200]  # fmt: skip
    assert bands.queues("q") == ["q#200", "q#150", "q#100", "q#50", "q"]
    assert bands.starts_within(PriorityRange(50, 255), "x") == [200, 150, 100, 50]
    assert bands.starts_within(PriorityRange(0, 49), "x") == [0]
    for cut in (PriorityRange(10, 40), PriorityRange(50, 120), PriorityRange(60)):
        with pytest.raises(Unsupported, match=r"x does not support the priority range .*"
                                              r"set \?priority_bands="):  # fmt: skip
            bands.starts_within(cut, "x")


@pytest.mark.parametrize(
    ("query", "starts"),
    [("", (50, 100, 150, 200)), ("?priority_bands=100,200", (100, 200)),
     ("?priority_bands=", ()), ("?priority_bands=0", ())],
)  # fmt: skip
def test_bands_come_from_the_url(query: str, starts: tuple[int, ...]) -> None:
    assert PriorityBands.from_url(TransportURL.parse(f"amqp://h/{query}")).starts == starts


@pytest.mark.parametrize("text", ["200,100", "50,50", "x", "256", "-5"])
def test_bad_bands_are_a_configuration_error(text: str) -> None:
    url = TransportURL.parse(f"amqp://h/?priority_bands={text}")
    with pytest.raises(ConfigurationError, match="priority_bands"):
        PriorityBands.from_url(url)


def test_a_restricted_worker_takes_only_its_range(conn: Connection, name: str) -> None:
    queue = conn.queue(name)
    for priority in (0, 19, 20, 30, 40, 41, 255):
        queue.publish(priority, priority=priority)
    taken: list[int] = []

    def work(message: Message) -> None:
        taken.append(message.payload)

    queue.dispatch(work, priorities="20-40", max_seconds=1.0)
    assert taken == [40, 30, 20]  # highest first within the range
    queue.dispatch(work, priorities=PriorityRange(200), max_messages=1, max_seconds=SAFETY)
    assert taken[3:] == [255]
    assert queue.depth() == 3  # 0, 19 and 41 still wait for someone else


def test_a_range_is_refused_where_the_broker_cannot_select(name: str) -> None:
    url = f"{NODELAY}://{uuid.uuid4().hex}"
    with connect(url) as conn, pytest.raises(Unsupported, match="priority ranges"):
        conn.queue(name).dispatch(lambda m: None, priorities="10-20", max_seconds=SAFETY)


def test_worker_run_with_p_never_takes_a_low_priority_job(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "q.db")
    with connect(url) as conn:
        queue = conn.queue("records")
        for n, priority in enumerate((5, 50, 10, 90, 0, 60)):
            queue.publish({"n": n, "p": priority}, priority=priority)
    out = tmp_path / "out.txt"
    done = run_worker("run", "tests.workers.queues.RecordingQueue", "--url", url, "-p", "50-",
                      "--max-seconds", "3", cwd=tmp_path, env={"QK_OUT": str(out)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert lines(out) == ["3", "5", "1"]  # priorities 90, 60, 50
    bad = run_worker("run", "tests.workers.queues.RecordingQueue", "--url", url, "-p", "9-1",
                     cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2 and "priority range" in bad.stderr
    with connect(url) as conn:
        left = [json.loads(b)["payload"]["p"] for b in _bodies(conn, "records")]
    assert sorted(left) == [0, 5, 10]


def _bodies(conn: Connection, queue: str) -> list[bytes]:
    got: list[bytes] = []
    while (delivery := conn.transport.receive(queue, 0.2)) is not None:
        got.append(delivery.body)
        conn.transport.ack(delivery)
    return got
