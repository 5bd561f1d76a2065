"""The fluent form of ``publish``: options in any order, then ``.publish()``::

    WelcomeMail.job(user_id).on_queue("emails").delay("1 day + 6 hours") \\
        .priority(20).with_key(f"user-{user_id}").publish()
    conn.queue("emails").job(payload).priority(20).publish()

Each option method returns a new :class:`PendingJob` (a template can be kept and reused);
``publish()`` sends it through ``Queue.publish``, so ``bulk()`` blocks, records and every
check apply alike. Nothing is sent until ``publish()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..features.delays import Delay, due_time
from ..features.retry import RetryStrategy

if TYPE_CHECKING:
    from .abstract import AbstractQueue
    from .connection import Connection
    from .queue import Queue


@dataclass(frozen=True)
class PendingJob:
    """A message not yet published, with the options chosen so far."""

    payload: Any
    queue_class: type[AbstractQueue] | None = None
    target: Queue | None = None
    queue_name: str | None = None
    connection: Connection | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def _with(self, **options: Any) -> PendingJob:
        return replace(self, options={**self.options, **options})

    # -- options -------------------------------------------------------------------------

    def on_queue(self, name: str) -> PendingJob:
        """Publish to ``name`` instead of the class's (or queue's) own."""
        return replace(self, queue_name=name)

    def using(self, connection: Connection) -> PendingJob:
        """Publish through ``connection`` (else the queue's, or a configured one)."""
        return replace(self, connection=connection)

    def delay(self, delay: Delay) -> PendingJob:
        """Seconds, ``"10 minutes"``, ``"1 day + 6 hours"``, ``"PT30M"`` or a datetime."""
        due_time(delay)  # a bad delay is refused here, where it was written
        return self._with(delay=delay)

    def priority(self, priority: int) -> PendingJob:
        return self._with(priority=priority)

    def with_key(self, key: str) -> PendingJob:
        """A dedup key: a second publish with it is dropped while this one waits or runs."""
        return self._with(key=key)

    def while_pending(self) -> PendingJob:
        """Dedup while pending (what ``with_key`` does); needs a key."""
        return self._with(dedup="pending")

    def once_ever(self) -> PendingJob:
        """Dedup for ever: a message with this key runs once, ever; needs a key."""
        return self._with(dedup="ever")

    def in_group(self, group: str) -> PendingJob:
        """Run after the group's earlier messages, one at a time (a serial group)."""
        return self._with(group=group)

    def named(self, name: str) -> PendingJob:
        return self._with(name=name)

    def with_headers(self, **headers: str) -> PendingJob:
        return self._with(headers={**self.options.get("headers", {}), **headers})

    def retry(self, strategy: RetryStrategy) -> PendingJob:
        return self._with(retry=strategy)

    def record(self, keep: bool = True) -> PendingJob:
        """Keep a job record (state, result, timings) in the job store."""
        return self._with(record=keep)

    # -- sending -------------------------------------------------------------------------

    def publish(self) -> str:
        """Send it; return the message id."""
        options = dict(self.options)
        if "dedup" in options and options.get("key") is None:
            raise ValueError(f"{options['dedup']} dedup needs a key: add .with_key(...)")
        if self.queue_class is not None:
            return self._publish_for_class(self.queue_class, options)
        assert self.target is not None
        queue = self.target
        if self.connection is not None or self.queue_name is not None:
            connection = self.connection or queue.connection
            queue = connection.queue(self.queue_name or queue.name)
        return queue.publish(self.payload, **options)

    def _publish_for_class(self, cls: type[AbstractQueue], options: dict[str, Any]) -> str:
        options.setdefault("name", cls.__qualname__)
        if cls.keep_records:
            options.setdefault("record", True)
        if options.get("priority") is None and cls.priority is not None:
            options["priority"] = cls.priority
        name = self.queue_name or cls.queue_name()
        if self.connection is not None:
            return self.connection.queue(name).publish(self.payload, **options)
        from .config import resolve_url
        from .connection import connect

        with connect(resolve_url(cls.url, queue=name)) as connection:
            return connection.queue(name).publish(self.payload, **options)
