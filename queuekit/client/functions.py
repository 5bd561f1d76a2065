"""Job functions: a plain function as a job, for Celery and dramatiq users::

    from queuekit import job

    @job(queue="email", retry=Repeat(3))
    def send_welcome(user_id: int, *, lang: str = "en") -> None: ...

    send_welcome.publish(7, lang="de")                    # returns the message id
    send_welcome.call(7)                                  # waits for the return value
    send_welcome.job(7).delay("10 minutes").priority(20).publish()   # the fluent form
    send_welcome.using(conn).publish(7)                   # through an open connection
    send_welcome(7)                                       # still a function: runs here

and ``worker run myproject.tasks`` works them off (see :func:`serving`).

The message is an ordinary envelope: the payload is ``{"args": [...], "kwargs": {...}}``
(any payload queuekit carries, so dates, UUIDs and decimals come back typed), the metadata
``name`` is the function's ``module:qualname``, and the function's retry strategy travels in
the message, so one worker serves several functions with their own retries. It goes through
the same ``Queue.publish`` and the same worker pipeline as an ``AbstractQueue``: the worker's
handler is an ``AbstractQueue`` subclass made for the functions it serves.

Without ``using(connection)``, ``publish`` and ``call`` open a connection to the function's
broker (``url``, else the configured one for its queue) and close it: fine for a few
messages; pass a connection for many, and to join a ``bulk()`` block.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Generic, ParamSpec, TypeVar

from ..features.envelope import Message
from ..features.retry import DEFAULT_RETRY, NoRetry, RetryStrategy
from ..spi.errors import ConfigurationError, PermanentError
from .abstract import AbstractQueue
from .config import resolve_url
from .connection import Connection, connect
from .fluent import PendingJob

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class JobFunction(Generic[P, R]):
    """A function that is also a job on ``queue``; made by :func:`job`."""

    func: Callable[P, R]
    queue: str
    url: str | None = None
    retry: RetryStrategy = DEFAULT_RETRY
    priority: int | None = None
    keep_records: bool = False
    call_timeout: float = 30.0
    connection: Connection | None = None

    @property
    def name(self) -> str:
        """What the messages are named, and what a worker finds the function by."""
        return f"{self.func.__module__}:{self.func.__qualname__}"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now, as if it were not a job."""
        return self.func(*args, **kwargs)

    def using(self, connection: Connection) -> JobFunction[P, R]:
        """The same job function, publishing through ``connection``."""
        return replace(self, connection=connection)

    def job(self, *args: P.args, **kwargs: P.kwargs) -> PendingJob:
        """The fluent form: ``.job(7).delay("1 hour").priority(20).publish()``."""
        pending = PendingJob(_call_payload(args, kwargs), queue_class=self._queue_class())
        pending = pending.named(self.name).retry(self.retry)
        return pending if self.connection is None else pending.using(self.connection)

    def publish(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Publish a call with these arguments; return the message id."""
        return self.job(*args, **kwargs).publish()

    def call(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Publish a call and wait (``call_timeout`` seconds) for the function's return
        value, as JSON carried it back (``Queue.call``: ``ReplyTimeout``, ``RemoteError``)."""
        payload = _call_payload(args, kwargs)
        options = {"name": self.name, "retry": self.retry, "priority": self.priority,
                   "record": self.keep_records}  # fmt: skip
        if self.connection is not None:
            return self.connection.queue(self.queue).call(
                payload, timeout=self.call_timeout, **options
            )
        with connect(resolve_url(self.url, queue=self.queue)) as connection:
            return connection.queue(self.queue).call(payload, timeout=self.call_timeout, **options)

    def _queue_class(self) -> type[AbstractQueue]:
        """What the fluent form publishes for: this function's queue, URL and defaults."""
        return serving([self])


def job(
    queue: str | None = None,
    *,
    url: str | None = None,
    retry: RetryStrategy | None = DEFAULT_RETRY,
    priority: int | None = None,
    keep_records: bool = False,
    call_timeout: float = 30.0,
) -> Callable[[Callable[P, R]], JobFunction[P, R]]:
    """Make a function a job on ``queue`` (default: the function's name). ``retry``
    (``None``: no retries), ``priority``, ``keep_records`` and ``url`` mean what they mean
    on an ``AbstractQueue``; ``call_timeout`` is how long ``.call()`` waits."""

    def wrap(func: Callable[P, R]) -> JobFunction[P, R]:
        if inspect.iscoroutinefunction(func):
            raise ConfigurationError(
                f"@job: {func.__qualname__} is async def; job functions are plain functions "
                "(an AbstractQueue with an async def work() runs coroutines)"
            )
        if "<locals>" in func.__qualname__:
            raise ConfigurationError(
                f"@job: {func.__qualname__} is defined inside a function; a worker finds job "
                "functions by module and name, so define it at a module's top level"
            )
        return JobFunction(func, queue or func.__name__, url=url,
                           retry=NoRetry() if retry is None else retry, priority=priority,
                           keep_records=keep_records, call_timeout=call_timeout)  # fmt: skip

    return wrap


def _call_payload(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}


def functions_of(module: types.ModuleType) -> list[JobFunction[Any, Any]]:
    """The job functions defined at the top level of ``module``, by name."""
    found = [v for v in vars(module).values() if isinstance(v, JobFunction)]
    return sorted(found, key=lambda f: f.name)


def serving(functions: Iterable[JobFunction[Any, Any]]) -> type[AbstractQueue]:
    """The ``AbstractQueue`` that works off ``functions``, which must share one queue (and
    one URL): ``work()`` calls the function a message names with its arguments and returns
    what it returns. A message naming no function here fails for good, with a reason that
    names the functions this worker serves; so does a payload that is not a call.

    This is how ``worker run myproject.tasks`` runs job functions: one worker process per
    queue, every function of that queue in it.
    """
    chosen = list(functions)
    if not chosen:
        raise ConfigurationError("no job functions to serve")
    queues = {f.queue for f in chosen}
    urls = {f.url for f in chosen}
    if len(queues) > 1 or len(urls) > 1:
        raise ConfigurationError(
            "one worker serves one queue on one broker; these job functions are on "
            f"{', '.join(sorted(queues))} ({', '.join(sorted(map(str, urls)))})"
        )
    by_name = {f.name: f for f in chosen}

    class JobFunctions(AbstractQueue):
        queue: ClassVar[str] = chosen[0].queue
        url: ClassVar[str | None] = chosen[0].url
        # retries travel in each message (the function's own); this is for the rest
        keep_records: ClassVar[bool] = any(f.keep_records for f in chosen)
        priority: ClassVar[int | None] = chosen[0].priority if len(chosen) == 1 else None
        functions: ClassVar[dict[str, JobFunction[Any, Any]]] = by_name

        def work(self, message: Message) -> object:
            function = self.functions.get(message.metadata.name)
            if function is None:
                raise PermanentError(
                    f"no job function {message.metadata.name!r} in this worker (it serves "
                    f"{', '.join(self.functions)}); run a worker for the module that has it"
                )
            payload = message.payload
            if not (isinstance(payload, dict) and isinstance(payload.get("args"), list)
                    and isinstance(payload.get("kwargs"), dict)):  # fmt: skip
                raise PermanentError("the payload is not a job function call (args, kwargs)")
            return function.func(*payload["args"], **payload["kwargs"])

    JobFunctions.__qualname__ = JobFunctions.__name__ = f"JobFunctions[{chosen[0].queue}]"
    return JobFunctions
