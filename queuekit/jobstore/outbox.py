"""The outbox table: messages written in the application's own transaction, sent after commit.

Two tables in the APPLICATION's database (not necessarily the job store's):

- ``queuekit_outbox``: one row per message published inside ``with outbox(...)``: its queue,
  message id, due time, priority, headers and encoded body; ``id`` grows, so rows read in
  id order are in publish order;
- ``queuekit_outbox_leases``: one row per queue a relay is sending, naming the relay and
  when its lease ends. While it holds, no other relay sends that queue's rows, so a queue's
  messages go out one relay at a time, in order.

Two sides, each from a backend found through the ``queuekit.outboxes`` entry-point group
(nothing here names a database library):

- an :class:`OutboxWriter` bound to the caller's transaction (an SQLAlchemy ``Session`` or
  ``Connection``, or an ``sqlite3`` connection): :func:`outbox_writer`. It only inserts, in
  that transaction: a rollback leaves no row;
- an :class:`OutboxTable` opened by URL for a relay (``sqlite:///app.db``, any SQLAlchemy
  URL): :func:`open_outbox`. It sees committed rows only.
"""

from __future__ import annotations

import json
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from ..spi.errors import ConfigurationError
from ..spi.transport import Outgoing
from ..spi.urls import TransportURL

GROUP = "queuekit.outboxes"
TABLE, LEASES = "queuekit_outbox", "queuekit_outbox_leases"
_backends: dict[str, Any] = {}


@dataclass(frozen=True)
class OutboxRow:
    """One committed message waiting to be relayed."""

    id: int
    queue: str
    message_id: str
    due: float | None
    priority: int | None
    headers: dict[str, str]
    body: bytes


class OutboxWriter(ABC):
    """Inserts published messages into the outbox within one caller's transaction."""

    @abstractmethod
    def add(self, queue: str, message_id: str, outgoing: Outgoing, due: float | None) -> None:
        """Insert one message, in the caller's transaction (never committing it)."""


class OutboxTable(ABC):
    """A relay's view of the outbox: committed rows, per-queue leases. Each method is one
    transaction of its own; thread-safe; the tables are created on first use."""

    @abstractmethod
    def queues(self, only: str | None = None) -> list[str]:
        """The queues with rows waiting (``only``: that one, if it has any); one cheap read."""

    @abstractmethod
    def lease(self, queue: str, holder: str, seconds: float) -> bool:
        """Take or renew ``queue``'s lease for ``holder`` until ``seconds`` from now; False
        while another holder's lease lasts. Of racing callers at most one gets it."""

    @abstractmethod
    def release(self, queue: str, holder: str) -> None:
        """End ``holder``'s lease on ``queue`` (nothing if it no longer holds it)."""

    @abstractmethod
    def pending(self, queue: str, limit: int) -> list[OutboxRow]:
        """Up to ``limit`` of ``queue``'s rows, oldest (lowest id) first."""

    @abstractmethod
    def remove(self, ids: Sequence[int]) -> None:
        """Delete relayed rows (ids already gone are ignored)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections (idempotent)."""


def row_of(values: Sequence[Any]) -> OutboxRow:
    """A row from ``id, queue, message_id, due, priority, headers (JSON), body``."""
    ident, queue, message_id, due, priority, headers, body = values
    return OutboxRow(int(ident), str(queue), str(message_id), due, priority,
                     json.loads(headers) if headers else {}, bytes(body))  # fmt: skip


def _backend(name: str, what: str) -> Any:
    """The backend module ``name``, looked up once: reading the entry points took 13 ms
    a call here (bench/bench_outbox.py), a hundred times the insert of an ``outbox()``."""
    if name in _backends:
        return _backends[name]
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        raise ConfigurationError(f"no outbox backend {name!r} is installed (for {what})")
    try:
        _backends[name] = found[0].load()
    except ImportError as exc:
        raise ConfigurationError(
            f"the outbox on {what} needs an optional dependency ({exc.name or exc}): "
            "install queuekit[sql]"
        ) from None
    return _backends[name]


def outbox_writer(transaction: object) -> OutboxWriter:
    """The writer for ``transaction``: an ``sqlite3.Connection``, or an SQLAlchemy
    ``Session`` or ``Connection`` (on any database SQLAlchemy serves)."""
    if isinstance(transaction, sqlite3.Connection):
        writer: OutboxWriter = _backend("sqlite", "an sqlite3 connection").writer(transaction)
        return writer
    if type(transaction).__module__.split(".")[0] == "sqlalchemy":
        writer = _backend("sqlalchemy", "an SQLAlchemy session").writer(transaction)
        return writer
    raise TypeError(
        "outbox() takes an SQLAlchemy Session or Connection, or an sqlite3 connection, "
        f"not {type(transaction).__name__}"
    )


def open_outbox(url: str | TransportURL) -> OutboxTable:
    """The outbox in the database at ``url`` (``sqlite:///app.db``, or an SQLAlchemy URL
    such as ``postgresql+psycopg://...``), for a relay."""
    parsed = url if isinstance(url, TransportURL) else TransportURL.parse(url)
    name = "sqlite" if parsed.scheme.split("+", 1)[0] == "sqlite" else "sqlalchemy"
    table: OutboxTable = _backend(name, parsed.redacted()).table(parsed)
    return table
