"""xmpp:// against raw slixmpp on the same Prosody, in one run (run by hand).

    scripts/brokers up prosody
    .venv/bin/python bench/bench_xmpp.py [--messages 2000] [--runs 5] [--size 200]
    .venv/bin/python bench/bench_xmpp.py --quick      # smoke run: 100 messages, one run

Three workloads, each measured for raw slixmpp (one asyncio client, the same XEP-0060 calls,
up to 256 IQs in flight) and for queuekit's transport, alternating, medians of --runs:

- publish:  persisted queue items (publish-options persist_items/max_items), confirmed;
            queuekit: ``send_many``.
- consume:  drain a queue of N items. Raw: list the node once, retract each item (awaited,
            the ack). queuekit: ``receive`` + ``ack`` (which also marks each taken item).
- fanout:   receiving: the raw client publishes N items to an unpersisted node as fast as
            it can (pipelined); the subscriber is the raw client itself or a queuekit
            subscription read with ``receive``. Publish start to last item received.
- broadcast: publishing one at a time, each confirmed before the next (raw: awaited
            publish; queuekit: ``broadcast``, which has no batch form).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import report
import slixmpp
from slixmpp.plugins.xep_0004 import Form

from queuekit.adapters.xmpp import XMPPTransport
from queuekit.spi import Outgoing
from queuekit.spi.urls import TransportURL

URL = (
    "xmpp://queuekit:queuekit@127.0.0.1:5222/?domain=localhost&pubsub=pubsub.localhost"
    "&tls=off&allow_plaintext=1"
)
SERVICE = "pubsub.localhost"
NS = "urn:bench:0"
WINDOW = 256
_EV = "{http://jabber.org/protocol/pubsub#event}"
EVENT_ITEMS = f"{_EV}event/{_EV}items/{_EV}item"


def _form(form_type: str, values: dict[str, Any]) -> Any:
    form = Form()
    form["type"] = "submit"
    form.add_field(var="FORM_TYPE", ftype="hidden", value=form_type)
    for var, value in values.items():
        form.add_field(var=var, value=value)
    return form


class Raw:
    """A plain slixmpp client on its own loop: what an application would write by hand."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.received = 0
        self.target = 0
        self.done: asyncio.Event | None = None
        self.call(self._connect())

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def _connect(self) -> None:
        x = slixmpp.ClientXMPP(f"queuekit@localhost/raw-{uuid.uuid4().hex[:6]}", "queuekit")
        x.enable_starttls, x.enable_direct_tls, x.enable_plaintext = False, False, True
        for plugin in ("xep_0030", "xep_0004", "xep_0060"):
            x.register_plugin(plugin)
        x.plugin["feature_mechanisms"].unencrypted_scram = True
        started = asyncio.Event()
        x.add_event_handler("session_start", lambda _: started.set())
        x.add_event_handler("pubsub_publish", self._on_publish)
        x.connect("127.0.0.1", 5222)
        await asyncio.wait_for(started.wait(), 10)
        self.x, self.ps = x, x.plugin["xep_0060"]

    def _on_publish(self, msg: Any) -> None:
        self.received += len(msg.xml.findall(EVENT_ITEMS))
        if self.done is not None and self.received >= self.target:
            self.done.set()

    async def create(self, node: str, persist: bool) -> None:
        config = {"pubsub#persist_items": persist, "pubsub#access_model": "open"}
        if persist:
            config["pubsub#max_items"] = "max"
        form = _form("http://jabber.org/protocol/pubsub#node_config", config)
        await self.ps.create_node(SERVICE, node, config=form)

    async def publish(self, node: str, bodies: list[bytes], persist: bool) -> None:
        options = None
        if persist:
            options = _form(
                "http://jabber.org/protocol/pubsub#publish-options",
                {"pubsub#persist_items": True, "pubsub#max_items": "max"},
            )
        window: set[Any] = set()
        for body in bodies:
            if len(window) >= WINDOW:
                _, window = await asyncio.wait(window, return_when=asyncio.FIRST_COMPLETED)
            payload = ET.Element(f"{{{NS}}}m")
            payload.text = body.decode()
            window.add(
                self.ps.publish(
                    SERVICE, node, id=uuid.uuid4().hex, payload=payload, options=options
                )
            )
        if window:
            await asyncio.wait(window)

    async def consume(self, node: str) -> int:
        reply = await self.ps.get_items(SERVICE, node)
        ids = [i["id"] for i in reply["pubsub"]["items"]]
        for item_id in ids:
            await self.ps.retract(SERVICE, node, item_id)
        return len(ids)

    async def fanout(self, node: str, bodies: list[bytes]) -> None:
        await self.ps.subscribe(SERVICE, node, bare=False)
        self.received, self.target, self.done = 0, len(bodies), asyncio.Event()
        await self.publish(node, bodies, persist=False)
        await asyncio.wait_for(self.done.wait(), 120)
        self.done = None
        await self.ps.unsubscribe(SERVICE, node, bare=False)

    async def publish_each(self, node: str, bodies: list[bytes]) -> None:
        for body in bodies:
            payload = ET.Element(f"{{{NS}}}m")
            payload.text = body.decode()
            await self.ps.publish(SERVICE, node, id=uuid.uuid4().hex, payload=payload)

    async def delete(self, node: str) -> None:
        await self.ps.delete_node(SERVICE, node)

    def close(self) -> None:
        async def stop() -> None:
            self.x.disconnect()
            await self.x.disconnected
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def bodies(n: int, size: int) -> list[bytes]:
    pad = "x" * max(0, size - 12)
    return [f'{{"n":{i},"p":"{pad}"}}'.encode() for i in range(n)]


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def raw_round(raw: Raw, n: int, size: int) -> dict[str, float]:
    node = f"bench/raw/{uuid.uuid4().hex[:8]}"
    raw.call(raw.create(node, True))
    data = bodies(n, size)
    rates = {"publish": n / timed(lambda: raw.call(raw.publish(node, data, True)))}
    consumed: list[int] = []
    rates["consume"] = n / timed(lambda: consumed.append(raw.call(raw.consume(node))))
    assert consumed == [n], consumed
    raw.call(raw.delete(node))
    topic = f"bench/rawtopic/{uuid.uuid4().hex[:8]}"
    raw.call(raw.create(topic, False))
    rates["fanout"] = n / timed(lambda: raw.call(raw.fanout(topic, data)))
    rates["broadcast"] = n / timed(lambda: raw.call(raw.publish_each(topic, data)))
    raw.call(raw.delete(topic))
    return rates


def qk_round(
    raw: Raw, producer: XMPPTransport, consumer: XMPPTransport, n: int, size: int
) -> dict[str, float]:
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    data = bodies(n, size)
    rates = {"publish": n / timed(lambda: producer.send_many(queue, [Outgoing(b) for b in data]))}

    def drain() -> None:
        got = 0
        while got < n:
            delivery = consumer.receive(queue, 10.0)
            assert delivery is not None, f"only {got} of {n}"
            consumer.ack(delivery)
            got += 1

    rates["consume"] = n / timed(drain)
    producer.delete(queue)
    topic = f"bench.{uuid.uuid4().hex[:8]}"
    sub = consumer.subscribe(topic)

    node = producer.settings.topic_node(topic)

    def fanout() -> None:
        sender = threading.Thread(target=raw.call, args=(raw.publish(node, data, False),))
        sender.start()
        for _ in range(n):
            assert consumer.receive(sub, 10.0) is not None
        sender.join()

    rates["fanout"] = n / timed(fanout)
    consumer.unsubscribe(sub)
    rates["broadcast"] = n / timed(lambda: [producer.broadcast(topic, b, {}) for b in data])
    raw.call(raw.delete(node))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=200)
    args = report.parse_args(parser, {"messages": 100, "runs": 1})
    raw = Raw()
    url = TransportURL.parse(URL)
    producer, consumer = XMPPTransport(url), XMPPTransport(url, prefetch=64)
    results: dict[str, dict[str, list[float]]] = {"raw slixmpp": {}, "queuekit": {}}
    try:
        for run in range(args.runs):
            for label, rates in (
                ("raw slixmpp", raw_round(raw, args.messages, args.size)),
                ("queuekit", qk_round(raw, producer, consumer, args.messages, args.size)),
            ):
                for key, value in rates.items():
                    results[label].setdefault(key, []).append(value)
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    finally:
        producer.close()
        consumer.close()
        raw.close()
    report.heading(
        "XMPP benchmark",
        f"Prosody, {args.messages:,} messages of ~{args.size} B, median of {args.runs} runs.",
    )
    rows: list[list[report.Cell]] = []
    for key in ("publish", "consume", "fanout", "broadcast"):
        r = statistics.median(results["raw slixmpp"][key])
        q = statistics.median(results["queuekit"][key])
        rows.append([key, r, q, report.ratio(q, r)])
    report.table(["workload", "raw slixmpp msg/s", "queuekit msg/s", "ratio"], rows)


if __name__ == "__main__":
    main()
