"""``xmpp://``: queues and fan-out over XMPP publish-subscribe (XEP-0060) with slixmpp.

- A queue is a node that persists its items (``queuekit/queue/NAME``). ``send`` publishes
  an item and returns on the server's IQ result; a consumer subscribes to the node and lists
  what is already there; ``ack`` retracts the item. Un-acked items stay on the node and are
  found again by the next consumer, so work survives consumer crashes and server restarts.
- A topic is a node (``queuekit/topic/NAME``) whose notifications feed ``subscribe``.

Not declared, and why (docs/xmpp.md has the long form): ``competing_consumers``, because
every subscriber of a node is notified of every item and a retract can only settle an item
after the work is done, so two consumers of one queue may both run it; ``topics``, because
XEP-0060 has no wildcard subscriptions; ``delay``, ``priority``, ``dedup``. The class-level
declaration is what XEP-0060 servers with the optional features queues need (Prosody,
ejabberd) back; each connection declares what its pub/sub service advertises (``service``).

Threads: one asyncio loop per transport in a background thread (slixmpp is asyncio-only);
the blocking methods hand coroutines to it. Thread safety follows the contract.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from ...spi.errors import (
    ConnectionLost,
    QueuekitError,
    TransportClosed,
    TransportError,
    Unsupported,
)
from ...spi.timeouts import publish_timeout, publish_unreachable
from ...spi.transport import NO_OPTIONS, Delivery, Headers, Outgoing, SendOptions, Transport
from ...spi.urls import TransportURL
from .loop import LoopThread
from .queue_consumer import QueueConsumer
from .service import (
    FANOUT_FEATURES,
    INSPECT_FEATURES,
    PUBSUB_FEATURE,
    QUEUE_FEATURES,
    capabilities,
    queue_gap,
)
from .session import Session
from .settings import XMPPSettings
from .stanzas import Item

T = TypeVar("T")

CAPABILITIES = capabilities(
    frozenset(
        PUBSUB_FEATURE + name for name in {*QUEUE_FEATURES, *FANOUT_FEATURES, *INSPECT_FEATURES}
    ),
    max_message_size=150_000,
)


class XMPPTransport(Transport):
    name = "xmpp"
    capabilities = CAPABILITIES

    def __init__(self, url: TransportURL, *, prefetch: int = 16) -> None:
        super().__init__(url, prefetch=prefetch)
        self.settings = XMPPSettings.from_url(url)
        self._publish_timeout = publish_timeout(url)
        self._loop = LoopThread(f"queuekit-xmpp-{self.settings.resource}")
        self._session = Session(self.settings, prefetch)
        self._close_lock = threading.Lock()
        self._subscriptions: set[str] = set()
        try:
            self._call(self._session.connection.ensure())
        except BaseException:
            self.close()
            raise
        features = self._session.connection.features
        self.capabilities = capabilities(features, self.settings.max_message_size)
        self._queue_gap = queue_gap(features)

    def _require_queues(self) -> None:
        if self._queue_gap is not None:
            raise Unsupported("queues", self.name, f"{self.settings.pubsub}: {self._queue_gap}")

    # -- plumbing --------------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self.closed:
            coro.close()
            raise self.closed_error()
        try:
            return self._loop.call(self._session.run(coro))
        except QueuekitError:
            raise
        except (concurrent.futures.CancelledError, asyncio.CancelledError):
            if self.closed:
                raise self.closed_error() from None
            raise TransportError("xmpp: operation cancelled") from None
        except Exception as exc:  # a slixmpp or stream failure: map it at the boundary
            raise TransportError(f"xmpp: {type(exc).__name__}: {exc}") from exc

    # -- point to point ----------------------------------------------------------------------

    def send(
        self, queue: str, body: bytes, headers: Headers, *, options: SendOptions = NO_OPTIONS
    ) -> None:
        self._require_queues()
        self.check_outgoing(body, options)
        self._publish(self.settings.queue_node(queue), [(body, headers)], queue=True)

    def send_many(self, queue: str, messages: Sequence[Outgoing]) -> None:
        self._require_queues()
        for message in messages:
            self.check_outgoing(message.body, message.options)
        if not messages:
            return
        batch = [(m.body, m.headers) for m in messages]
        self._publish(self.settings.queue_node(queue), batch, queue=True)

    def _publish(self, node: str, batch: list[tuple[bytes, Headers]], *, queue: bool) -> None:
        """Publish, reconnecting after a lost stream for up to the publish timeout
        (:mod:`queuekit.spi.timeouts`). Items a lost stream may have published already
        are published again: duplicates, never losses."""
        timeout = self._publish_timeout
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            try:
                self._call(self._session.publisher.publish(node, batch, queue=queue))
                return
            except ConnectionLost as exc:
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    raise publish_unreachable(self.url.redacted(), timeout, exc) from None
                time.sleep(min(left, 0.1 * 2**attempt, 1.0))
                attempt += 1

    def receive(self, queue: str, timeout: float) -> Delivery | None:
        timeout = max(0.0, timeout)
        try:
            if queue in self._subscriptions:
                return self._notification(queue, timeout)
            self._require_queues()
            if self.closed:
                return None
            got = self._session.reader.take_ready(queue, self._loop.loop)
            if got is None:
                node = self.settings.queue_node(queue)
                got = self._call(self._session.reader.next_item(queue, node, timeout))
        except TransportClosed:
            return None  # closed from another thread while waiting
        if got is None:
            return None
        consumer, found = got
        return Delivery(
            queue=queue,
            body=found.body,
            headers=dict(found.headers),
            redelivered=found.taken > 1 or found.requeued > 0,
            delivery_count=found.taken + found.requeued,
            handle=(consumer, found),
        )

    def _notification(self, name: str, timeout: float) -> Delivery | None:
        self.check_open()
        if not self._session.connection.connected:  # reconnect (and re-subscribe) first
            self._call(self._session.connection.ensure())
        subscription = self._session.fanout.subscriptions.get(name)
        item = subscription.take(timeout) if subscription is not None else None
        if item is None:
            return None
        return Delivery(queue=name, body=item.body, headers=item.headers)

    def _handle(self, delivery: Delivery) -> tuple[QueueConsumer, Item] | None:
        handle = delivery.handle
        if isinstance(handle, tuple) and len(handle) == 2 and isinstance(handle[1], Item):
            return handle[0], handle[1]
        return None  # a fan-out delivery: nothing to settle

    def ack(self, delivery: Delivery) -> None:
        handle = self._handle(delivery)
        if handle is None:
            return
        self.check_open()
        if not self._session.acks.ack_nowait(*handle, self._loop.loop):
            self._call(self._session.acks.retract(*handle))

    def nack(self, delivery: Delivery, *, requeue: bool) -> None:
        handle = self._handle(delivery)
        if handle is None:
            return
        if requeue:
            self._call(_run_sync(self._session.acks.requeue, *handle))
        else:
            self._call(self._session.acks.retract(*handle))

    def close(self) -> None:
        with self._close_lock:
            if self.closed:
                return
            self.closed = True
        try:
            with contextlib.suppress(Exception):  # closing must not fail; stop() cleans up
                self._loop.submit(self._session.close()).result(self.settings.timeout + 5)
        finally:
            self._loop.stop()

    # -- inspection --------------------------------------------------------------------------

    def _require_inspect(self) -> None:
        if not self.capabilities.inspect:
            reason = self.capabilities.reasons.get("inspect", "")
            raise Unsupported("inspect (depth/purge)", self.name, reason)

    def depth(self, queue: str) -> int:
        self._require_inspect()
        return self._call(self._session.inspection.depth(queue, self.settings.queue_node(queue)))

    def purge(self, queue: str) -> int:
        self._require_inspect()
        return self._call(self._session.inspection.purge(queue, self.settings.queue_node(queue)))

    def delete(self, queue: str) -> None:
        node = self.settings.queue_node(queue)
        self._call(_run_sync(self._session.reader.forget, queue))
        if self._call(self._session.nodes.delete(node)):  # else keep its settled records
            self._call(self._session.nodes.delete(self.settings.journal_node(queue)))

    # -- publish/subscribe ----------------------------------------------------------------------

    def broadcast(self, topic: str, body: bytes, headers: Headers) -> None:
        self.check_outgoing(body)
        self._publish(self.settings.topic_node(topic), [(body, headers)], queue=False)

    def subscribe(self, pattern: str) -> str:
        if any(word in ("*", "#") for word in pattern.split(".")):
            raise Unsupported(
                "topics (wildcard subscriptions)",
                self.name,
                "subscribe to each exact topic name",
            )
        name = f"xmpp-sub:{pattern}:{uuid.uuid4().hex[:12]}"
        self._call(self._session.fanout.subscribe(name, self.settings.topic_node(pattern)))
        self._subscriptions.add(name)
        return name

    def unsubscribe(self, subscription: str) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.discard(subscription)
            self._call(self._session.fanout.unsubscribe(subscription))


async def _run_sync(function: Any, *args: Any) -> None:
    """Run a plain function on the loop thread (the session's state lives there)."""
    function(*args)
