"""The job store: what queuekit keeps beside the broker (:mod:`.base` states the contract).

Backends are found by URL scheme through the ``queuekit.jobstores`` entry-point group, as
transports are through ``queuekit.transports``, so nothing above this package names a
database library: :mod:`.sqlite` (an SQLite file, the default) and :mod:`.sql` (PostgreSQL or
MySQL/MariaDB through SQLAlchemy Core, extra ``queuekit[sql]``).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from ..spi.errors import ConfigurationError
from ..spi.urls import TransportURL
from .base import JobStore, MissingStoreDependency

GROUP = "queuekit.jobstores"

#: Which ``queuekit[extra]`` installs the database library of a built-in backend.
_EXTRAS = {"postgresql": "sql", "mysql": "sql", "mariadb": "sql"}


def open_jobstore(url: str | TransportURL) -> JobStore:
    """The job store at ``url``, by its scheme's database (``postgresql+psycopg`` ->
    ``postgresql``); ``MissingStoreDependency`` names the extra a backend needs."""
    parsed = url if isinstance(url, TransportURL) else TransportURL.parse(url)
    database = parsed.scheme.split("+", 1)[0]
    found = [ep for ep in entry_points(group=GROUP) if ep.name == database]
    if not found:
        known = ", ".join(sorted({ep.name for ep in entry_points(group=GROUP)}))
        raise ConfigurationError(
            f"job store {parsed.redacted()}: {database} is not supported (known: {known})"
        )
    try:
        backend: Callable[[TransportURL], JobStore] = found[0].load()
    except ImportError as exc:
        extra = _EXTRAS.get(database, database)
        raise MissingStoreDependency(parsed.scheme, extra, exc.name or str(exc)) from None
    return backend(parsed)


__all__ = ["JobStore", "open_jobstore"]
