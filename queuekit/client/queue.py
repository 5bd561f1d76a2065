"""Queues and topics: what an application publishes to and works off.

``Connection.queue(name)`` (:mod:`queuekit.client.connection`) gives a :class:`Queue`:
``publish`` wraps a payload in an envelope and hands it to the connection's
:class:`~queuekit.features.broker.Broker`, which applies the publishing rules (native or
emulated delays, priorities, dedup keys, serial groups, records); ``dispatch`` runs a worker
(:mod:`queuekit.worker`) on it. ``bulk()`` buffers publishes (:mod:`queuekit.features.bulk`);
inside ``with outbox(session)`` a publish is written to the application's transaction
(:mod:`queuekit.features.outbox`); ``job()`` starts the fluent form
(:mod:`queuekit.client.fluent`), ``call``/``gather`` wait for replies
(:mod:`queuekit.features.rpc`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..features import keys, outbox
from ..features.broker import future, publishing
from ..features.bulk import DEFAULT_BULK_SIZE, Bulk, active_bulk
from ..features.delays import Delay
from ..features.envelope import Message, Metadata
from ..features.hooks import (
    DEFAULT_NOTIFY_AFTER,
    AfterHook,
    BeforeHook,
    ErrorHook,
    Hooks,
)
from ..features.outbox import active_outbox
from ..features.retry import RetryStrategy
from ..features.rpc import Reply, new_correlation_id
from ..jobstore.records import QUEUED, WAITING, JobUpdate, record_payload
from ..spi.errors import ReplyTimeout
from ..spi.priorities import PriorityRange
from ..spi.transport import Outgoing
from ..worker.loop import Limits, Worker
from ..worker.pipeline import Handler, handler_for
from .config import resolve_outbox
from .fluent import PendingJob

if TYPE_CHECKING:
    from ..features.broker import Broker
    from .connection import Connection

log = logging.getLogger("queuekit")


class Queue:
    """A named queue on a connection: ``publish`` here, ``dispatch`` to work it off."""

    def __init__(self, connection: Connection, name: str) -> None:
        self.connection, self.name = connection, name

    @property
    def _broker(self) -> Broker:
        return self.connection.broker

    def publish(
        self,
        payload: Any,
        *,
        name: str = "",
        delay: Delay | None = None,
        priority: int | None = None,
        key: str | None = None,
        dedup: str = "pending",
        group: str | None = None,
        headers: dict[str, str] | None = None,
        retry: RetryStrategy | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        record: bool = False,
    ) -> str:
        """Send one message; return its id once the broker (or the job store) holds it.

        ``key`` drops this message if another with the key is pending (``dedup="pending"``)
        or was ever published (``dedup="ever"``); see :mod:`queuekit.features.keys`. A dropped
        duplicate's id never runs. ``group`` runs it after the group's earlier messages, one
        at a time (:mod:`queuekit.features.groups`). Inside a ``bulk()`` block of this thread the
        message is buffered and sent with the block's next batch. ``record=True`` keeps a job
        record of it.
        """
        if dedup not in keys.MODES:
            raise ValueError(f"dedup must be one of {', '.join(keys.MODES)}, not {dedup!r}")
        if dedup == keys.EVER and key is None:
            raise ValueError("dedup='ever' needs a key")
        broker = self._broker
        headers = dict(headers or {})
        with publishing(broker, self.name, headers, 1):
            meta = Metadata(name=name, key=key, once=dedup == keys.EVER, group=group,
                            headers=headers, correlation_id=correlation_id, reply_to=reply_to,
                            retry=retry.to_json() if retry else None, record=record)  # fmt: skip
            prepared = broker.prepare(self.name, payload, meta, delay, priority)
            box = active_outbox()
            buffer = active_bulk(broker, self.name)
            if box is not None:  # into the application's transaction, sent after commit
                outbox.write(box, self.name, prepared)
            elif buffer is not None:
                buffer.add(prepared)
            elif record or prepared.keyed or group is not None:
                broker.send_prepared(self.name, [prepared])
            else:
                broker.send(self.name, [prepared.outgoing], prepared.due)
        return prepared.message.id

    def publish_many(
        self,
        payloads: Iterable[Any],
        *,
        name: str = "",
        delay: Delay | None = None,
        priority: int | None = None,
        headers: dict[str, str] | None = None,
        retry: RetryStrategy | None = None,
        record: bool = False,
    ) -> list[str]:
        """Send many messages with the same options in as few round trips as the broker allows.

        Inside a ``bulk()`` block, what the block buffered is sent first (order is kept).
        """
        broker = self._broker
        if active_outbox() is not None:  # each row in the application's transaction
            return [self.publish(p, name=name, delay=delay, priority=priority, headers=headers,
                                 retry=retry, record=record) for p in payloads]  # fmt: skip
        buffer = active_bulk(broker, self.name)
        if buffer is not None:
            buffer.flush()
        items = payloads if isinstance(payloads, Sequence) else list(payloads)
        headers = dict(headers or {})
        with publishing(broker, self.name, headers, len(items)):
            return self._publish_many(items, name, delay, priority, headers, retry=retry,
                                      record=record)  # fmt: skip

    def _publish_many(
        self,
        payloads: Sequence[Any],
        name: str,
        delay: Delay | None,
        priority: int | None,
        headers: dict[str, str],
        *,
        retry: RetryStrategy | None,
        record: bool,
    ) -> list[str]:
        broker = self._broker
        due = future(delay)
        broker.check_priority(priority)
        options = broker.send_options(due, priority)
        retry_json = retry.to_json() if retry else None
        store = broker.jobs.identity() if record else None  # see features.storeid
        ids: list[str] = []
        outgoing: list[Outgoing] = []
        kept_payloads: list[str | None] = []  # what the records keep, when recorded
        for payload in payloads:  # the loop is lean on purpose: bulk publishing is hot
            meta = Metadata(name=name, not_before=due, priority=priority, record=record,
                            headers=dict(headers) if headers else {}, retry=retry_json,
                            store=store)  # fmt: skip
            ids.append(meta.id)
            outgoing.append(Outgoing(broker.encode(Message(payload, meta), self.name), {}, options))
            if record:
                kept_payloads.append(record_payload(payload))
        if outgoing and record:
            state = QUEUED if due is None else WAITING
            created = time.time()
            updates = [
                JobUpdate(i, self.name, name or None, state, created_at=created, payload=kept)
                for i, kept in zip(ids, kept_payloads, strict=True)
            ]
            broker.send_recorded(updates, lambda: broker.send(self.name, outgoing, due))
        elif outgoing:
            broker.send(self.name, outgoing, due)
        return ids

    def bulk(self, size: int = DEFAULT_BULK_SIZE) -> Bulk:
        """``with queue.bulk(500): ...``: buffer this thread's publishes, send in batches.

        See :mod:`queuekit.features.bulk` (what an exception in the block does, threads, nesting).
        """
        return Bulk(self._broker, self.name, size)

    def job(self, payload: Any) -> PendingJob:
        """The fluent form: ``queue.job(payload).delay("1 hour").priority(20).publish()``."""
        return PendingJob(payload, target=self)

    def call(self, payload: Any, *, timeout: float = 30.0, **options: Any) -> Any:
        """Publish ``payload`` as a request and wait for its reply: what the worker's
        ``work()`` returned. Raises :class:`ReplyTimeout` (the request is not withdrawn) or
        :class:`RemoteError` (it failed for good). ``options`` are ``publish``'s."""
        [reply] = self.gather([payload], timeout=timeout, **options)
        if reply is None:
            raise ReplyTimeout(f"no reply from {self.name!r} within {timeout:g}s")
        return reply.result()

    def gather(
        self, payloads: Iterable[Any], *, timeout: float = 30.0, **options: Any
    ) -> list[Reply | None]:
        """Publish each payload as a request (one batch) and gather the replies that come
        within ``timeout`` seconds: one :class:`Reply` per request, in order, ``None`` for
        those without one. See :mod:`queuekit.features.rpc`. Refused inside ``outbox()``:
        no request leaves before the transaction commits, so no reply could come."""
        if active_outbox() is not None:
            raise RuntimeError(
                "call() and gather() cannot wait for replies inside outbox(): "
                "the requests are sent only after the transaction commits"
            )
        replies = self.connection.replies
        requests = list(payloads)
        ids = [new_correlation_id() for _ in requests]
        replies.expect(ids)
        try:
            with self.bulk():
                for payload, cid in zip(requests, ids, strict=True):
                    self.publish(payload, reply_to=replies.name, correlation_id=cid, **options)
                buffer = active_bulk(self._broker, self.name)
                if buffer is not None:  # inside a caller's own bulk(): send the requests now
                    buffer.flush()
        except BaseException:
            replies.wait(ids, 0)  # expect them no more
            raise
        got = replies.wait(ids, timeout)
        return [got.get(cid) for cid in ids]

    def dispatch(
        self,
        work: Callable[[Message], object] | Handler,
        *,
        validate: Callable[[Message], bool] | None = None,
        retry: RetryStrategy | None = None,
        max_messages: int | None = None,
        max_seconds: float | None = None,
        max_memory: int | None = None,
        handle_signals: bool = True,
        record: bool = False,
        before_process: BeforeHook | None = None,
        after_process: AfterHook | None = None,
        on_error: ErrorHook | None = None,
        on_failed_attempts: ErrorHook | None = None,
        notify_after: int = DEFAULT_NOTIFY_AFTER,
        priorities: PriorityRange | str | None = None,
        concurrency: int = 1,
        shutdown_timeout: float | None = None,
        outbox: str | None = None,
    ) -> int:
        """Work this queue off until stopped; return how many messages were processed.

        ``work`` is a callable or an object with ``work``/``validate`` (an AbstractQueue).
        SIGTERM, SIGINT and SIGHUP finish the message in hand, settle it, and return; the
        limits end the loop the same way. See :class:`queuekit.worker.loop.Worker`.
        ``record=True`` keeps a job record of every message (not only those published with
        ``record=True``). The hooks are described in :mod:`queuekit.features.hooks`; given here,
        they replace the handler's own; ``on_failed_attempts`` fires when a message has
        failed ``notify_after`` attempts. ``priorities`` (``"20-40"``, ``"25-"``, a
        :class:`PriorityRange`) takes only messages with a priority in that range.
        ``concurrency`` N runs up to N messages at once (threads, or tasks for an ``async def
        work``); ``shutdown_timeout`` bounds how long a stop waits for them before handing
        what still runs back to the broker. ``outbox`` (else ``$QUEUEKIT_OUTBOX``): relay
        this queue's rows of that application database (:mod:`queuekit.features.outbox`).
        """
        handler = work if not callable(work) else handler_for(work, validate, retry)
        limits = Limits(max_messages=max_messages, max_seconds=max_seconds, max_memory=max_memory)
        given = (before_process, after_process, on_error, on_failed_attempts)
        hooks = handler.hooks()
        if any(h is not None for h in given) or notify_after != DEFAULT_NOTIFY_AFTER:
            hooks = Hooks(
                before=before_process or hooks.before,
                after=after_process or hooks.after,
                on_error=on_error or hooks.on_error,
                on_failed_attempts=on_failed_attempts or hooks.on_failed_attempts,
                notify_after=notify_after,
            )
        if isinstance(priorities, str):
            priorities = PriorityRange.parse(priorities)
        worker = Worker(self.connection.broker, self.name, handler, limits=limits,
                        handle_signals=handle_signals, hooks=hooks, record=record,
                        priorities=priorities, concurrency=concurrency,
                        shutdown_timeout=shutdown_timeout,
                        outbox=resolve_outbox(outbox))  # fmt: skip
        return worker.run()

    def depth(self) -> int:
        """Ready messages: due now and not handed to a consumer; delayed and in-flight
        (un-acked or prefetched) ones are not counted (``Transport.depth``, docs/jobs.md).
        Raises ``Unsupported`` where the broker cannot count (STOMP, ZeroMQ)."""
        return self._broker.transport.depth(self.name)

    def purge(self) -> int:
        return self._broker.transport.purge(self.name)

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} on {self.connection.url.redacted()}>"


class Topic:
    """Publish once, every subscriber receives it (adapters declaring ``fanout``)."""

    def __init__(self, connection: Connection, name: str) -> None:
        self.connection, self.name = connection, name

    def publish(
        self, payload: Any, *, name: str = "", headers: dict[str, str] | None = None
    ) -> str:
        message = Message(payload, Metadata(name=name, headers=dict(headers or {})))
        broker = self.connection.broker
        broker.transport.broadcast(self.name, broker.encode(message, self.name), {})
        return message.id
