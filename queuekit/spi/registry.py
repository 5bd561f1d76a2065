"""Find a transport by URL scheme through the ``queuekit.transports`` entry-point group.

A third-party package adds a broker by declaring an entry point; nothing in queuekit
changes. :func:`register_transport` does the same at run time (tests, embedded use).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from importlib.metadata import entry_points

from .errors import MissingDependency, UnknownScheme
from .transport import Transport
from .urls import TransportURL

GROUP = "queuekit.transports"
TransportFactory = Callable[..., Transport]

#: Which ``queuekit[extra]`` installs the client library of a built-in scheme.
_EXTRAS = {
    "amqp": "amqp",
    "amqps": "amqp",
    "stomp": "stomp",
    "stomp+ssl": "stomp",
    "zmq": "zmq",
    "xmpp": "xmpp",
    "gearman": "gearman",
}
_registered: dict[str, TransportFactory] = {}


def register_transport(scheme: str, factory: TransportFactory) -> None:
    """Make ``scheme://`` URLs open ``factory(url, prefetch=...)``; overrides entry points."""
    _registered[scheme.lower()] = factory


def available_schemes() -> list[str]:
    return sorted(set(_registered) | {ep.name for ep in entry_points(group=GROUP)})


def transport_factory(scheme: str) -> TransportFactory:
    """The factory for ``scheme``, loading its entry point on first use."""
    scheme = scheme.lower()
    if scheme in _registered:
        return _registered[scheme]
    found = [ep for ep in entry_points(group=GROUP) if ep.name == scheme]
    if not found:
        known = available_schemes()
        close = difflib.get_close_matches(scheme, known, n=1)
        hint = f"; did you mean {close[0]}://?" if close else f"; known: {', '.join(known)}"
        raise UnknownScheme(f"no transport for {scheme}://{hint}")
    try:
        factory: TransportFactory = found[0].load()
    except ImportError as exc:
        missing = exc.name or str(exc)
        raise MissingDependency(scheme, _EXTRAS.get(scheme, scheme), f"{missing}") from None
    _registered[scheme] = factory
    return factory


def open_transport(url: str | TransportURL, *, prefetch: int = 16) -> Transport:
    """Parse ``url`` and open its transport (adapters redact the URL in their own errors)."""
    parsed = url if isinstance(url, TransportURL) else TransportURL.parse(url)
    return transport_factory(parsed.scheme)(parsed, prefetch=prefetch)
