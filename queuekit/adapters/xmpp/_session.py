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
import threading
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from xml.etree import ElementTree as ET

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout

from ...core.errors import (
    ConfigurationError,
    ConnectionLost,
    QueueFull,
    TransportClosed,
    TransportError,
)
from ._quickack import ack_at_once
from ._settings import NS, XMPPSettings, encode_payload
from ._stanzas import (
    EVENT,
    NODE_CONFIG,
    PUBSUB,
    Item,
    form,
    iq_error,
    new_id,
    parse_items,
    publish_options,
    read_config,
)

T = TypeVar("T")
log = logging.getLogger("queuekit.adapters.xmpp")
_TAKEN = f"{{{NS}}}taken"
#: How many listed items a consumer keeps in memory beyond its prefetch (the rest as ids).
KEEP_LISTED = 4096
#: Re-count a queue node at least this often while publishing to it (other publishers).
RECOUNT_SECONDS = 5.0


@dataclass(slots=True)
class QueueConsumer:
    """Local view of one queue node being consumed by this transport."""

    node: str
    journal: str  # the node recording which items consumers took
    limit: int
    buffer: deque[Item] = field(default_factory=deque)
    # Listed but not buffered, oldest first: the items themselves (up to KEEP_LISTED),
    # then only ids (fetched again when their turn comes).
    backlog: deque[Item | str] = field(default_factory=deque)
    known: set[str] = field(default_factory=set)  # buffered, backlog or delivered ids
    delivered: set[str] = field(default_factory=set)  # handed out, not settled
    ready: bool = False
    stale: bool = True  # the node may hold items we have not listed
    listing: bool = False
    pending: list[Item] = field(default_factory=list)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    taken_before: dict[str, int] = field(default_factory=dict)  # from the last listing
    batches: dict[str, set[str]] = field(default_factory=dict)  # our journal entries
    batch_of: dict[str, str] = field(default_factory=dict)  # item id -> journal entry
    generation: int = 0  # bumped when the node is purged or deleted under us
    marking: asyncio.Lock = field(default_factory=asyncio.Lock)  # one journal write at a time
    ahead: bool = False  # a mark-ahead is scheduled or running (see ``Session.take_ready``)

    def reset(self) -> None:
        """The node was purged or deleted: forget every copy held here (not the delivered
        ones, whose settling then finds nothing, a no-op)."""
        dropped = {x if isinstance(x, str) else x.id for x in self.backlog}
        dropped.update(item.id for item in self.buffer)
        self.buffer.clear()
        self.backlog.clear()
        self.known -= dropped
        self.stale = True
        self.generation += 1
        self.wakeup.set()

    def offer(self, item: Item) -> None:
        """A notification: buffer it if it keeps order and fits, else re-list later."""
        if item.id in self.known:
            return
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
    """A fan-out subscription's buffer: filled on the loop thread, read directly by the
    consumer thread (no loop round trip per message), hence a thread condition."""

    name: str
    node: str
    limit: int
    buffer: deque[Item] = field(default_factory=deque)
    dropped: int = 0
    closed: bool = False
    ready: threading.Condition = field(default_factory=threading.Condition)

    def take(self, timeout: float) -> Item | None:
        with self.ready:
            if not self.buffer and not self.closed:
                self.ready.wait_for(lambda: self.buffer or self.closed, timeout)
            return self.buffer.popleft() if self.buffer else None

    def end(self) -> None:
        with self.ready:
            self.closed = True
            self.ready.notify_all()

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
        with self.ready:
            self.buffer.append(item)
            self.ready.notify()


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
        self._acks: set[asyncio.Future[Any]] = set()
        self._ahead: set[asyncio.Task[None]] = set()
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
        ack_at_once(client)
        outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def settle(result: str) -> None:
            if not outcome.done():
                outcome.set_result(result)

        client.add_event_handler("session_start", lambda _: settle("ok"))
        client.add_event_handler("failed_all_auth", lambda _: settle("auth"))
        client.add_event_handler("connection_failed", lambda e: settle(f"connect: {e}"))
        client.add_event_handler("disconnected", lambda _: self._on_disconnected(client))
        # A server going down may accept the connection and then drop it: fail fast.
        client.add_event_handler("disconnected", lambda _: settle("disconnected"))
        client.add_event_handler("pubsub_publish", self._on_publish)
        client.add_event_handler("pubsub_purge", lambda m: self._on_reset(m, "purge"))
        client.add_event_handler("pubsub_delete", lambda m: self._on_reset(m, "delete"))
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
        ahead = list(self._ahead)
        for task in ahead:
            task.cancel()
        await asyncio.gather(*ahead, return_exceptions=True)
        if self.connected:
            await self.flush()
        if self.connected:
            waits = [self._unsubscribe_node(c.node) for c in self.consumers.values() if c.ready]
            waits += [self._unsubscribe_node(node) for node in self.by_node]
            if waits:
                await asyncio.wait_for(
                    asyncio.gather(*waits, return_exceptions=True), self.settings.timeout
                )
        self.consumers.clear()
        for sub in self.subscriptions.values():
            sub.end()
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
        if self.client is None or not self.connected:
            raise ConnectionLost("xmpp: the connection was lost")
        return self.client.plugin["xep_0060"]

    # -- nodes -------------------------------------------------------------------------------

    async def ensure_node(self, node: str, *, persist: bool) -> NodeState:
        """Create ``node`` if needed with the config queuekit relies on; learn its cap."""
        await self.ensure()  # every operation starts here: reconnect after a loss
        state = self.nodes.get(node)
        if state is not None:
            return state
        s = self.settings
        config = {"pubsub#persist_items": persist, "pubsub#access_model": "open"}
        if persist:
            config["pubsub#max_items"] = s.max_items
        try:
            await self._iq(
                self.pubsub.create_node(s.pubsub, node, config=form(NODE_CONFIG, config))
            )
        except IqError as exc:
            if exc.condition != "conflict":
                raise iq_error(exc, f"create node {node}") from None
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
            raise iq_error(exc, f"read the config of node {node}") from None
        persist, max_items, range_max = read_config(reply.xml)
        if not persist or max_items != s.max_items:
            config = {"pubsub#persist_items": True, "pubsub#max_items": s.max_items}
            try:
                await self._iq(
                    self.pubsub.set_node_config(s.pubsub, node, form(NODE_CONFIG, config))
                )
            except IqError as exc:
                raise iq_error(exc, f"configure node {node} to persist items") from None
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
                raise iq_error(exc, f"delete node {node}") from None

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
                    self._iqs.difference_update(done)
                    _raise_first(done, node)
                future = pubsub.publish(
                    service,
                    node,
                    id=new_id(),
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
            journal = self.settings.journal_node(queue)
            consumer = QueueConsumer(node=node, journal=journal, limit=self.prefetch)
            self.consumers[queue] = consumer
            self.queue_of_node[node] = queue
        while True:
            await self.ensure()
            if not consumer.ready:
                await self.ensure_node(node, persist=True)
                await self.ensure_node(consumer.journal, persist=True)
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
        """Record on the server that this consumer took every buffered item, before any is
        handed out: one journal item listing their ids, on the queue's journal node.

        A later consumer that finds an id in the journal knows the item was delivered
        before (``redelivered``, ``delivery_count``), and ``depth`` does not count taken
        items. The entry is retracted once all its items are settled. One write per batch,
        not per message. One journal write runs at a time per consumer (a mark-ahead and a
        ``next_item`` must not both record the same items).
        """
        async with consumer.marking:
            await self._mark_buffered(consumer)

    async def _mark_buffered(self, consumer: QueueConsumer) -> None:
        # A snapshot: the consumer thread may pop from the left meanwhile (list() of a
        # deque runs without releasing the GIL).
        todo = [item for item in list(consumer.buffer) if not item.marked]
        if not todo:
            return
        generation = consumer.generation
        entry = new_id()
        payload = ET.Element(_TAKEN)
        payload.text = " ".join(item.id for item in todo)
        future = self.pubsub.publish(
            self.settings.pubsub,
            consumer.journal,
            id=entry,
            payload=payload,
            options=self._queue_options(),
            timeout=self.settings.timeout,
        )
        try:
            await self._iq(future)
        except IqError as exc:
            raise iq_error(exc, f"record taken items of {consumer.node}") from None
        if consumer.generation != generation:  # purged meanwhile: those items are gone
            await self._retract_quietly(consumer.journal, entry)
            return
        consumer.batches[entry] = {item.id for item in todo}
        for item in todo:
            item.taken, item.marked = item.taken + 1, True
            consumer.batch_of[item.id] = entry

    def _settled(self, consumer: QueueConsumer, item_id: str) -> None:
        """An item is gone from the node: retract its journal entry once all are."""
        entry = consumer.batch_of.pop(item_id, None)
        waiting = consumer.batches.get(entry) if entry is not None else None
        if entry is None or waiting is None:
            return
        waiting.discard(item_id)
        if not waiting:
            del consumer.batches[entry]
            self._send_retract(consumer.journal, entry, None)

    async def _retract_quietly(self, node: str, item_id: str) -> None:
        with contextlib.suppress(IqError):
            await self._iq(self.pubsub.retract(self.settings.pubsub, node, item_id))

    async def _journal(self, journal: str) -> dict[str, list[str]]:
        """The journal's entries: entry id -> ids of the items it took."""
        try:
            reply = await self._iq(self.pubsub.get_items(self.settings.pubsub, journal))
        except IqError as exc:
            if exc.condition == "item-not-found":
                return {}
            raise iq_error(exc, f"list node {journal}") from None
        entries = {}
        for element in reply.xml.iter(f"{{{PUBSUB}}}item"):
            taken = element.find(_TAKEN)
            if taken is not None:
                entries[element.get("id", "")] = (taken.text or "").split()
        return entries

    async def _taken_counts(
        self, journal: str, present: set[str], entries: dict[str, list[str]] | None = None
    ) -> dict[str, int]:
        """How often each present item was taken (this consumer's own entries included);
        entries whose items are all gone are retracted on the way. ``entries`` is the journal
        as read beforehand, if the caller had to read it first (see ``depth``)."""
        counts: dict[str, int] = {}
        if entries is None:
            entries = await self._journal(journal)
        for entry, ids in entries.items():
            alive = [i for i in ids if i in present]
            if not alive:
                await self._retract_quietly(journal, entry)
            for item_id in alive:
                counts[item_id] = counts.get(item_id, 0) + 1
        return counts

    def _queue_options(self) -> Any:
        return publish_options(self.settings.max_items)

    async def _relist(self, consumer: QueueConsumer) -> None:
        """Fetch the node's items (oldest first); keep ``limit`` bodies, the rest as ids."""
        consumer.listing, consumer.stale = True, False
        try:
            reply = await self._iq(self.pubsub.get_items(self.settings.pubsub, consumer.node))
            items = list(parse_items(reply.xml.iter(f"{{{PUBSUB}}}item")))
            counts = await self._taken_counts(consumer.journal, {item.id for item in items})
            consumer.taken_before = counts
            for item in items:
                item.taken = counts.get(item.id, 0)
                self._take(consumer, item)
        except IqError as exc:
            consumer.stale = True
            raise iq_error(exc, f"list node {consumer.node}") from None
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
        elif len(consumer.backlog) < KEEP_LISTED:
            consumer.backlog.append(item)
        else:
            consumer.backlog.append(item.id)

    def _top_up(self, consumer: QueueConsumer) -> None:
        """Move listed items kept in memory from the backlog to the buffer (up to limit)."""
        backlog = consumer.backlog
        while backlog and isinstance(backlog[0], Item) and len(consumer.buffer) < consumer.limit:
            item = backlog.popleft()
            assert isinstance(item, Item)
            consumer.buffer.append(item)

    async def _refill(self, consumer: QueueConsumer) -> None:
        backlog = consumer.backlog
        self._top_up(consumer)
        if consumer.buffer or not backlog:
            return
        room = max(1, consumer.limit - len(consumer.buffer))
        ids = [str(backlog.popleft()) for _ in range(min(room, len(backlog)))]
        try:
            reply = await self._iq(
                self.pubsub.get_items(self.settings.pubsub, consumer.node, item_ids=ids)
            )
        except BaseException:
            consumer.backlog.extendleft(reversed(ids))
            raise
        found = {item.id: item for item in parse_items(reply.xml.iter(f"{{{PUBSUB}}}item"))}
        for item_id in ids:
            if item_id in found:
                found[item_id].taken = consumer.taken_before.get(item_id, 0)
                consumer.buffer.append(found[item_id])
            else:  # settled elsewhere meanwhile
                consumer.known.discard(item_id)

    async def retract(self, consumer: QueueConsumer, item: Item) -> None:
        """The ack: retract a delivered item from its node, pipelined.

        The retract goes out at once and its answer is awaited in the background (like an
        AMQP basic.ack, which the broker never answers), keeping at most ``inflight``
        outstanding; ``close``, ``depth`` and ``purge`` wait for them. Until the server
        confirms, the item stays known here, so a re-listing cannot deliver it again. If
        the retract is lost with the connection, the item is delivered again (at least
        once). Settling twice is a no-op.
        """
        if item.id not in consumer.delivered:
            return
        await self.ensure()
        consumer.delivered.discard(item.id)
        self.start_retract(consumer, item.id)
        if len(self._acks) >= self.settings.inflight:
            await asyncio.wait(set(self._acks), return_when=asyncio.FIRST_COMPLETED)

    # The consumer thread's fast paths (no loop round trip). They touch only what that
    # thread owns while the loop cannot be inside ``next_item`` (the same thread would be
    # waiting on it): the left end of ``buffer`` and ``delivered``.

    def take_ready(
        self, queue: str, loop: asyncio.AbstractEventLoop
    ) -> tuple[QueueConsumer, Item] | None:
        """Pop a buffered item that is already recorded as taken, from the consumer thread."""
        consumer = self.consumers.get(queue)
        if consumer is None or not consumer.ready or not self.connected or self.closing:
            return None
        try:
            item = consumer.buffer[0]
            if not item.marked:
                return None
            consumer.buffer.popleft()  # only this thread takes from the left
        except IndexError:  # emptied by a purge notification meanwhile
            return None
        consumer.delivered.add(item.id)
        if (
            not consumer.ahead
            and len(consumer.buffer) * 2 <= consumer.limit
            and consumer.backlog
            and isinstance(consumer.backlog[0], Item)
        ):
            consumer.ahead = True  # cleared on the loop when the mark-ahead is done
            loop.call_soon_threadsafe(self._start_mark_ahead, consumer)
        return consumer, item

    def _start_mark_ahead(self, consumer: QueueConsumer) -> None:
        task = asyncio.ensure_future(self._mark_ahead(consumer))
        self._ahead.add(task)
        task.add_done_callback(self._ahead.discard)

    async def _mark_ahead(self, consumer: QueueConsumer) -> None:
        """Half the buffer is gone: top it up from the listed backlog and record the new
        items as taken now, in the background, so the consumer thread finds them marked
        instead of waiting for the journal write behind its own queued retracts. At most
        ``limit`` items are buffered (marked or not), as before."""
        try:
            if self.connected and not self.closing and consumer.ready:
                self._top_up(consumer)
                await self._mark(consumer)
        except Exception as exc:  # next_item marks (and reports) them again
            log.debug("xmpp: mark-ahead on %s failed: %s", consumer.node, exc)
        finally:
            consumer.ahead = False

    def ack_nowait(
        self, consumer: QueueConsumer, item: Item, loop: asyncio.AbstractEventLoop
    ) -> bool:
        """Schedule the retract from the consumer thread; False: take the slow path."""
        if (
            item.id not in consumer.delivered
            or not self.connected
            or self.closing
            or len(self._acks) >= self.settings.inflight // 2
        ):
            return False
        consumer.delivered.discard(item.id)
        loop.call_soon_threadsafe(self.start_retract, consumer, item.id)
        return True

    def start_retract(self, consumer: QueueConsumer, item_id: str) -> None:
        """Send the retract now (on the loop) and confirm it in the background."""
        if self.client is None or not self.connected:
            consumer.known.discard(item_id)  # still on the node: the re-listing finds it
            return
        self._send_retract(consumer.node, item_id, consumer)

    def _send_retract(self, node: str, item_id: str, consumer: QueueConsumer | None) -> None:
        """Send a retract and confirm it from a done-callback (no task per ack)."""
        future = self.pubsub.retract(
            self.settings.pubsub, node, item_id, timeout=self.settings.timeout
        )
        self._acks.add(future)
        self._iqs.add(future)

        def confirmed(done: asyncio.Future[Any]) -> None:
            self._acks.discard(done)
            self._iqs.discard(done)
            exc = None if done.cancelled() else done.exception()
            if isinstance(exc, IqError):
                if exc.condition != "item-not-found":
                    log.warning("xmpp: retract on %s failed: %s", node, exc.condition)
            elif exc is not None or done.cancelled():
                log.info("xmpp: retract on %s lost (%s); it will be redelivered", node, exc)
            if consumer is not None:
                consumer.known.discard(item_id)
                self._settled(consumer, item_id)

        future.add_done_callback(confirmed)

    async def flush(self) -> None:
        """Wait until every pipelined ack is answered."""
        if self._acks:
            await asyncio.wait(set(self._acks), timeout=self.settings.timeout)

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
        await self.flush()
        # The journal first: an ack retracts the item, then its journal entry, in that order
        # on one stream, so an entry gone from the journal means its items are gone too.
        # Read the other way round, an item acked in between looks present and untaken.
        journal = self.settings.journal_node(queue)
        entries = await self._journal(journal)
        try:
            ids = set(await self.item_ids(node))
        except IqError as exc:
            raise iq_error(exc, f"count node {node}") from None
        taken = await self._taken_counts(journal, ids, entries)
        return len(ids) - len(taken)

    async def purge(self, queue: str, node: str) -> int:
        await self.ensure_node(node, persist=True)
        count = await self.depth(queue, node)
        try:
            await self._iq(self.pubsub.purge(self.settings.pubsub, node))
        except IqError as exc:
            raise iq_error(exc, f"purge node {node}") from None
        journal = self.settings.journal_node(queue)
        with contextlib.suppress(IqError):
            await self._iq(self.pubsub.purge(self.settings.pubsub, journal))
        consumer = self.consumers.get(queue)
        if consumer is not None:
            consumer.reset()
            consumer.batches.clear()
            consumer.batch_of.clear()
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
        sub.end()
        subs = self.by_node.get(sub.node, [])
        if sub in subs:
            subs.remove(sub)
        if not subs:
            self.by_node.pop(sub.node, None)
            if self.connected:
                await self._unsubscribe_node(sub.node)

    async def _subscribe_node(self, node: str) -> None:
        """Subscribe this full JID; the IQ result means the subscription is active."""
        try:
            reply = await self._iq(self.pubsub.subscribe(self.settings.pubsub, node, bare=False))
        except IqError as exc:
            raise iq_error(exc, f"subscribe to node {node}") from None
        state = reply.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}subscription")
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

    def _on_reset(self, msg: Any, kind: str) -> None:
        """Another connection purged or deleted a queue node we consume.

        Prosody sends this before it answers any later request of ours, so ``_mark``
        (a round trip before items are handed out) always sees it in time.
        """
        if msg["from"].bare != self.settings.pubsub:
            return
        event = msg.xml.find(f"{EVENT}event/{EVENT}{kind}")
        node = "" if event is None else event.get("node", "")
        consumer = self._consumer_of(node)
        if consumer is None:
            return
        consumer.reset()
        if kind == "delete":
            self.nodes.pop(node, None)
            consumer.ready = False  # create and subscribe again on the next receive

    def _on_publish(self, msg: Any) -> None:
        if msg["from"].bare != self.settings.pubsub:
            return
        event = msg.xml.find(f"{EVENT}event/{EVENT}items")
        if event is None:
            return
        node = event.get("node", "")
        subs = self.by_node.get(node)
        consumer = None if subs else self._consumer_of(node)
        if not subs and consumer is None:
            return
        for item in parse_items(event.iterfind(f"{EVENT}item")):
            if consumer is not None:
                consumer.offer(item)
            for sub in subs or ():
                sub.offer(Item(item.id, item.body, dict(item.headers)))

    def _consumer_of(self, node: str) -> QueueConsumer | None:
        queue = self.queue_of_node.get(node)
        consumer = self.consumers.get(queue) if queue is not None else None
        return consumer if consumer is not None and consumer.ready else None


def _raise_first(done: set[asyncio.Future[Any]], node: str) -> None:
    for future in done:
        exc = future.exception()
        if exc is None:
            continue
        if isinstance(exc, IqError):
            raise iq_error(exc, f"publish to {node}")
        if isinstance(exc, IqTimeout):
            raise ConnectionLost("xmpp: the server did not answer a publish in time")
        raise exc
