"""The publish timeout: how long a publish waits for a broker it cannot reach.

One rule for every server adapter: the URL option ``?publish_timeout=S`` (default
:data:`DEFAULT_PUBLISH_TIMEOUT`, a few seconds, so a web request that publishes fails fast
instead of hanging for a minute while the broker is down). A publish (``send``,
``send_many``, ``broadcast``) that has no working connection keeps reconnecting for at most
that long, then raises :class:`ConnectionLost` naming the broker (redacted) and the
timeout (:func:`publish_unreachable`). An adapter that cannot reconnect within a publish
raises at once. Waiting for the broker's confirms on a working connection is bounded by
each adapter's own confirm or receipt timeout, not by this one: a large batch may take
longer than a few seconds to be confirmed.
"""

from __future__ import annotations

from .errors import ConnectionLost
from .urls import TransportURL

PUBLISH_TIMEOUT_OPTION = "publish_timeout"
DEFAULT_PUBLISH_TIMEOUT = 5.0


def publish_timeout(url: TransportURL) -> float:
    """``?publish_timeout=`` of ``url`` in seconds (``ConfigurationError`` if not positive)."""
    return url.number(PUBLISH_TIMEOUT_OPTION, DEFAULT_PUBLISH_TIMEOUT)


def publish_unreachable(where: str, timeout: float, detail: object) -> ConnectionLost:
    """The error of a publish that found no broker at ``where`` (a redacted URL) within
    ``timeout`` s."""
    return ConnectionLost(
        f"{where}: publish gave up, no broker reachable within the publish timeout "
        f"of {timeout:g} s (?{PUBLISH_TIMEOUT_OPTION}=): {detail}"
    )
