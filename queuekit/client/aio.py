"""Publishing from asyncio code (FastAPI, aiohttp, Starlette) without blocking its loop.

::

    queue = AsyncQueue(connect("amqp://guest:guest@localhost:5672/").queue("email"))
    await queue.publish({"to": "a@example.com"})
    reply = await queue.call({"n": 21}, timeout=10)

Every adapter's client library is blocking (kombu, stomp.py, pygearman; the SQLite file),
so each call runs the blocking :class:`~queuekit.client.queue.Queue` method in a thread of the
running loop's default executor (``asyncio.to_thread``): the loop goes on serving requests
while the broker confirms. The connection is thread-safe, so any number of tasks may publish
at once; they share the connection's publishing channel (on RabbitMQ, their confirms are
waited for together). A task cancelled while its publish runs does not take the message
back: the thread finishes the publish, as a returned id would have promised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from ..features.rpc import Reply
from .queue import Queue


class AsyncQueue:
    """The awaitable face of a :class:`Queue`: the same methods, each ``await``-ed."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    @property
    def name(self) -> str:
        return self.queue.name

    async def publish(self, payload: Any, **options: Any) -> str:
        """:meth:`Queue.publish` (same options); the id once the broker has it."""
        return await asyncio.to_thread(self.queue.publish, payload, **options)

    async def publish_many(self, payloads: Iterable[Any], **options: Any) -> list[str]:
        """:meth:`Queue.publish_many`: one batch, as few round trips as the broker allows."""
        return await asyncio.to_thread(self.queue.publish_many, list(payloads), **options)

    async def call(self, payload: Any, *, timeout: float = 30.0, **options: Any) -> Any:
        """:meth:`Queue.call`: what the worker's ``work()`` returned for ``payload``."""
        return await asyncio.to_thread(self.queue.call, payload, timeout=timeout, **options)

    async def gather(
        self, payloads: Iterable[Any], *, timeout: float = 30.0, **options: Any
    ) -> list[Reply | None]:
        """:meth:`Queue.gather`: one reply (or ``None``) per request, in order."""
        requests = list(payloads)
        return await asyncio.to_thread(self.queue.gather, requests, timeout=timeout, **options)

    async def depth(self) -> int:
        return await asyncio.to_thread(self.queue.depth)

    def __repr__(self) -> str:
        return f"<AsyncQueue {self.queue.name!r} on {self.queue.connection.url.redacted()}>"
