"""``sqlite:///path.db``: the durable, embedded default; no server needed.

Design
------
One table holds every message with a ``state``: 0 delayed (``not_before`` in the future),
1 ready, 2 in flight under a lease. ``not_before`` is the time a message became due (its
publish time when not delayed), so ready messages are received by priority, then in due
order. Claiming is a single ``UPDATE ... RETURNING`` over the index
``(queue, state, priority DESC, not_before, id)``, so its cost does not grow with the
backlog and two processes can never claim the same row (SQLite serialises writers).

Partial indexes (one per state) keep every write to the few index pages it concerns.

A claimed message stays in the table until ``ack`` deletes it: a worker killed with SIGKILL
loses nothing, because its lease expires and any transport's housekeeping puts the row back
to ready (huey's SQLite storage deletes on fetch and loses it). While the owning process is
alive a keeper thread renews its leases, so a long ``work()`` is never handed out twice.

One commit serves many messages: ``receive`` claims up to ``prefetch`` rows at once (held
in a local buffer, leased like the rest), and ``ack`` only notes the id; the deletes are
committed with the next claim, on ``close``, or by the keeper within a second. An ack is
therefore durable up to a second after ``ack`` returns (as a broker's ack is asynchronous):
a SIGKILL in that window runs those finished messages again, never loses one.

Durability default: WAL with ``synchronous=NORMAL``. In WAL mode NORMAL never corrupts the
file and keeps every committed message through any crash of the application (SIGKILL, OOM);
only an operating-system crash or power loss can roll back the last transactions. That is
the failure workers actually meet, at ~6x the throughput of ``FULL``; choose
``?synchronous=full`` to fsync every commit.

URL options: ``lease`` (seconds, default 30), ``synchronous`` (``normal``/``full``),
``poll`` (longest idle poll interval in seconds, default 0.05).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ..spi.capabilities import Capabilities
from ..spi.errors import ConfigurationError, ConnectionLost, TransportClosed, TransportError
from ..spi.priorities import PriorityRange
from ..spi.sqlitedb import connect_database, immediate
from ..spi.topics import topic_matches
from ..spi.transport import (
    NO_OPTIONS,
    Delivery,
    Headers,
    Outgoing,
    QueueStats,
    SendOptions,
    Transport,
)
from ..spi.urls import TransportURL

DELAYED, READY, IN_FLIGHT = 0, 1, 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queuekit_messages (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    state INTEGER NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    lease_until REAL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    dedup_key TEXT,
    headers TEXT,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS queuekit_messages_ready_ix
    ON queuekit_messages (queue, priority DESC, not_before, id) WHERE state = 1;
CREATE INDEX IF NOT EXISTS queuekit_messages_delayed_ix
    ON queuekit_messages (not_before) WHERE state = 0;
CREATE INDEX IF NOT EXISTS queuekit_messages_leased_ix
    ON queuekit_messages (lease_until) WHERE state = 2;
CREATE UNIQUE INDEX IF NOT EXISTS queuekit_messages_dedup
    ON queuekit_messages (queue, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS queuekit_subscriptions (
    subscription TEXT PRIMARY KEY,
    pattern TEXT NOT NULL
);
"""

_INSERT = (
    "INSERT OR IGNORE INTO queuekit_messages"
    " (queue, state, priority, not_before, dedup_key, headers, body) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_CLAIM = """
UPDATE queuekit_messages SET state = 2, lease_until = ?, deliveries = deliveries + 1
WHERE id IN (
    SELECT id FROM queuekit_messages WHERE queue = ? AND state = 1{range}
    ORDER BY priority DESC, not_before, id LIMIT ?
)
RETURNING id, priority, not_before, body, headers, deliveries, dedup_key IS NOT NULL
"""
_CLAIM_ANY = _CLAIM.format(range="")
_CLAIM_RANGE = _CLAIM.format(range=" AND priority BETWEEN ? AND ?")
_STATS = """
SELECT SUM(state = 1 OR (state = 0 AND not_before <= ?)), SUM(state = 0 AND not_before > ?),
       SUM(state = 2), MIN(CASE WHEN state = 1 OR (state = 0 AND not_before <= ?)
                                THEN not_before END)
FROM queuekit_messages WHERE queue = ?
"""
_HOUSEKEEPING_EVERY = 0.05  # seconds between checks for due delays and expired leases


def database_path(url: TransportURL) -> str:
    """The file a ``sqlite://`` URL names (``sqlite:///rel.db``, ``sqlite:////abs.db``)."""
    if url.hosts:
        raise ConfigurationError(f"{url}: use sqlite:///relative.db or sqlite:////absolute.db")
    if not url.path:  # no silent default file in the working directory
        raise ConfigurationError(f"{url} names no file: use sqlite:///relative.db or ...")
    return url.path


def decode_headers(text: str | bytes | None) -> dict[str, str]:
    """A row's headers column as string headers. The file is ours, but another process
    (or a damaged file) may have written anything: what is not a JSON object of strings
    reads as no headers, so the body still reaches the worker's failed store."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


class SQLiteTransport(Transport):
    """Durable queues in one SQLite file; see the module docstring."""

    name = "sqlite"
    capabilities = Capabilities(
        durable=True,
        redelivery=True,
        nack_requeue=True,
        fifo=True,
        competing_consumers=True,
        fanout=True,
        topics=True,
        delay=True,
        priority=True,
        priority_range=True,
        dedup=True,
        inspect=True,
    )

    def __init__(self, url: TransportURL, *, prefetch: int = 16) -> None:
        super().__init__(url, prefetch=prefetch)
        self.path = database_path(url)
        self.lease = url.number("lease", 30.0)
        self.max_poll = url.number("poll", 0.05)
        self._lock = threading.RLock()
        #: Set with ``closed``: wakes a polling receive and the lease keeper at once.
        self._stopping = threading.Event()
        self._held: set[int] = set()  # ids claimed and not settled (buffered or delivered)
        # claimed, not yet handed out; per queue and priority range (None: any priority)
        self._buffers: dict[tuple[str, PriorityRange | None], deque[Delivery]] = {}
        self._acked: list[int] = []  # settled ids whose delete is not committed yet
        self._keyed: set[int] = set()  # held ids with a dedup key: acked at once, freeing it
        self._next_housekeeping = 0.0
        self._keeper: threading.Thread | None = None
        try:
            synchronous = url.option("synchronous") or "normal"
            self._db = connect_database(self.path, synchronous=synchronous, schema=_SCHEMA)
        except sqlite3.Error as exc:
            raise ConnectionLost(f"cannot open {self.path}: {exc}") from exc

    # -- plumbing ------------------------------------------------------------------------

    @contextmanager
    def _session(self) -> Iterator[sqlite3.Connection]:
        """The connection under the lock, with SQLite errors mapped to queuekit's."""
        with self._lock:
            self.check_open()
            try:
                yield self._db
            except sqlite3.OperationalError as exc:
                # "database is locked" past the busy timeout, disk I/O errors: a retry may work.
                raise ConnectionLost(f"{self.path}: {exc}") from exc
            except sqlite3.Error as exc:
                raise TransportError(f"{self.path}: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._session() as db, immediate(db):
            yield db

    # -- publishing ----------------------------------------------------------------------

    def send_many(self, queue: str, messages: Sequence[Outgoing]) -> None:
        now = time.time()
        rows = [_row(queue, m.body, m.headers, m.options, now) for m in messages]
        with self._transaction() as db:
            self._commit_acks(db)
            db.executemany(_INSERT, rows)

    # -- consuming -----------------------------------------------------------------------

    def receive(self, queue: str, timeout: float) -> Delivery | None:
        return self._receive(queue, timeout, None)

    def receive_priorities(
        self, queue: str, timeout: float, priorities: PriorityRange
    ) -> Delivery | None:
        return self._receive(queue, timeout, priorities)

    def _receive(
        self, queue: str, timeout: float, priorities: PriorityRange | None
    ) -> Delivery | None:
        deadline = time.monotonic() + max(timeout, 0.0)
        pause = 0.001
        while True:
            with self._lock:
                buffered = self._buffers.get((queue, priorities))
                if buffered:
                    return buffered.popleft()
            self._housekeeping()
            claimed = self._claim(queue, priorities)
            if claimed:
                self._ensure_keeper()
                return claimed
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stopping.wait(min(pause, remaining)):
                return None
            pause = min(pause * 2, self.max_poll)

    def _claim(self, queue: str, priorities: PriorityRange | None) -> Delivery | None:
        """Commit pending acks and claim up to ``prefetch`` rows in one transaction."""
        lease_until = time.time() + self.lease
        with self._transaction() as db:
            self._commit_acks(db)
            if priorities is None:
                rows = db.execute(_CLAIM_ANY, (lease_until, queue, self.prefetch)).fetchall()
            else:
                low, high = priorities.lowest, priorities.highest
                args = (lease_until, queue, low, high, self.prefetch)
                rows = db.execute(_CLAIM_RANGE, args).fetchall()
            if not rows:
                return None
            rows.sort(key=lambda row: (-row[1], row[2], row[0]))  # RETURNING has no order
            deliveries = deque(
                Delivery(
                    queue=queue,
                    body=bytes(body),
                    headers=decode_headers(headers),
                    redelivered=count > 1,
                    delivery_count=count,
                    handle=ident,
                )
                for ident, _, _, body, headers, count, _ in rows
            )
            self._held.update(row[0] for row in rows)
            self._keyed.update(row[0] for row in rows if row[6])
            first = deliveries.popleft()
            if deliveries:
                self._buffers.setdefault((queue, priorities), deque()).extend(deliveries)
            return first

    def _commit_acks(self, db: sqlite3.Connection) -> None:
        if self._acked:
            db.executemany(
                "DELETE FROM queuekit_messages WHERE id = ?", [(i,) for i in self._acked]
            )
            self._acked.clear()

    def ack(self, delivery: Delivery) -> None:
        with self._lock:
            self.check_open()
            if delivery.handle not in self._held:
                return
            self._held.discard(delivery.handle)
            self._acked.append(delivery.handle)
            if delivery.handle in self._keyed:  # its dedup key must be free when ack returns
                self._keyed.discard(delivery.handle)
                with self._transaction() as db:
                    self._commit_acks(db)

    def requeue(
        self, delivery: Delivery, body: bytes, *, options: SendOptions = NO_OPTIONS
    ) -> None:
        """The next attempt in the same row: one UPDATE, and its dedup key stays taken."""
        self.require(options)
        now = time.time()
        due = options.not_before if options.not_before is not None else now
        with self._lock:
            self.check_open()
            if delivery.handle not in self._held:
                return
            with self._transaction() as db:
                self._commit_acks(db)
                db.execute(
                    "UPDATE queuekit_messages SET state = ?, not_before = ?, priority = ?,"
                    " lease_until = NULL, deliveries = 0, body = ? WHERE id = ?",
                    (DELAYED if due > now else READY, due, options.priority or 0, body,
                     delivery.handle),
                )  # fmt: skip
            self._held.discard(delivery.handle)
            self._keyed.discard(delivery.handle)

    def nack(self, delivery: Delivery, *, requeue: bool) -> None:
        if not requeue:
            self.ack(delivery)
            return
        with self._session() as db:
            if delivery.handle in self._held:
                db.execute(
                    "UPDATE queuekit_messages SET state = 1, lease_until = NULL WHERE id = ?",
                    (delivery.handle,),
                )
                self._held.discard(delivery.handle)
                self._keyed.discard(delivery.handle)

    def _housekeeping(self) -> None:
        """Make due delayed messages ready and take back expired leases (cheap reads first)."""
        now = time.time()
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + _HOUSEKEEPING_EVERY
        with self._session() as db:
            if db.execute(
                "SELECT 1 FROM queuekit_messages WHERE state = 0 AND not_before <= ? LIMIT 1",
                (now,),
            ).fetchone():
                db.execute(
                    "UPDATE queuekit_messages SET state = 1 WHERE state = 0 AND not_before <= ?",
                    (now,),
                )
            if db.execute(
                "SELECT 1 FROM queuekit_messages WHERE state = 2 AND lease_until < ? LIMIT 1",
                (now,),
            ).fetchone():
                db.execute(
                    "UPDATE queuekit_messages SET state = 1, lease_until = NULL"
                    " WHERE state = 2 AND lease_until < ?",
                    (now,),
                )

    def _ensure_keeper(self) -> None:
        if self._keeper is None:
            self._keeper = threading.Thread(
                target=self._keep_leases, name="queuekit-sqlite-leases", daemon=True
            )
            self._keeper.start()

    def _keep_leases(self) -> None:
        """Commit pending acks and renew this process's leases, so only a dead process's
        messages ever expire."""
        while not self._stopping.wait(min(self.lease / 3, 1.0)):
            try:
                with self._transaction() as db:
                    self._commit_acks(db)
                    if self._held:
                        marks = ",".join("?" * len(self._held))
                        db.execute(
                            "UPDATE queuekit_messages SET lease_until = ?"
                            f" WHERE state = 2 AND id IN ({marks})",
                            (time.time() + self.lease, *self._held),
                        )
            except TransportClosed:
                return
            except TransportError:
                continue  # a busy file: the next round renews with margin to spare

    # -- lifecycle and inspection --------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            try:
                with immediate(self._db) as db:
                    self._commit_acks(db)
                    unsent = {d.handle for buffer in self._buffers.values() for d in buffer}
                    self._give_back(db, list(unsent), undo_delivery=True)
                    self._give_back(db, list(self._held - unsent))
                self._held.clear()
                self._buffers.clear()
            finally:
                self.closed = True
                self._stopping.set()
                self._db.close()

    def _unbuffer(self, queue: str) -> list[int]:
        """Drop ``queue``'s buffers (every priority range); return the ids they held."""
        keys = [key for key in self._buffers if key[0] == queue]
        return [delivery.handle for key in keys for delivery in self._buffers.pop(key)]

    def release(self, queue: str) -> None:
        with self._lock:
            ids = self._unbuffer(queue)
            if not ids:
                return
            with self._transaction() as db:
                self._give_back(db, ids, undo_delivery=True)
            self._held.difference_update(ids)
            self._keyed.difference_update(ids)

    @staticmethod
    def _give_back(db: sqlite3.Connection, ids: list[int], *, undo_delivery: bool = False) -> None:
        """Make claimed rows ready again; buffered ones were never delivered, so uncount them."""
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        undo = ", deliveries = deliveries - 1" if undo_delivery else ""
        db.execute(
            f"UPDATE queuekit_messages SET state = 1, lease_until = NULL{undo}"
            f" WHERE state = 2 AND id IN ({marks})",
            ids,
        )

    def depth(self, queue: str) -> int:
        with self._session() as db:
            row = db.execute(  # ready: state 1, or delayed (0) and due already
                "SELECT COUNT(*) FROM queuekit_messages WHERE queue = ?"
                " AND (state = 1 OR (state = 0 AND not_before <= ?))",
                (queue, time.time()),
            ).fetchone()
        return int(row[0])

    def stats(self, queue: str) -> QueueStats:
        """Every count, from one read: a delayed row already due counts as ready (the next
        housekeeping makes it so), a leased row as in flight (prefetched ones too), and the
        latency is the age of the oldest ready row's ``not_before``."""
        now = time.time()
        with self._session() as db:
            ready, delayed, in_flight, oldest = db.execute(
                _STATS, (now, now, now, queue)
            ).fetchone()
        latency = 0.0 if oldest is None else max(0.0, now - oldest)
        return QueueStats(ready or 0, delayed or 0, in_flight or 0, latency)

    def purge(self, queue: str) -> int:
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM queuekit_messages WHERE queue = ? AND state IN (0, 1)", (queue,)
            )
        return cursor.rowcount

    def delete(self, queue: str) -> None:
        with self._transaction() as db:
            self._held.difference_update(self._unbuffer(queue))
            db.execute("DELETE FROM queuekit_messages WHERE queue = ?", (queue,))
            db.execute("DELETE FROM queuekit_subscriptions WHERE subscription = ?", (queue,))

    # -- publish/subscribe: durable subscriptions are queues fed by ``broadcast`` ----------

    def broadcast(self, topic: str, body: bytes, headers: Headers) -> None:
        now = time.time()
        with self._transaction() as db:
            targets = [
                subscription
                for subscription, pattern in db.execute(
                    "SELECT subscription, pattern FROM queuekit_subscriptions"
                )
                if topic_matches(pattern, topic)
            ]
            db.executemany(_INSERT, [_row(t, body, headers, NO_OPTIONS, now) for t in targets])

    def subscribe(self, pattern: str) -> str:
        subscription = f"subscription.{os.urandom(8).hex()}.{pattern}"
        with self._transaction() as db:
            db.execute(
                "INSERT INTO queuekit_subscriptions (subscription, pattern) VALUES (?, ?)",
                (subscription, pattern),
            )
        return subscription

    def unsubscribe(self, subscription: str) -> None:
        self.delete(subscription)


def _row(
    queue: str, body: bytes, headers: Headers, options: SendOptions, now: float
) -> tuple[object, ...]:
    due = options.not_before if options.not_before is not None else now
    return (
        queue,
        DELAYED if due > now else READY,
        options.priority or 0,
        due,
        options.dedup_key,
        json.dumps(dict(headers), separators=(",", ":")) if headers else None,
        body,
    )
