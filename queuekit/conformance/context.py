"""What every case gets: settings, fresh names, tracked transports and cleanup.

A case opens transports with :meth:`Context.open` and names queues with
:meth:`Context.queue` / topics with :meth:`Context.topic_root`; :meth:`Context.cleanup`
then unsubscribes, deletes and closes everything the case created, so the suite is safe to
point at a shared broker. Names carry a uuid, so parallel runs never meet.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

from ..spi.capabilities import Capabilities
from ..spi.errors import QueuekitError, TransportClosed
from ..spi.registry import open_transport
from ..spi.transport import Delivery, Transport
from ..spi.urls import TransportURL


class CaseFailure(AssertionError):
    """A case found the adapter breaking its declared contract; the message says how."""


class NotApplicable(Exception):
    """A case cannot run here (e.g. no ``--restart-command``); reported, not failed."""


def check(condition: object, message: str) -> None:
    """Fail the case with ``message`` unless ``condition`` holds."""
    if not condition:
        raise CaseFailure(message)


@dataclass(frozen=True)
class Settings:
    """Counts and time limits. Waits are upper bounds: a healthy adapter returns far sooner.

    ``receive_timeout`` is how long a message that must arrive may take; ``quiet`` how long
    the suite listens to be sure nothing (more) arrives; ``redelivery_timeout`` how long a
    dead consumer's message may take to come back (lease or heartbeat expiry).
    """

    short: bool = False
    messages: int = 1000
    examples: int = 25
    model_examples: int = 12
    model_steps: int = 25
    receive_timeout: float = 10.0
    quiet: float = 1.0
    redelivery_timeout: float = 60.0
    delay: float = 2.0
    delay_tolerance: float = 2.0
    stop_timeout: float = 30.0
    restart_command: str | None = None
    #: "module:attr" of the transport factory, for child processes when the scheme was
    #: registered at run time (``register_transport``) rather than by entry point.
    factory: str | None = None

    def shortened(self) -> Settings:
        return replace(
            self,
            short=True,
            messages=200,
            examples=8,
            model_examples=4,
            model_steps=15,
            quiet=0.5,
            delay=1.0,
        )


class Context:
    """One case's view of the adapter under test; not shared between threads of a case."""

    def __init__(self, url: str | TransportURL, settings: Settings | None = None) -> None:
        self.url = url if isinstance(url, TransportURL) else TransportURL.parse(url)
        self.settings = settings or Settings()
        self.run_id = uuid.uuid4().hex[:12]
        self._transports: list[Transport] = []
        self._queues: list[str] = []
        self._subscriptions: list[tuple[Transport, str]] = []
        self.warnings: list[str] = []
        self.probe = self.open()

    # -- the adapter -------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return self.probe.capabilities

    @property
    def process_local(self) -> bool:
        return bool(type(self.probe).process_local)

    def declares(self, flag: str) -> bool:
        return bool(getattr(self.probe.capabilities, flag))

    def open(self, *, prefetch: int = 16) -> Transport:
        """A new connection to the broker under test, closed by :meth:`cleanup`."""
        transport = open_transport(self.url, prefetch=prefetch)
        self._transports.append(transport)
        return transport

    def close_all(self) -> None:
        """Close every connection this case opened (they stay closed; open new ones)."""
        for transport in self._transports:
            self._quietly(transport.close, "close")

    # -- fresh names -------------------------------------------------------------------

    def queue(self, label: str) -> str:
        """A queue name no other run uses; deleted by :meth:`cleanup`."""
        name = f"qkconf-{label}-{self.run_id}-{uuid.uuid4().hex[:8]}"
        self._queues.append(name)
        return name

    def topic_root(self) -> str:
        """A first topic word no other run uses (letters and digits only)."""
        return f"qkconf{self.run_id}{uuid.uuid4().hex[:8]}"

    def subscribe(self, transport: Transport, pattern: str) -> str:
        subscription = transport.subscribe(pattern)
        self._subscriptions.append((transport, subscription))
        return subscription

    # -- cleanup -----------------------------------------------------------------------

    def cleanup(self) -> None:
        """Unsubscribe, delete and close what this case created; problems become warnings."""
        cleaner: Transport | None = None
        for transport, subscription in self._subscriptions:
            self._quietly(partial(transport.unsubscribe, subscription), "unsubscribe")
        try:
            cleaner = open_transport(self.url)
        except QueuekitError as exc:
            self.warnings.append(f"cleanup could not connect: {exc}")
        if cleaner is not None:
            for _, subscription in self._subscriptions:
                self._quietly(partial(cleaner.unsubscribe, subscription), "unsubscribe")
            for name in self._queues:
                self._quietly(partial(cleaner.delete, name), f"delete {name}")
            self._transports.append(cleaner)
        for transport in self._transports:
            self._quietly(transport.close, "close")
        self._transports.clear()
        self._subscriptions.clear()
        self._queues.clear()

    def _quietly(self, action: Callable[[], object], what: str) -> None:
        try:
            action()
        except TransportClosed:
            pass
        except QueuekitError as exc:
            self.warnings.append(f"cleanup: {what} failed: {exc}")


# -- receiving helpers shared by the cases --------------------------------------------------


def expect(transport: Transport, queue: str, timeout: float, what: str) -> Delivery:
    """The next delivery of ``queue``; fail naming ``what`` if none comes in ``timeout``."""
    delivery = transport.receive(queue, timeout)
    check(delivery is not None, f"{what}: nothing received within {timeout:g}s")
    assert delivery is not None
    return delivery


def expect_nothing(transport: Transport, queue: str, timeout: float, what: str) -> None:
    """Listen for ``timeout`` seconds; fail naming ``what`` if anything arrives."""
    delivery = transport.receive(queue, timeout)
    if delivery is not None:
        transport.ack(delivery)
        raise CaseFailure(f"{what}: received {_show(delivery.body)}")


def drain(
    transport: Transport, queue: str, count: int, timeout: float, *, ack: bool = True
) -> list[Delivery]:
    """Receive up to ``count`` deliveries, stopping after ``timeout`` s without progress."""
    got: list[Delivery] = []
    while len(got) < count:
        delivery = transport.receive(queue, timeout)
        if delivery is None:
            break
        got.append(delivery)
        if ack:
            transport.ack(delivery)
    return got


def ids_report(expected: list[str], seen: list[str]) -> str:
    """'' when every expected id was seen exactly once, else which were missing/doubled."""
    counts: dict[str, int] = {}
    for ident in seen:
        counts[ident] = counts.get(ident, 0) + 1
    wanted = set(expected)
    missing = [i for i in expected if i not in counts]
    doubled = sorted(i for i, n in counts.items() if n > 1)
    unknown = sorted(i for i in counts if i not in wanted)
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:5])})")
    if doubled:
        parts.append(f"{len(doubled)} delivered more than once (e.g. {', '.join(doubled[:5])})")
    if unknown:
        parts.append(f"{len(unknown)} never published (e.g. {', '.join(unknown[:5])})")
    return "; ".join(parts)


def _show(body: bytes, limit: int = 60) -> str:
    text = repr(body[:limit])
    return text + (f"... ({len(body)} bytes)" if len(body) > limit else "")
