"""``ProcessManager``: a workflow that lives across many messages, one instance per key.

::

    @dataclass
    class OrderSentToProduction:
        order_id: str

    class OrderTracking(ProcessManager):
        queue = "order-tracking"
        started_by = {OrderSentToProduction: lambda e: e.order_id}
        handles = {OrderLineShipped: lambda e: e.order_id, OrderStateChecked: ...}

        def on_order_sent_to_production(self, event, state):
            state["lines"] = {}
            self.schedule(UpdateOrderState(event.order_id), delay="30 minutes",
                          queue="order-states")

        def on_order_line_shipped(self, event, state):
            self.complete()

    OrderTracking(conn).publish(OrderSentToProduction("o-1"))  # or through a bridge
    worker run myapp.OrderTracking -c 8                        # the manager's worker

Events are dataclasses (sent as their fields, named by their class) or, from the event
bridge, named payloads (``handles = {"order.line.printed": lambda p: p["order_id"]}``).
Each event kind has a handler ``on_<kind in snake case>(event, state)``: it changes
``state`` (a JSON object) in place or returns the new one, and acts only through
``schedule`` and ``complete``, which take effect only when its step commits; a step may run
more than once (another step of the instance committed first), so a handler must not
call out to anything else. How steps stay exactly-once: :mod:`queuekit.features.processes`.
"""

from __future__ import annotations

import contextvars
import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from ..features import processes
from ..features.delays import Delay
from ..features.envelope import Message
from ..spi.errors import ConfigurationError, PermanentError
from .abstract import AbstractQueue

#: The effects of the step running in this thread or task.
_effects: contextvars.ContextVar[processes.Effects] = contextvars.ContextVar("process_effects")


class ProcessManager(AbstractQueue):
    """Subclass it: ``started_by`` and ``handles`` map event kinds to the function that
    finds an event's correlation key; ``on_<kind>`` methods handle them. A ``started_by``
    event for a key whose instance exists is dropped, unless it is in ``handles`` too.
    ``no_instance`` says what happens to a ``handles`` event whose key has no instance (``"drop"``,
    ``"log"``: a warning, ``"fail"``: to the failed store). ``process_name`` names the
    manager in the job store (default: the class name). ``initial_state()`` is the state
    a new instance starts from."""

    started_by: ClassVar[Mapping[type | str, Callable[[Any], str]]] = {}
    handles: ClassVar[Mapping[type | str, Callable[[Any], str]]] = {}
    no_instance: ClassVar[str] = processes.LOG
    process_name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.no_instance not in processes.POLICIES:
            raise ConfigurationError(
                f"{cls.__qualname__}.no_instance must be one of "
                f"{', '.join(processes.POLICIES)}, not {cls.no_instance!r}"
            )
        for kind in (*cls.started_by, *cls.handles):
            if not callable(getattr(cls, handler_name(kind), None)):
                raise ConfigurationError(
                    f"{cls.__qualname__} handles {processes.event_name(kind)} but has no "
                    f"method {handler_name(kind)}(self, event, state)"
                )

    @classmethod
    def manager_name(cls) -> str:
        return cls.process_name or cls.__name__

    def initial_state(self) -> Any:
        """The state of a new instance, before the handler of its first event runs."""
        return {}

    def manager(self) -> processes.Manager:
        """This class as the engine sees it."""
        return processes.Manager(
            name=self.manager_name(),
            queue=self.queue_name(),
            starts=self.started_by,
            moves=self.handles,
            initial=self.initial_state,
            handle=self._handle,
            no_instance=self.no_instance,
        )

    def work(self, message: Message) -> object:
        return processes.step(self.connection.broker, self.manager(), message)

    def _handle(self, kind: type | str, event: Any, state: Any, effects: processes.Effects) -> Any:
        token = _effects.set(effects)
        try:
            returned = getattr(self, handler_name(kind))(event, state)
        finally:
            _effects.reset(token)
        return state if returned is None else returned

    # -- what a handler may do -----------------------------------------------------------

    def schedule(
        self, command: Any, *, delay: Delay | None = None, queue: str | None = None
    ) -> None:
        """Send ``command`` (a dataclass) when this step commits, after ``delay``, to
        ``queue`` (default: this manager's queue, which must handle it). Until it is due
        it waits as a timeout of the instance: dropped if the instance completes first."""
        name, payload = processes.event_message(command)
        if queue is None:
            if type(command) not in (*self.started_by, *self.handles):
                raise PermanentError(  # a bug in the handler: retrying will not help
                    f"{type(self).__qualname__} does not handle {name}: schedule it with "
                    "queue= (the queue whose worker handles it)"
                )
            queue = self.queue_name()
        _current().schedule(queue, name, payload, delay)

    def complete(self) -> None:
        """End the instance when this step commits: later events and timeouts are dropped."""
        _current().completed = True

    # -- publishing events ---------------------------------------------------------------

    def publish(self, payload: Any, **options: Any) -> str:
        """Publish an event to this manager's queue: a dataclass (named by its class), or a
        payload with ``name=`` (what the event bridge does)."""
        if dataclasses.is_dataclass(payload) and not isinstance(payload, type):
            name, payload = processes.event_message(payload)
            options.setdefault("name", name)
        return super().publish(payload, **options)


def handler_name(kind: type | str) -> str:
    """``OrderLineShipped`` -> ``on_order_line_shipped``; ``"order.line.shipped"`` too."""
    if isinstance(kind, str):
        return "on_" + re.sub(r"\W+", "_", kind).strip("_").lower()
    return "on_" + re.sub(r"(?<!^)(?=[A-Z])", "_", kind.__name__).lower()


def _current() -> processes.Effects:
    try:
        return _effects.get()
    except LookupError:
        raise RuntimeError(
            "schedule() and complete() are for a process manager's handlers"
        ) from None
