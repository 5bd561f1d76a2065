"""An event manager, and a bridge that turns service events into queue messages.

A service triggers ``user.saved``; a bridge attached to that name publishes a message, so
the service queues a welcome mail without knowing there is a queue::

    events = EventManager()
    bridge(events, "user.saved", email_queue, to_payload=lambda e: {"to": e.params["email"]})
    events.trigger("user.saved", user, email="a@example.com")

Event names are dot-separated words; listeners attach to names or patterns where ``*``
matches one word and ``#`` any number (``user.*``, ``#`` for everything), as topics do.
Listeners run in the order of their priority (higher first), then of attachment.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..spi.topics import topic_matches

Listener = Callable[["Event"], object]


@dataclass
class Event:
    """What a listener receives. ``stop_propagation()`` ends the trigger after this listener."""

    name: str
    target: object = None
    params: dict[str, Any] = field(default_factory=dict)
    propagation_stopped: bool = False

    def stop_propagation(self) -> None:
        self.propagation_stopped = True


@dataclass(frozen=True)
class _Attachment:
    pattern: str
    listener: Listener
    priority: int
    order: int


class EventManager:
    """attach / detach / trigger; thread-safe."""

    def __init__(self) -> None:
        self._attachments: list[_Attachment] = []
        self._order = itertools.count()
        self._lock = threading.Lock()

    def attach(self, pattern: str, listener: Listener, priority: int = 0) -> Listener:
        with self._lock:
            self._attachments.append(_Attachment(pattern, listener, priority, next(self._order)))
        return listener

    def detach(self, listener: Listener, pattern: str | None = None) -> bool:
        """Remove ``listener`` (from ``pattern`` only, if given); whether anything was removed."""
        with self._lock:
            kept = [
                a
                for a in self._attachments
                if not (a.listener == listener and pattern in (None, a.pattern))
            ]
            removed = len(kept) != len(self._attachments)
            self._attachments = kept
        return removed

    def trigger(self, name: str, target: object = None, /, **params: Any) -> list[object]:
        """Call every listener whose pattern matches ``name``; return their results."""
        event = Event(name, target, params)
        with self._lock:
            matching = sorted(
                (a for a in self._attachments if topic_matches(a.pattern, name)),
                key=lambda a: (-a.priority, a.order),
            )
        results: list[object] = []
        for attachment in matching:
            results.append(attachment.listener(event))
            if event.propagation_stopped:
                break
        return results


class Publisher(Protocol):
    """Anything with ``publish(payload, **options)``: a Queue, a Topic, an AbstractQueue."""

    @property
    def publish(self) -> Callable[..., str]: ...


def event_payload(event: Event) -> dict[str, Any]:
    """The default message for an event: its name and parameters (the target stays behind)."""
    return {"event": event.name, "params": event.params}


def bridge(
    events: EventManager,
    pattern: str,
    publisher: Publisher,
    *,
    to_payload: Callable[[Event], Any] = event_payload,
    priority: int = 0,
    **publish_options: Any,
) -> Listener:
    """Publish a message for every event matching ``pattern``; returns the listener to detach.

    The message is named after the event (``metadata.name``), and the listener returns the
    message id, so ``trigger`` tells the service what it queued.
    """

    def publish_event(event: Event) -> str:
        options = {"name": event.name, **publish_options}
        return publisher.publish(to_payload(event), **options)

    return events.attach(pattern, publish_event, priority)
