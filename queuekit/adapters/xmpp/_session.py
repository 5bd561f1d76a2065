"""The asyncio side of the XMPP transport: one slixmpp client and the pub/sub state.

Everything here runs on the transport's loop thread, so no locks are needed. A queue is a
persisted node: publishing adds an item, consuming fetches and subscribes, ``ack`` retracts.
A topic is a node whose notifications feed local subscriptions. After a lost connection the
next operation connects again (same resource, so server-side subscriptions still apply),
re-subscribes and re-lists the queues it consumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from xml.etree import ElementTree as ET

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins import xep_0004

from ...core.errors import (
    ConfigurationError,
    ConnectionLost,
    MalformedMessage,
    TransportClosed,
    TransportError,
)
from ._settings import XMPPSettings, decode_payload, encode_payload

T = TypeVar("T")
log = logging.getLogger("queuekit.adapters.xmpp")
_FORM: Any = xep_0004.Form  # slixmpp's data forms are untyped

_PUBSUB = "http://jabber.org/protocol/pubsub"
_EVENT = "{http://jabber.org/protocol/pubsub#event}"
_NODE_CONFIG = "http://jabber.org/protocol/pubsub#node_config"
_PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
_XDATA = "{jabber:x:data}"
_VALIDATE = "{http://jabber.org/protocol/xdata-validate}"
#: Re-count a queue node at least this often while publishing to it (other publishers).
RECOUNT_SECONDS = 5.0


class QueueFull(TransportError):
    """The queue's node holds as many items as the server keeps (``max_items``).

    Publishing more would make the server drop the oldest items silently, so the adapter
    refuses instead. Consume (or purge) the queue, or raise the server's ``pubsub_max_items``.
    """


@dataclass(slots=True)
class Item:
    """One pub/sub item. ``taken`` is the server-side count of consumers that took it
    (stored in the item, see ``Session._mark``); ``marked`` says this consumer counted
    itself in; ``requeued`` counts local ``nack(requeue=True)``."""

    id: str
    body: bytes
    headers: dict[str, str]
    taken: int = 0
    marked: bool = False
    requeued: int = 0


@dataclass(slots=True)
class QueueConsumer:
    """Local view of one queue node being consumed by this transport."""

    node: str
    limit: int
    buffer: deque[Item] = field(default_factory=deque)
    backlog: deque[str] = field(default_factory=deque)  # ids on the node, not fetched yet
    known: set[str] = field(default_factory=set)  # buffered, backlog or delivered ids
    delivered: set[str] = field(default_factory=set)  # handed out, not settled
    ready: bool = False
    stale: bool = True  # the node may hold items we have not listed
    listing: bool = False
    pending: list[Item] = field(default_factory=list)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, item: Item) -> None:
        """A notification: buffer it if it keeps order and fits, else re-list later."""
        if item.id in self.known or item.taken:
            return  # a take mark (ours, or a consumer's before us) is not a new item
        if self.listing:
            self.pending.append(item)
            return
        if self.backlog or self.stale or len(self.buffer) >= self.limit:
            self.stale = True  # it stays on the node; the next listing finds it
        else:
            self.buffer.append(item)
            self.known.add(item.id)
        self.wakeup.set()


@dataclass(slots=True)
class Subscription:
    name: str
    node: str
    limit: int
    buffer: deque[Item] = field(default_factory=deque)
    dropped: int = 0
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, item: Item) -> None:
        if len(self.buffer) >= self.limit:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "xmpp subscription %s: local buffer full (%d), %d notification(s) dropped",
                    self.name,
                    self.limit,
                    self.dropped,
                )
            return
        self.buffer.append(item)
        self.wakeup.set()


@dataclass(slots=True)
class NodeState:
    cap: int | None  # max items the node keeps (None: not persisted)
    depth: int = 0
    sent_since: int = 0
    counted_at: float = 0.0


class Session:
    """Owns the slixmpp client. Every method runs on the loop thread."""

    def __init__(self, settings: XMPPSettings, prefetch: int) -> None:
        self.settings = settings
        self.prefetch = max(1, prefetch)
        self.client: Any = None
        self.connected = False
        self.nodes: dict[str, NodeState] = {}
        self.consumers: dict[str, QueueConsumer] = {}
        self.queue_of_node: dict[str, str] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.by_node: dict[str, list[Subscription]] = {}
        self._connecting: asyncio.Future[None] | None = None
        self._iqs: set[asyncio.Future[Any]] = set()
        self._operations: set[asyncio.Task[Any]] = set()
        self.closing = False

    async def run(self, operation: Awaitable[T]) -> T:
        """Run one operation of the blocking API, so ``close`` can cancel it."""
        task = asyncio.current_task()
        assert task is not None
        if self.closing:
            raise TransportClosed("xmpp transport is closed")
        self._operations.add(task)
        try:
            return await operation
        finally:
            self._operations.discard(task)

    # -- connection ----------------------------------------------------------------------

    async def ensure(self) -> Any:
        if self.connected:
            return self.client
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None
        return self.client

    async def _connect(self) -> None:
        s = self.settings
        await self._drop_client()
        client = slixmpp.ClientXMPP(f"{s.jid}/{s.resource}", s.password)
        client.enable_direct_tls = False
        client.enable_starttls = s.tls
        client.enable_plaintext = not s.tls
        if s.cafile:
            client.ca_certs = Path(s.cafile)
        for plugin in ("xep_0030", "xep_0004", "xep_0060"):
            client.register_plugin(plugin)
        client.plugin["feature_mechanisms"].unencrypted_scram = s.allow_plaintext
        outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def settle(result: str) -> None:
            if not outcome.done():
                outcome.set_result(result)

        client.add_event_handler("session_start", lambda _: settle("ok"))
        client.add_event_handler("failed_all_auth", lambda _: settle("auth"))
        client.add_event_handler("connection_failed", lambda e: settle(f"connect: {e}"))
        client.add_event_handler("disconnected", lambda _: self._on_disconnected(client))
        client.add_event_handler("pubsub_publish", self._on_publish)
        self.client = client
        client.connect(s.host, s.port)
        try:
            result = await asyncio.wait_for(outcome, s.timeout)
        except TimeoutError:
            result = "timeout"
        if result != "ok":
            await self._drop_client()
            where = f"{s.host}:{s.port}"
            if result == "auth":
                raise ConfigurationError(f"xmpp: authentication as {s.jid} failed at {where}")
            raise ConnectionLost(f"xmpp: cannot reach {where} ({result})")
        self.connected = True
        await self._restore()

    async def _restore(self) -> None:
        """After (re)connecting: subscribe again to what this transport listens to."""
        for consumer in self.consumers.values():
            if consumer.ready:
                await self._subscribe_node(consumer.node)
                consumer.stale = True
        for node in list(self.by_node):
            await self._subscribe_node(node)

    def _on_disconnected(self, client: Any) -> None:
        if client is not self.client:
            return
        self.connected = False
        for future in self._iqs:
            if not future.done():
                future.set_exception(ConnectionLost("xmpp: connection lost"))

    async def _drop_client(self) -> None:
        client, self.client = self.client, None
        self.connected = False
        if client is None:
            return
        client.cancel_connection_attempt()
        if client.transport is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(client.disconnect(wait=1.0), 3.0)
            client.abort()
        for task in (getattr(client, "_run_out_filters", None),):
            if task is not None and not task.done():
                task.cancel()

    async def close(self) -> None:
        self.closing = True
        running = [task for task in self._operations if not task.done()]
        for task in running:
            task.cancel()  # a receive blocked in another thread returns None
        await asyncio.gather(*running, return_exceptions=True)
        if self.connected:
            waits = [self._unsubscribe_node(c.node) for c in self.consumers.values() if c.ready]
            waits += [self._unsubscribe_node(node) for node in self.by_node]
            if waits:
                await asyncio.wait_for(
                    asyncio.gather(*waits, return_exceptions=True), self.settings.timeout
                )
        self.consumers.clear()
        self.subscriptions.clear()
        self.by_node.clear()
        await self._drop_client()

    # -- IQ plumbing -----------------------------------------------------------------------

    async def _iq(self, future: Awaitable[Any]) -> Any:
        """Await one IQ; map slixmpp's errors, and fail fast when the connection drops."""
        fut = asyncio.ensure_future(future)
        self._iqs.add(fut)
        try:
            return await fut
        except IqTimeout:
            raise ConnectionLost("xmpp: the server did not answer in time") from None
        finally:
            self._iqs.discard(fut)

    @property
    def pubsub(self) -> Any:
        if self.client is None:
            raise ConnectionLost("xmpp: not connected")
        return self.client.plugin["xep_0060"]

    # -- nodes -------------------------------------------------------------------------------

    async def ensure_node(self, node: str, *, persist: bool) -> NodeState:
        """Create ``node`` if needed with the config queuekit relies on; learn its cap."""
        state = self.nodes.get(node)
        if state is not None:
            return state
        await self.ensure()
        s = self.settings
        config = {"pubsub#persist_items": persist, "pubsub#access_model": "open"}
        if persist:
            config["pubsub#max_items"] = s.max_items
        try:
            await self._iq(
                self.pubsub.create_node(s.pubsub, node, config=_form(_NODE_CONFIG, config))
            )
        except IqError as exc:
            if exc.condition != "conflict":
                raise _iq_error(exc, f"create node {node}") from None
        cap = None
        if persist:
            cap = await self._configure_queue_node(node)
        state = self.nodes[node] = NodeState(cap=cap)
        return state

    async def _configure_queue_node(self, node: str) -> int:
        """Make sure an existing node persists and keeps max_items; return the number."""
        s = self.settings
        try:
            reply = await self._iq(self.pubsub.get_node_config(s.pubsub, node))
        except IqError as exc:
            raise _iq_error(exc, f"read the config of node {node}") from None
        persist, max_items, range_max = _read_config(reply.xml)
        if not persist or max_items != s.max_items:
            config = {"pubsub#persist_items": True, "pubsub#max_items": s.max_items}
            try:
                await self._iq(
                    self.pubsub.set_node_config(s.pubsub, node, _form(_NODE_CONFIG, config))
                )
            except IqError as exc:
                raise _iq_error(exc, f"configure node {node} to persist items") from None
        if s.max_items != "max":
            return int(s.max_items)
        if range_max is None:
            raise TransportError(
                f"xmpp: {s.pubsub} does not say how many items node {node} keeps; "
                "set max_items=N in the URL to the server's limit"
            )
        return range_max

    async def delete_node(self, node: str) -> None:
        await self.ensure()
        self.nodes.pop(node, None)
        try:
            await self._iq(self.pubsub.delete_node(self.settings.pubsub, node))
        except IqError as exc:
            if exc.condition != "item-not-found":
                raise _iq_error(exc, f"delete node {node}") from None

    async def item_ids(self, node: str) -> list[str]:
        reply = await self._iq(self.pubsub.get_item_ids(self.settings.pubsub, node))
        return [
            item.get("name", "")
            for item in reply.xml.iter("{http://jabber.org/protocol/disco#items}item")
        ]

    # -- publishing ----------------------------------------------------------------------------

    async def publish(
        self, node: str, messages: Sequence[tuple[bytes, Any]], *, queue: bool
    ) -> None:
        """Publish every message, keeping up to ``inflight`` IQs outstanding."""
        state = await self.ensure_node(node, persist=queue or self.settings.persist_topics)
        if queue and state.cap is not None:
            await self._check_room(node, state, len(messages))
        options = self._queue_options() if queue else None
        pubsub, service = self.pubsub, self.settings.pubsub
        window: set[asyncio.Future[Any]] = set()
        try:
            for body, headers in messages:
                if len(window) >= self.settings.inflight:
                    done, window = await asyncio.wait(window, return_when=asyncio.FIRST_COMPLETED)
                    _raise_first(done, node)
                future = pubsub.publish(
                    service,
                    node,
                    id=_new_id(),
                    payload=encode_payload(body, headers),
                    options=options,
                    timeout=self.settings.timeout,
                )
                window.add(future)
                self._iqs.add(future)
            if window:
                done, _ = await asyncio.wait(window)
                _raise_first(done, node)
        finally:
            for future in window:
                self._iqs.discard(future)
                if not future.done():
                    future.cancel()
        state.sent_since += len(messages)

    async def _check_room(self, node: str, state: NodeState, count: int) -> None:
        """Refuse to publish past the node's cap: the server would drop the oldest items.

        The depth is re-counted when this publisher's estimate passes half the cap and at
        least every RECOUNT_SECONDS (other publishers add items too).
        """
        assert state.cap is not None
        now = time.monotonic()
        estimate = state.depth + state.sent_since + count
        if estimate * 2 > state.cap or now - state.counted_at > RECOUNT_SECONDS:
            state.depth = len(await self.item_ids(node))
            state.sent_since, state.counted_at = 0, now
        if state.depth + state.sent_since + count > state.cap:
            raise QueueFull(
                f"xmpp: node {node} holds {state.depth} of at most {state.cap} items; "
                f"publishing {count} more would make the server drop the oldest"
            )

    # -- consuming queues ----------------------------------------------------------------------

    async def next_item(
        self, queue: str, node: str, timeout: float
    ) -> tuple[QueueConsumer, Item] | None:
        deadline = time.monotonic() + timeout
        consumer = self.consumers.get(queue)
        if consumer is None:
            consumer = self.consumers[queue] = QueueConsumer(node=node, limit=self.prefetch)
            self.queue_of_node[node] = queue
        while True:
            await self.ensure()
            if not consumer.ready:
                await self.ensure_node(node, persist=True)
                await self._subscribe_node(node)
                consumer.ready = consumer.stale = True
            if consumer.buffer:
                await self._mark(consumer)
                if not consumer.buffer:
                    continue
                item = consumer.buffer.popleft()
                consumer.delivered.add(item.id)
                return consumer, item
            if consumer.backlog:
                await self._refill(consumer)
                continue
            if consumer.stale:
                await self._relist(consumer)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            consumer.wakeup.clear()
            try:
                await asyncio.wait_for(consumer.wakeup.wait(), remaining)
            except TimeoutError:
                return None

    async def _mark(self, consumer: QueueConsumer) -> None:
        """Count this consumer in on every buffered item before handing any out.

        The item is published again under its id with ``d`` one higher (the server keeps
        it; a later consumer reads it as "delivered before": ``redelivered`` and
        ``delivery_count``). Taken items are not counted by ``depth``. Re-publishing moves
        the item to the end of the node, so after a consumer crash its items come back
        after the ones nobody took. All marks of a buffer go out together.
        """
        todo = [item for item in consumer.buffer if not item.marked]
        if not todo:
            return
        pubsub, service, timeout = self.pubsub, self.settings.pubsub, self.settings.timeout
        options = self._queue_options()
        futures = [
            pubsub.publish(
                service,
                consumer.node,
                id=item.id,
                payload=encode_payload(item.body, item.headers, item.taken + 1),
                options=options,
                timeout=timeout,
            )
            for item in todo
        ]
        results = await asyncio.gather(*(self._iq(f) for f in futures), return_exceptions=True)
        for item, result in zip(todo, results, strict=True):
            if isinstance(result, IqError):
                raise _iq_error(result, f"mark an item of {consumer.node} as taken")
            if isinstance(result, BaseException):
                raise result
            item.taken, item.marked = item.taken + 1, True

    def _queue_options(self) -> Any:
        return _form(
            _PUBLISH_OPTIONS,
            {"pubsub#persist_items": True, "pubsub#max_items": self.settings.max_items},
        )

    async def _relist(self, consumer: QueueConsumer) -> None:
        """Fetch the node's items (oldest first); keep ``limit`` bodies, the rest as ids."""
        consumer.listing, consumer.stale = True, False
        try:
            reply = await self._iq(self.pubsub.get_items(self.settings.pubsub, consumer.node))
            for item in _items(reply.xml.iter(f"{{{_PUBSUB}}}item")):
                self._take(consumer, item)
        except IqError as exc:
            consumer.stale = True
            raise _iq_error(exc, f"list node {consumer.node}") from None
        except BaseException:
            consumer.stale = True
            raise
        finally:
            consumer.listing = False
        pending, consumer.pending = consumer.pending, []
        for item in pending:
            consumer.offer(item)

    def _take(self, consumer: QueueConsumer, item: Item) -> None:
        if item.id in consumer.known:
            return
        consumer.known.add(item.id)
        if len(consumer.buffer) < consumer.limit and not consumer.backlog:
            consumer.buffer.append(item)
        else:
            consumer.backlog.append(item.id)

    async def _refill(self, consumer: QueueConsumer) -> None:
        room = max(1, consumer.limit - len(consumer.buffer))
        ids = [consumer.backlog.popleft() for _ in range(min(room, len(consumer.backlog)))]
        try:
            reply = await self._iq(
                self.pubsub.get_items(self.settings.pubsub, consumer.node, item_ids=ids)
            )
        except BaseException:
            consumer.backlog.extendleft(reversed(ids))
            raise
        found = {item.id: item for item in _items(reply.xml.iter(f"{{{_PUBSUB}}}item"))}
        for item_id in ids:
            if item_id in found:
                consumer.buffer.append(found[item_id])
            else:  # settled elsewhere meanwhile
                consumer.known.discard(item_id)

    async def retract(self, consumer: QueueConsumer, item: Item) -> None:
        """Remove a delivered item from its node: the ack. Gone already is fine."""
        if item.id not in consumer.delivered:
            return  # settled before: a no-op
        await self.ensure()
        try:
            await self._iq(self.pubsub.retract(self.settings.pubsub, consumer.node, item.id))
        except IqError as exc:
            if exc.condition != "item-not-found":
                raise _iq_error(exc, f"retract an item of {consumer.node}") from None
        consumer.delivered.discard(item.id)
        consumer.known.discard(item.id)

    def requeue(self, consumer: QueueConsumer, item: Item) -> None:
        """Put a delivered item back in front of this consumer's buffer (it never left)."""
        if item.id in consumer.delivered:
            consumer.delivered.discard(item.id)
            item.requeued += 1
            consumer.buffer.appendleft(item)
            consumer.wakeup.set()

    async def depth(self, queue: str, node: str) -> int:
        """Items on the node that no consumer has taken (see ``_mark``)."""
        await self.ensure_node(node, persist=True)
        try:
            reply = await self._iq(self.pubsub.get_items(self.settings.pubsub, node))
        except IqError as exc:
            raise _iq_error(exc, f"list node {node}") from None
        items = _items(reply.xml.iter(f"{{{_PUBSUB}}}item"))
        return sum(1 for item in items if not item.taken)

    async def purge(self, queue: str, node: str) -> int:
        await self.ensure_node(node, persist=True)
        count = await self.depth(queue, node)
        try:
            await self._iq(self.pubsub.purge(self.settings.pubsub, node))
        except IqError as exc:
            raise _iq_error(exc, f"purge node {node}") from None
        consumer = self.consumers.get(queue)
        if consumer is not None:
            consumer.buffer.clear()
            consumer.backlog.clear()
            consumer.known = set(consumer.delivered)
        state = self.nodes.get(node)
        if state is not None:
            state.depth = state.sent_since = 0
        return count

    def forget_queue(self, queue: str) -> None:
        consumer = self.consumers.pop(queue, None)
        if consumer is not None:
            self.queue_of_node.pop(consumer.node, None)

    # -- topics ---------------------------------------------------------------------------------

    async def subscribe(self, name: str, node: str) -> None:
        await self.ensure_node(node, persist=self.settings.persist_topics)
        limit = max(self.prefetch, self.settings.fanout_buffer)
        if node not in self.by_node:
            await self._subscribe_node(node)
            self.by_node.setdefault(node, [])
        sub = Subscription(name=name, node=node, limit=limit)
        self.by_node[node].append(sub)
        self.subscriptions[name] = sub

    async def unsubscribe(self, name: str) -> None:
        sub = self.subscriptions.pop(name, None)
        if sub is None:
            return
        subs = self.by_node.get(sub.node, [])
        if sub in subs:
            subs.remove(sub)
        if not subs:
            self.by_node.pop(sub.node, None)
            if self.connected:
                await self._unsubscribe_node(sub.node)

    async def next_notification(self, name: str, timeout: float) -> Item | None:
        sub = self.subscriptions[name]
        deadline = time.monotonic() + timeout
        while not sub.buffer:
            await self.ensure()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            sub.wakeup.clear()
            try:
                await asyncio.wait_for(sub.wakeup.wait(), remaining)
            except TimeoutError:
                return None
        return sub.buffer.popleft()

    async def _subscribe_node(self, node: str) -> None:
        """Subscribe this full JID; the IQ result means the subscription is active."""
        try:
            reply = await self._iq(self.pubsub.subscribe(self.settings.pubsub, node, bare=False))
        except IqError as exc:
            raise _iq_error(exc, f"subscribe to node {node}") from None
        state = reply.xml.find(f"{{{_PUBSUB}}}pubsub/{{{_PUBSUB}}}subscription")
        if state is not None and state.get("subscription", "subscribed") != "subscribed":
            raise TransportError(
                f"xmpp: subscription to {node} is {state.get('subscription')}, not active"
            )

    async def _unsubscribe_node(self, node: str) -> None:
        with contextlib.suppress(IqError, TransportError):
            await self._iq(
                self.pubsub.unsubscribe(self.settings.pubsub, node, bare=False, timeout=5)
            )

    # -- notifications ----------------------------------------------------------------------------

    def _on_publish(self, msg: Any) -> None:
        if msg["from"].bare != self.settings.pubsub:
            return
        event = msg.xml.find(f"{_EVENT}event/{_EVENT}items")
        if event is None:
            return
        node = event.get("node", "")
        subs = self.by_node.get(node)
        consumer = None if subs else self._consumer_of(node)
        if not subs and consumer is None:
            return
        for item in _items(event.iterfind(f"{_EVENT}item")):
            if consumer is not None:
                consumer.offer(item)
            for sub in subs or ():
                sub.offer(Item(item.id, item.body, dict(item.headers), item.taken))

    def _consumer_of(self, node: str) -> QueueConsumer | None:
        queue = self.queue_of_node.get(node)
        consumer = self.consumers.get(queue) if queue is not None else None
        return consumer if consumer is not None and consumer.ready else None


def _items(elements: Iterable[ET.Element]) -> Iterable[Item]:
    for element in elements:
        item_id = element.get("id", "")
        try:
            body, headers, taken = decode_payload(element[0] if len(element) else None)
        except MalformedMessage as exc:
            # Not ours to interpret: hand the raw XML up so the core's failed store keeps it.
            raw = ET.tostring(element[0]) if len(element) else b""
            body, headers, taken = raw or exc.body, {"x-queuekit-malformed": exc.reason}, 0
        yield Item(item_id, body, headers, taken)


def _form(form_type: str, values: dict[str, Any]) -> Any:
    form = _FORM()
    form["type"] = "submit"
    form.add_field(var="FORM_TYPE", ftype="hidden", value=form_type)
    for var, value in values.items():
        form.add_field(var=var, value=value)
    return form


def _read_config(xml: ET.Element) -> tuple[bool, str, int | None]:
    persist, max_items, range_max = False, "", None
    for f in xml.iter(f"{_XDATA}field"):
        value = f.findtext(f"{_XDATA}value") or ""
        if f.get("var") == "pubsub#persist_items":
            persist = value in ("1", "true")
        elif f.get("var") == "pubsub#max_items":
            max_items = value
            limit = f.find(f"{_VALIDATE}validate/{_VALIDATE}range")
            if limit is not None and (limit.get("max") or "").isdigit():
                range_max = int(limit.get("max") or 0)
    return persist, max_items, range_max


def _new_id() -> str:
    return uuid.uuid4().hex


def _raise_first(done: set[asyncio.Future[Any]], node: str) -> None:
    for future in done:
        exc = future.exception()
        if exc is None:
            continue
        if isinstance(exc, IqError):
            raise _iq_error(exc, f"publish to {node}")
        if isinstance(exc, IqTimeout):
            raise ConnectionLost("xmpp: the server did not answer a publish in time")
        raise exc


def _iq_error(exc: IqError, what: str) -> TransportError:
    condition, text = exc.condition, exc.text or ""
    detail = f"xmpp: cannot {what}: {condition}" + (f" ({text})" if text else "")
    if condition == "forbidden":
        detail += "; on Prosody only admins may create nodes (add the account to admins)"
    if condition in ("conflict",) and "Field does not match" in text:
        detail += "; the node's configuration changed under us (precondition-not-met)"
    if condition in ("remote-server-timeout", "service-unavailable", "internal-server-error"):
        return ConnectionLost(detail)
    return TransportError(detail)
