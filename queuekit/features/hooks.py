"""Hooks around each message: before/after ``work()``, on an error, after N failed attempts.

They come from an ``AbstractQueue`` subclass's overridden methods or from callables given to
``Queue.dispatch``. The worker asks :func:`hooks_of` once, so a handler without hooks costs
nothing per message.

What a hook's exception does (it never ends the worker; it is logged, and noted in the job
record's ``error`` when the message is recorded):

- ``before_process`` raising: the attempt fails as if ``work()`` had raised, so ``work()``
  never runs half-prepared (e.g. on the wrong database); the retry strategy applies;
- ``after_process``, ``on_error``, ``on_failed_attempts`` raising: the message's outcome
  stays as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .envelope import Message

BeforeHook = Callable[[Message], object]
AfterHook = Callable[[Message, object], object]
ErrorHook = Callable[[Message, BaseException], object]

#: When ``on_failed_attempts`` fires by default: after the third failed attempt.
DEFAULT_NOTIFY_AFTER = 3

_F = TypeVar("_F", bound=Callable[..., Any])


def default_hook(function: _F) -> _F:
    """Mark a no-op default, so the worker knows a class did not override it."""
    function.__queuekit_default_hook__ = True  # type: ignore[attr-defined]
    return function


def _overridden(handler: object, name: str) -> Callable[..., object] | None:
    found = getattr(handler, name, None)
    if found is None or getattr(found, "__queuekit_default_hook__", False):
        return None
    return found  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Hooks:
    before: BeforeHook | None = None
    after: AfterHook | None = None
    on_error: ErrorHook | None = None
    on_failed_attempts: ErrorHook | None = None
    notify_after: int = DEFAULT_NOTIFY_AFTER

    @property
    def active(self) -> bool:
        return any((self.before, self.after, self.on_error, self.on_failed_attempts))


def hooks_of(handler: object) -> Hooks:
    """The hooks a handler defines (overridden methods; plain attributes on other objects)."""
    notify_after = getattr(handler, "notify_after", None)
    return Hooks(
        before=_overridden(handler, "before_process"),
        after=_overridden(handler, "after_process"),
        on_error=_overridden(handler, "on_error"),
        on_failed_attempts=_overridden(handler, "on_failed_attempts"),
        notify_after=notify_after if isinstance(notify_after, int) else DEFAULT_NOTIFY_AFTER,
    )
