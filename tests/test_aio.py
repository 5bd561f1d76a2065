"""AsyncQueue: publishing and calling from asyncio code never blocks the event loop."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuekit import AsyncQueue, Connection, connect
from queuekit.adapters.memory import MemoryTransport
from queuekit.spi import Headers, SendOptions, register_transport
from queuekit.spi.transport import NO_OPTIONS
from tests.support import require_broker
from tests.workers.harness import sqlite_url

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/"
SAFETY = 60


class GateTransport(MemoryTransport):
    """A broker whose ``send`` waits until ``OPEN`` is set: a slow broker, by command."""

    name = "memory-gate"
    OPEN = threading.Event()

    def send(
        self, queue: str, body: bytes, headers: Headers, *, options: SendOptions = NO_OPTIONS
    ) -> None:
        assert self.OPEN.wait(SAFETY), "the gate was never opened"
        super().send(queue, body, headers, options=options)


register_transport("qktest-gate", GateTransport)


def test_a_publish_waiting_on_the_broker_leaves_the_loop_free() -> None:
    async def scenario(conn: Connection) -> str:
        queue = AsyncQueue(conn.queue("mail"))
        publishing = asyncio.create_task(queue.publish({"to": "a@example.com"}))
        await asyncio.sleep(0)  # the publish is now waiting in its thread, on the gate
        assert not publishing.done()
        GateTransport.OPEN.set()  # only a loop that still runs gets here: no deadlock
        return await asyncio.wait_for(publishing, SAFETY)

    GateTransport.OPEN.clear()
    with connect(f"qktest-gate://{uuid.uuid4().hex}") as conn:
        message_id = asyncio.run(scenario(conn))
        delivery = conn.transport.receive("mail", 1)
        assert delivery is not None
        assert delivery.body and message_id in delivery.body.decode()


@pytest.fixture(params=["sqlite", "rabbitmq"])
def conn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Connection]:
    if request.param == "rabbitmq":
        require_broker("rabbitmq", "127.0.0.1", 5672)
        url = RABBITMQ
    else:
        url = sqlite_url(tmp_path / "q.db")
    with connect(url) as connection:
        yield connection


def test_many_tasks_publish_at_once(conn: Connection) -> None:
    name = f"aio-{uuid.uuid4().hex[:10]}"

    async def scenario() -> list[str]:
        queue = AsyncQueue(conn.queue(name))
        many = await queue.publish_many([{"n": n} for n in range(50)])
        one_by_one = await asyncio.gather(*(queue.publish({"n": n}) for n in range(50, 100)))
        return many + list(one_by_one)

    try:
        ids = asyncio.run(scenario())
        assert len(set(ids)) == 100
        got: list[int] = []
        conn.queue(name).dispatch(lambda m: got.append(m.payload["n"]), max_messages=100,
                                  max_seconds=SAFETY, handle_signals=False)  # fmt: skip
        assert sorted(got) == list(range(100))
    finally:
        conn.transport.delete(name)


def test_call_awaits_the_worker_s_reply(conn: Connection) -> None:
    name = f"aio-call-{uuid.uuid4().hex[:10]}"
    worker = threading.Thread(
        target=lambda: conn.queue(name).dispatch(
            lambda m: {"doubled": 2 * m.payload["n"]}, max_messages=3, max_seconds=SAFETY,
            handle_signals=False,
        ),
    )  # fmt: skip
    worker.start()

    async def scenario() -> tuple[object, list[object]]:
        queue = AsyncQueue(conn.queue(name))
        one = await queue.call({"n": 21}, timeout=SAFETY)
        replies = await queue.gather([{"n": 1}, {"n": 2}], timeout=SAFETY)
        return one, [r.value if r else None for r in replies]

    try:
        assert asyncio.run(scenario()) == ({"doubled": 42}, [{"doubled": 2}, {"doubled": 4}])
    finally:
        worker.join(SAFETY)
        conn.transport.delete(name)
