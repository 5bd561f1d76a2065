"""``AbstractQueue``: subclass it, name the queue, write ``work()``; ``worker run`` does the rest.

::

    class EmailQueue(AbstractQueue):
        queue = "email"
        def validate(self, message): return "to" in message.payload
        def work(self, message): send_mail(**message.payload)

    EmailQueue().publish({"to": "a@example.com"})   # producer side
    EmailQueue().dispatch(max_messages=100)          # worker side (or: worker run app.EmailQueue)
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from .config import resolve_url
from .envelope import Message
from .queue import Connection, Queue, connect
from .retry import DEFAULT_RETRY, RetryStrategy
from .worker import Limits, Worker


class AbstractQueue(ABC):
    """A queue and the handler of its messages in one class.

    Class attributes: ``queue`` (the name; default: the class name in snake case), ``url``
    (default: the configured one for this queue), ``retry`` (the strategy for failures).
    Without a ``connection`` the instance opens its own and closes it when ``dispatch``
    returns or on ``close()``.
    """

    queue: ClassVar[str] = ""
    url: ClassVar[str | None] = None
    retry: RetryStrategy = DEFAULT_RETRY

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

    def publish(self, payload: Any, **options: Any) -> str:
        """Publish to this queue, naming this class as the handler."""
        options.setdefault("name", type(self).__qualname__)
        return self.messages.publish(payload, **options)

    def dispatch(
        self,
        *,
        max_messages: int | None = None,
        max_seconds: float | None = None,
        max_memory: int | None = None,
        handle_signals: bool = True,
    ) -> int:
        """Run the worker loop on this queue; see :class:`queuekit.core.worker.Worker`."""
        limits = Limits(max_messages=max_messages, max_seconds=max_seconds, max_memory=max_memory)
        try:
            return Worker(self.messages, self, limits=limits, handle_signals=handle_signals).run()
        finally:
            if self._owns_connection:
                self.close()

    def close(self) -> None:
        self.connection.close()
