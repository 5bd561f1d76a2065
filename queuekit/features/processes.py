"""Process managers: long-running workflows, one instance per correlation key.

An instance is started by some messages, moved on by others, and ended by ``complete``.
Its state (JSON) and version live in the job store (:class:`~queuekit.jobstore.base.
ProcessInstance`). Each message is one *step*: read the instance, run the handler on a copy
of its state, then commit the new state, the message's id and every message the handler
scheduled in one job-store transaction, on the version that was read
(:meth:`~queuekit.jobstore.base.JobStore.commit_process`). So, under at-least-once delivery
and any number of workers:

- a message delivered twice (a redelivery after a crash between commit and ack, or a
  delayed message forwarded twice) finds its id handled (an event) or no longer pending
  (a timeout: its step removed it from the instance's timeouts, so an instance that
  re-schedules itself for ever keeps no growing list of handled ids): it changes nothing
  and schedules nothing;
- two messages of one instance never interleave: when another step committed first, the
  commit finds another version and the step runs again on the new state (optimistic
  versioning; handlers must do their effects through ``schedule``, which is only kept
  when its step commits);
- a scheduled message cannot be lost or sent twice by a crash between writing the state
  and sending it: it goes into the delayed store in the step's transaction, and workers
  forward it when due (at least once; its id is deterministic, the instance, the version
  and its place in the step, so a second forward is a duplicate anyone can recognise).

A message scheduled with a delay comes back to the manager first, as a *timeout* (the
``TIMEOUT`` message name) due then: if the instance completed meanwhile it is dropped, so
nothing an instance scheduled runs after it ended; otherwise the step that handles it runs
the manager's own handler (a command the manager handles) or sends the command to its
queue, due now. A message for a key without an instance, that does not start one, meets
the manager's policy: drop it, log it, or fail it (to the failed store). A start event
for a key whose instance exists is dropped (a producer that published it twice must not
start a second chain of checks), unless the manager also ``handles`` it.

This module is the engine; :class:`queuekit.client.processes.ProcessManager` is what an
application subclasses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..jobstore.base import COMMITTED, DUPLICATE, ProcessStep
from ..spi.errors import PermanentError, RetryLater
from ..spi.transport import Outgoing
from .delays import Delay, due_time
from .envelope import Message, Metadata

if TYPE_CHECKING:
    from .broker import Broker

log = logging.getLogger("queuekit")

#: The name of a timeout: a message an instance scheduled for later, back at its manager.
TIMEOUT = "queuekit.process.timeout"
#: What a manager does with a message for a key without an instance that does not start one.
DROP, LOG, FAIL = "drop", "log", "fail"
POLICIES = (DROP, LOG, FAIL)
#: Steps run again after conflicts before the message is put back for later.
MAX_CONFLICTS = 100


# -- events: dataclasses or named payloads -----------------------------------------------------


def event_name(kind: type | str) -> str:
    """The message name of an event type (its qualified name) or of a named event."""
    return kind if isinstance(kind, str) else kind.__qualname__


def event_message(event: Any) -> tuple[str, Any]:
    """A dataclass event as a message name and payload (its fields; typed values such as
    datetimes travel as the envelope carries them)."""
    if not dataclasses.is_dataclass(event) or isinstance(event, type):
        raise TypeError(f"an event is a dataclass instance, not {event!r}")
    fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    return event_name(type(event)), fields


def event_from(kind: type | str, payload: Any) -> Any:
    """The event a message carries: the dataclass ``kind`` made from the payload's fields,
    or the payload itself for a named event; a payload that does not fit fails for good."""
    if isinstance(kind, str):
        return payload
    if not isinstance(payload, dict):
        raise PermanentError(f"the payload of {event_name(kind)} is not an object of fields")
    try:
        return kind(**payload)
    except TypeError as exc:
        raise PermanentError(f"the payload does not make a {event_name(kind)}: {exc}") from None


# -- a manager, as the engine sees it ----------------------------------------------------------


@dataclass
class Effects:
    """What a handler asked for in one step: messages to schedule, and completion."""

    scheduled: list[tuple[str, str, Any, float]] = field(default_factory=list)
    completed: bool = False

    def schedule(self, queue: str, name: str, payload: Any, delay: Delay | None) -> None:
        due = time.time() if delay is None else due_time(delay)
        self.scheduled.append((queue, name, payload, due))


#: ``handle(kind, event, state, effects) -> state``: runs the manager's handler for ``kind``.
Handle = Callable[[type | str, Any, Any, Effects], Any]


@dataclass(frozen=True)
class Manager:
    """A process manager: its ``name`` (in the job store), its own ``queue``, the event
    kinds that start an instance and those that move one on (each with the function that
    finds its correlation key), its initial state, its handler and its no-instance
    policy."""

    name: str
    queue: str
    starts: Mapping[type | str, Callable[[Any], str]]
    moves: Mapping[type | str, Callable[[Any], str]]
    initial: Callable[[], Any]
    handle: Handle
    no_instance: str = LOG

    def kind(self, name: str) -> type | str | None:
        """The event kind a message name stands for, if this manager handles it."""
        for kind in (*self.starts, *self.moves):
            if event_name(kind) == name:
                return kind
        return None


# -- a step ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Incoming:
    """A message as a step of instance ``key``: the event ``kind`` and ``event`` a handler
    runs for, or (``kind`` None) a timeout's ``command`` (queue, name, payload) to send."""

    key: str
    kind: type | str | None
    event: Any = None
    command: tuple[str, str, Any] | None = None
    timeout: bool = False


def step(broker: Broker, manager: Manager, message: Message) -> str:
    """Handle ``message`` (an event, or one of the manager's timeouts) as one step of its
    instance; return what happened: ``committed``; ``duplicate``; dropped because the
    instance ``completed``, was ``started`` already (a start event) or there is
    ``no instance``. Raises ``RetryLater`` after ``MAX_CONFLICTS`` conflicts."""
    incoming = _incoming(manager, message)
    for _ in range(MAX_CONFLICTS):
        outcome = _attempt(broker, manager, message, incoming)
        if outcome is not None:
            return outcome
    raise RetryLater(
        1.0, f"{manager.name} {incoming.key!r}: {MAX_CONFLICTS} conflicting steps in a row"
    )


def _incoming(manager: Manager, message: Message) -> Incoming:
    name, body = message.metadata.name, message.payload
    if name == TIMEOUT:
        if not (isinstance(body, dict) and all(
                isinstance(body.get(f), str) for f in ("key", "queue", "name"))):  # fmt: skip
            raise PermanentError("a process timeout without key, queue and name")
        kind = manager.kind(body["name"]) if body["queue"] == manager.queue else None
        if kind is None:  # a command for another queue: it goes there now
            command = (body["queue"], body["name"], body.get("payload"))
            return Incoming(body["key"], None, command=command, timeout=True)
        return Incoming(body["key"], kind, event_from(kind, body.get("payload")), timeout=True)
    kind = manager.kind(name)
    if kind is None:
        raise PermanentError(f"process manager {manager.name} handles no {name!r} message")
    event = event_from(kind, message.payload)
    try:
        key = (manager.starts.get(kind) or manager.moves[kind])(event)
    except Exception as exc:  # e.g. a bridged payload without the field: it will not appear
        raise PermanentError(f"{manager.name}: no key in {name}: {exc!r}") from None
    if not isinstance(key, str) or not key:
        raise PermanentError(f"{manager.name}: the key of {name} is {key!r}, not a str")
    return Incoming(key, kind, event)


def _attempt(broker: Broker, manager: Manager, message: Message, incoming: Incoming) -> str | None:
    """One read, run and commit; ``None`` when another step committed first."""
    key = incoming.key
    instance, handled = broker.jobs.load_process(manager.name, key, message.id)
    if handled:
        log.info("%s %r: message %s was handled already; dropped", manager.name, key, message.id)
        return DUPLICATE
    if instance is not None and instance.completed:
        log.info("%s %r completed; message %s (%s) dropped", manager.name, key, message.id,
                 message.metadata.name)  # fmt: skip
        return "completed"
    if instance is None and (incoming.timeout or incoming.kind not in manager.starts):
        return _no_instance(manager, key, message)
    if instance is not None and incoming.timeout and message.id not in instance.timeouts:
        log.info("%s %r: timeout %s came back already; dropped", manager.name, key, message.id)
        return DUPLICATE
    if instance is not None and not incoming.timeout and incoming.kind not in manager.moves:
        log.info("%s %r is started already; message %s (%s) dropped", manager.name, key,
                 message.id, message.metadata.name)  # fmt: skip
        return "started"
    state = manager.initial() if instance is None else instance.state
    version = 0 if instance is None else instance.version
    timeouts = {} if instance is None else dict(instance.timeouts)
    timeouts.pop(message.id, None)  # a timeout that came back
    effects = Effects()
    if incoming.command is not None:
        effects.scheduled.append((*incoming.command, time.time()))
    else:
        assert incoming.kind is not None
        state = manager.handle(incoming.kind, incoming.event, state, effects)
    sends = _sends(broker, manager, key, version + 1, effects, timeouts=timeouts)
    handled_id = None if incoming.timeout else message.id  # a timeout leaves ``timeouts``
    change = ProcessStep(manager.name, key, handled_id, version, state, effects.completed,
                         {} if effects.completed else timeouts, sends)  # fmt: skip
    try:
        outcome = broker.jobs.commit_process(change)
    except (TypeError, ValueError) as exc:  # the store writes the state as JSON
        raise PermanentError(f"{manager.name} {key!r}: the state is not JSON: {exc}") from None
    if outcome in (COMMITTED, DUPLICATE):
        return outcome
    log.debug("%s %r: version %d moved on; the step runs again", manager.name, key, version)
    return None


def _no_instance(manager: Manager, key: str, message: Message) -> str:
    what = (f"{manager.name} has no instance {key!r} for message {message.id} "
            f"({message.metadata.name})")  # fmt: skip
    if manager.no_instance == FAIL:
        raise PermanentError(what)
    log.log(logging.WARNING if manager.no_instance == LOG else logging.DEBUG, "%s; dropped", what)
    return "no instance"


def _sends(
    broker: Broker,
    manager: Manager,
    key: str,
    version: int,
    effects: Effects,
    *,
    timeouts: dict[str, float],
) -> list[tuple[str, float, Outgoing]]:
    """The step's scheduled messages as ``(queue, due, outgoing)``, with deterministic ids
    (the instance, the version the step commits, the place in the step): one due later
    goes to the manager as a timeout (added to ``timeouts``), one due now to its queue."""
    now = time.time()
    sends = []
    for index, (queue, name, payload, due) in enumerate(effects.scheduled):
        digest = hashlib.sha256(f"{manager.name}\0{key}\0{version}\0{index}".encode())
        meta = Metadata(id=digest.hexdigest()[:32], name=name)
        to, body = queue, payload
        if due > now:
            to, meta.name, timeouts[meta.id] = manager.queue, TIMEOUT, due
            body = {"key": key, "queue": queue, "name": name, "payload": payload}
        sends.append((to, due, broker.prepare(to, body, meta, None, None).outgoing))
    return sends
