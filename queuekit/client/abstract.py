"""``AbstractQueue``: subclass it, name the queue, write ``work()``; ``worker run`` does the rest.

::

    class EmailQueue(AbstractQueue):
        queue = "email"
        def validate(self, message): return "to" in message.payload
        def work(self, message): send_mail(**message.payload)

    EmailQueue().publish({"to": "a@example.com"})   # producer side
    EmailQueue.job({"to": "a@example.com"}).delay("10 minutes").publish()   # fluent form
    EmailQueue().dispatch(max_messages=100)          # worker side (or: worker run app.EmailQueue)

Hooks (``before_process``, ``after_process``, ``on_error``, ``on_failed_attempts``) are
methods to override; see :mod:`queuekit.features.hooks`. ``keep_records = True`` keeps a job
record of every message of the class (:mod:`queuekit.jobstore.records`). ``workers_limit = 3``
runs at most three workers of the queue at once, across every host sharing the job store
(:mod:`queuekit.features.registry`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from ..features.bulk import DEFAULT_BULK_SIZE, Bulk
from ..features.envelope import Message
from ..features.hooks import DEFAULT_NOTIFY_AFTER, Hooks, default_hook, hooks_of
from ..features.retry import DEFAULT_RETRY, RetryStrategy
from ..spi.priorities import PriorityRange
from ..worker.loop import Limits, Worker
from .config import resolve_outbox, resolve_url
from .connection import Connection, connect
from .fluent import PendingJob
from .queue import Queue


class AbstractQueue(ABC):
    """A queue and the handler of its messages in one class.

    Class attributes: ``queue`` (the name; default: the class name in snake case), ``url``
    (default: the configured one for this queue), ``retry`` (the strategy for failures),
    ``keep_records`` (a job record of every message), ``notify_after`` (the failed attempts
    after which ``on_failed_attempts`` is called), ``priority`` (of a message published
    without one), ``priorities`` (the range this class's workers take, e.g. ``"200-"``),
    ``concurrency`` (messages in flight per worker: threads, or tasks when ``work`` is
    ``async def``), ``workers_limit`` (at most this many workers of the queue at once, on
    every host sharing the job store; ``None``: no limit).
    Without a ``connection`` the instance opens its own and closes it when ``dispatch``
    returns or on ``close()``.
    """

    queue: ClassVar[str] = ""
    url: ClassVar[str | None] = None
    retry: RetryStrategy = DEFAULT_RETRY
    keep_records: ClassVar[bool] = False
    notify_after: ClassVar[int] = DEFAULT_NOTIFY_AFTER
    priority: ClassVar[int | None] = None
    priorities: ClassVar[str | None] = None
    concurrency: ClassVar[int] = 1
    workers_limit: ClassVar[int | None] = None

    def __init__(self, connection: Connection | None = None, *, url: str | None = None) -> None:
        self._owns_connection = connection is None
        name = self.queue_name()
        self.connection = connection or connect(resolve_url(url or self.url, queue=name))

    @classmethod
    def queue_name(cls) -> str:
        return cls.queue or re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()

    @property
    def messages(self) -> Queue:
        return self.connection.queue(self.queue_name())

    def validate(self, message: Message) -> bool:
        """Whether the message can be worked on at all; ``False`` sends it to the failed store."""
        return True

    @abstractmethod
    def work(self, message: Message) -> object:
        """Process one message. Return normally to ack it; raise to retry or fail it."""

    # -- hooks: override what you need; the defaults do nothing and cost nothing ----------

    def hooks(self) -> Hooks:
        """The hook methods this class overrides, for the worker."""
        return hooks_of(self)

    @default_hook
    def before_process(self, message: Message) -> None:
        """Before ``work()`` (e.g. pick the tenant's database). Raising fails the attempt."""
        return None

    @default_hook
    def after_process(self, message: Message, result: object) -> None:
        """After ``work()`` returned ``result``, before the ack (e.g. close sessions)."""
        return None

    @default_hook
    def on_error(self, message: Message, exc: BaseException) -> None:
        """``work()`` (or ``before_process``) raised; the retry strategy decides next."""
        return None

    @default_hook
    def on_failed_attempts(self, message: Message, exc: BaseException) -> None:
        """The message has now failed ``notify_after`` attempts (called once, e.g. to alert)."""
        return None

    # -- publishing ----------------------------------------------------------------------

    def publish(self, payload: Any, **options: Any) -> str:
        """Publish to this queue, naming this class as the handler."""
        return self.messages.publish(payload, **self._defaults(options))

    def call(self, payload: Any, *, timeout: float = 30.0, **options: Any) -> Any:
        """Publish a request to this queue and wait for what ``work()`` returns for it
        (:meth:`queuekit.client.queue.Queue.call`)."""
        return self.messages.call(payload, timeout=timeout, **self._defaults(options))

    def _defaults(self, options: dict[str, Any]) -> dict[str, Any]:
        options.setdefault("name", type(self).__qualname__)
        if self.keep_records:
            options.setdefault("record", True)
        if options.get("priority") is None:
            options["priority"] = self.priority
        return options

    @classmethod
    def job(cls, payload: Any) -> PendingJob:
        """The fluent form: ``Cls.job(payload).delay("1 hour").priority(20).publish()``.

        Without ``.using(connection)`` the publish opens (and closes) a connection to the
        class's URL.
        """
        return PendingJob(payload, queue_class=cls)

    def bulk(self, size: int = DEFAULT_BULK_SIZE) -> Bulk:
        """``with EmailQueue(conn).bulk(500) as q: ...``: buffer this thread's publishes on
        this instance's connection; see :mod:`queuekit.features.bulk`."""
        return self.messages.bulk(size)

    def worker(
        self,
        *,
        max_messages: int | None = None,
        max_seconds: float | None = None,
        max_memory: int | None = None,
        handle_signals: bool = True,
        priorities: str | None = None,
        concurrency: int | None = None,
        shutdown_timeout: float | None = None,
        workers_limit: int | None = None,
        wait_for_slot: bool = False,
        outbox: str | None = None,
    ) -> Worker:
        """A worker for this queue (``run()`` it); see :class:`queuekit.worker.loop.Worker`.

        ``priorities`` (e.g. ``"20-40"``) overrides the class's range, ``concurrency`` the
        class's; ``shutdown_timeout`` bounds how long a stop waits for work in flight.
        ``workers_limit`` overrides the class's limit (``0``: none); over the limit the
        worker raises :class:`~queuekit.features.registry.WorkersLimitReached` before taking
        a message, or with ``wait_for_slot`` waits until a slot frees. ``outbox`` (else
        ``$QUEUEKIT_OUTBOX``) is the URL of an application database whose outbox rows for
        this queue the worker relays (:mod:`queuekit.features.outbox`)."""
        limits = Limits(max_messages=max_messages, max_seconds=max_seconds, max_memory=max_memory)
        text = priorities or self.priorities
        return Worker(self.connection.broker, self.queue_name(), self, limits=limits,
                      handle_signals=handle_signals,
                      priorities=PriorityRange.parse(text) if text else None,
                      concurrency=concurrency or self.concurrency,
                      shutdown_timeout=shutdown_timeout,
                      workers_limit=self.workers_limit if workers_limit is None
                      else workers_limit or None,
                      wait_for_slot=wait_for_slot,
                      outbox=resolve_outbox(outbox))  # fmt: skip

    def dispatch(
        self,
        *,
        max_messages: int | None = None,
        max_seconds: float | None = None,
        max_memory: int | None = None,
        handle_signals: bool = True,
        priorities: str | None = None,
        concurrency: int | None = None,
        shutdown_timeout: float | None = None,
        workers_limit: int | None = None,
        wait_for_slot: bool = False,
        outbox: str | None = None,
    ) -> int:
        """Run :meth:`worker` until it stops; return how many messages it processed.
        Closes the connection this instance opened."""
        try:
            worker = self.worker(max_messages=max_messages, max_seconds=max_seconds,
                                 max_memory=max_memory, handle_signals=handle_signals,
                                 priorities=priorities, concurrency=concurrency,
                                 shutdown_timeout=shutdown_timeout,
                                 workers_limit=workers_limit,
                                 wait_for_slot=wait_for_slot,
                                 outbox=outbox)  # fmt: skip
            return worker.run()
        finally:
            if self._owns_connection:
                self.close()

    def close(self) -> None:
        self.connection.close()
