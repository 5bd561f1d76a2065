"""Queues and topics: the publishing side of the core.

``Connection.queue(name)`` (:mod:`queuekit.client.connection`) gives a :class:`Queue` that
wraps payloads in envelopes and applies the publishing policies: a delay becomes the
broker's own ``not_before`` where the adapter declares ``delay``, and otherwise waits in the
job store's durable delayed store until a worker's scheduler forwards it. Other options the
adapter cannot honour raise :class:`Unsupported`, never silently do nothing.

``publish(..., record=True)`` also writes a ``queued`` (or, delayed, ``waiting``) job record
in the job store before the message is sent; ``connection.job(id)`` reads it back.
``bulk()`` buffers publishes (:mod:`queuekit.features.bulk`), ``job()`` starts the fluent form
(:mod:`queuekit.client.fluent`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..features import groups, keys
from ..features.bulk import DEFAULT_BULK_SIZE, Bulk, active_bulk
from ..features.delays import Delay, due_time
from ..features.envelope import Message, Metadata, encode
from ..features.hooks import DEFAULT_NOTIFY_AFTER, AfterHook, BeforeHook, ErrorHook, Hooks
from ..features.retry import RetryStrategy
from ..features.rpc import Reply, new_correlation_id
from ..jobstore.records import QUEUED, WAITING, JobUpdate
from ..spi.errors import MessageTooLarge, ReplyTimeout, Unsupported
from ..spi.priorities import MAX_PRIORITY, PriorityRange
from ..spi.transport import Delivery, Outgoing, SendOptions, Transport
from .fluent import PendingJob

if TYPE_CHECKING:
    from ..worker.pipeline import Handler
    from .connection import Connection

log = logging.getLogger("queuekit")


@dataclass(frozen=True)
class _Prepared:
    message: Message
    outgoing: Outgoing
    due: float | None
    keyed: bool = False  # its dedup key is held in the job store


class Queue:
    """A named queue on a connection: ``publish`` here, ``dispatch`` to work it off."""

    def __init__(self, connection: Connection, name: str) -> None:
        self.connection, self.name = connection, name

    @property
    def transport(self) -> Transport:
        return self.connection.transport

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
        prepared = self._prepare(
            payload, Metadata(name=name, key=key, once=dedup == keys.EVER, group=group,
                              headers=dict(headers or {}), correlation_id=correlation_id,
                              reply_to=reply_to, retry=retry.to_json() if retry else None,
                              record=record),
            delay, priority,
        )  # fmt: skip
        buffer = active_bulk(self.connection._local, self.name)
        if buffer is not None:
            buffer.add(prepared)
        elif record or prepared.keyed or group is not None:
            self._send_prepared([prepared])
        else:
            self._send([prepared.outgoing], prepared.due)
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
        buffer = active_bulk(self.connection._local, self.name)
        if buffer is not None:
            buffer.flush()
        due = None if delay is None else due_time(delay)
        if due is not None and due <= time.time():
            due = None
        self.check_priority(priority)
        caps = self.transport.capabilities
        options = SendOptions(not_before=due if caps.delay else None, priority=priority)
        retry_json = retry.to_json() if retry else None
        ids: list[str] = []
        outgoing: list[Outgoing] = []
        for payload in payloads:  # the loop is lean on purpose: bulk publishing is hot
            meta = Metadata(name=name, not_before=due, priority=priority, record=record,
                            headers=dict(headers) if headers else {}, retry=retry_json)  # fmt: skip
            body = encode(Message(payload, meta))
            if caps.max_message_size is not None and len(body) > caps.max_message_size:
                raise MessageTooLarge(len(body), caps.max_message_size, self.transport.name)
            ids.append(meta.id)
            outgoing.append(Outgoing(body, {}, options))
        if outgoing and record:
            state = QUEUED if due is None else WAITING
            created = time.time()
            updates = [
                JobUpdate(i, self.name, name or None, state, created_at=created) for i in ids
            ]
            self._recorded_send(updates, lambda: self._send(outgoing, due))
        elif outgoing:
            self._send(outgoing, due)
        return ids

    def bulk(self, size: int = DEFAULT_BULK_SIZE) -> Bulk:
        """``with queue.bulk(500): ...``: buffer this thread's publishes, send in batches.

        See :mod:`queuekit.features.bulk` (what an exception in the block does, threads, nesting).
        """
        return Bulk(self, size)

    def job(self, payload: Any) -> PendingJob:
        """The fluent form: ``queue.job(payload).delay("1 hour").priority(20).publish()``."""
        return PendingJob(payload, target=self)

    def resend(self, message: Message, *, delay: float | None = None) -> None:
        """Publish ``message`` again as it is (same id), e.g. for a retry.

        The copy keeps its place: it carries no dedup key (the original still holds it
        until it is settled after this send, and a broker deduplicating on it would drop
        the copy) and does not line up in its group again (the group waits for it).
        """
        meta = message.metadata
        prepared = self._prepare(message.payload, meta, delay, meta.priority, fresh=False)
        self._send([prepared.outgoing], prepared.due)

    def retry(self, delivery: Delivery, message: Message, *, delay: float | None) -> None:
        """Put ``delivery`` back as ``message``'s next attempt, due after ``delay`` seconds.

        Where the broker can wait, the adapter requeues it in place (``Transport.requeue``,
        so a native dedup key stays taken); otherwise it waits in the delayed store and
        the delivery is acked.
        """
        meta = message.metadata
        prepared = self._prepare(message.payload, meta, delay, meta.priority, fresh=False)
        outgoing = prepared.outgoing
        if prepared.due is not None and not self.transport.capabilities.delay:
            self._send([outgoing], prepared.due)
            self.transport.ack(delivery)
        else:
            self.transport.requeue(delivery, outgoing.body, options=outgoing.options)

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
        those without one. See :mod:`queuekit.features.rpc`."""
        replies = self.connection.replies
        requests = list(payloads)
        ids = [new_correlation_id() for _ in requests]
        replies.expect(ids)
        try:
            with self.bulk():
                for payload, cid in zip(requests, ids, strict=True):
                    self.publish(payload, reply_to=replies.name, correlation_id=cid, **options)
                buffer = active_bulk(self.connection._local, self.name)
                if buffer is not None:  # inside a caller's own bulk(): send the requests now
                    buffer.flush()
        except BaseException:
            replies.wait(ids, 0)  # expect them no more
            raise
        got = replies.wait(ids, timeout)
        return [got.get(cid) for cid in ids]

    def forward(self, outgoing: Outgoing, due: float | None) -> None:
        """Send an already encoded message, due at ``due`` (the broker's delay or the
        delayed store), e.g. the next message of a serial group."""
        if due is not None and due <= time.time():
            due = None
        if due is not None and self.transport.capabilities.delay:
            outgoing = replace(outgoing, options=replace(outgoing.options, not_before=due))
        self._send([outgoing], due)

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
        """
        from ..features.hooks import hooks_of
        from ..worker.loop import Limits, Worker
        from ..worker.pipeline import FunctionHandler

        handler = work if not callable(work) else FunctionHandler(work, validate, retry)
        limits = Limits(max_messages=max_messages, max_seconds=max_seconds, max_memory=max_memory)
        given = (before_process, after_process, on_error, on_failed_attempts)
        hooks = hooks_of(handler)
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
        worker = Worker(self, handler, limits=limits, handle_signals=handle_signals,
                        hooks=hooks, record=record, priorities=priorities)  # fmt: skip
        return worker.run()

    def depth(self) -> int:
        return self.transport.depth(self.name)

    def purge(self) -> int:
        return self.transport.purge(self.name)

    # -- internals -----------------------------------------------------------------------

    def _prepare(
        self,
        payload: Any,
        metadata: Metadata,
        delay: Delay | None,
        priority: int | None,
        *,
        fresh: bool = True,
    ) -> _Prepared:
        """Encode and check a message. ``fresh=False`` (a resend of a message already
        published) skips its key and its group: the original holds both."""
        caps = self.transport.capabilities
        due = None if delay is None else due_time(delay)
        if due is not None and due <= time.time():
            due = None
        self.check_priority(priority)
        keyed = fresh and keys.held_in_store(metadata, caps)
        if keyed:
            keys.check(metadata, caps, self.transport.name)
        if fresh and metadata.group is not None and not caps.redelivery:
            raise Unsupported(
                "serial groups", self.transport.name,
                "a message lost with its worker would stop its group for ever",
            )  # fmt: skip
        metadata.not_before, metadata.priority = due, priority
        message = Message(payload, metadata)
        body = encode(message)
        limit = caps.max_message_size
        if limit is not None and len(body) > limit:
            raise MessageTooLarge(len(body), limit, self.transport.name)
        options = SendOptions(
            not_before=due if caps.delay else None,
            priority=priority,
            dedup_key=metadata.key if fresh and caps.dedup else None,
        )
        return _Prepared(message, Outgoing(body, {}, options), due, keyed)

    def check_priority(self, priority: int | None) -> None:
        """Refuse a priority out of range, or one this queue's broker cannot honour."""
        if priority is None:
            return
        if not 0 <= priority <= MAX_PRIORITY:
            raise ValueError(f"priority must be 0-{MAX_PRIORITY}, not {priority}")
        if not self.transport.capabilities.priority:
            alternative = "use sqlite://, amqp://, stomp:// or gearman://"
            raise Unsupported("priority", self.transport.name, alternative)

    def _send_prepared(self, batch: Sequence[_Prepared]) -> None:
        """Send prepared messages with their own options, dropping duplicates whose key the
        job store holds (see :mod:`queuekit.features.keys`)."""
        keyed = [p for p in batch if p.keyed]
        if not keyed:
            self._send_options(batch)
            return
        jobs = self.connection.jobs
        held = keys.hold(jobs, self.name, [p.message.metadata for p in keyed])
        holders = [p.message.metadata for p in keyed if p.message.id in held]
        try:
            self._send_options([p for p in batch if not p.keyed or p.message.id in held])
        except BaseException:
            keys.abandon(jobs, self.name, holders)
            raise
        keys.confirm(jobs, self.name, holders)

    def _send_options(self, batch: Sequence[_Prepared]) -> None:
        """One ``send_many`` for what the broker takes now, one delayed-store write per due
        time, serial groups lined up in the job store; records written first."""
        emulated = not self.transport.capabilities.delay
        now: list[Outgoing] = []
        later: dict[float, list[Outgoing]] = {}
        grouped: dict[str, list[tuple[str, Outgoing, float | None]]] = {}
        for item in batch:
            group = item.message.metadata.group
            if group is not None:
                grouped.setdefault(group, []).append((item.message.id, item.outgoing, item.due))
            elif emulated and item.due is not None:
                later.setdefault(item.due, []).append(item.outgoing)
            else:
                now.append(item.outgoing)

        def send() -> None:
            if now:
                self._send(now, None)
            for due, outgoing in later.items():
                self._send(outgoing, due)
            if grouped:
                groups.line_up(self.connection, self.name, grouped)

        updates = [
            JobUpdate(p.message.id, self.name, p.message.metadata.name or None,
                      QUEUED if p.due is None else WAITING,
                      created_at=p.message.metadata.created_at)
            for p in batch if p.message.metadata.record
        ]  # fmt: skip
        if updates:
            self._recorded_send(updates, send)
        else:
            send()

    def _recorded_send(self, updates: list[JobUpdate], send: Callable[[], None]) -> None:
        """Write the records first (a fast worker's ``running`` must not be overwritten by
        ``queued``), send, and take the records back if the send failed."""
        self.connection.jobs.write_jobs(updates)
        try:
            send()
        except BaseException:
            self.connection.jobs.delete_jobs([u.id for u in updates])
            raise

    def _send(self, outgoing: Sequence[Outgoing], due: float | None) -> None:
        if due is not None and not self.transport.capabilities.delay:
            self.connection.jobs.add_delayed(self.name, due, outgoing)
        elif len(outgoing) == 1:
            item = outgoing[0]
            self.transport.send(self.name, item.body, item.headers, options=item.options)
        else:
            self.transport.send_many(self.name, outgoing)

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
        self.connection.transport.broadcast(self.name, encode(message), {})
        return message.id
