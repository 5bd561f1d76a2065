"""``gearman://host:4730[,host2:4730][?durable=1&max_message_size=BYTES]``: queues as
Gearman background jobs.

How the contract maps onto Gearman (docs/gearman.md says more):

- a queue is a Gearman function per priority band (see :mod:`.frame`); a worker with a
  priority range registers only the functions of its bands;
- ``send`` is ``SUBMIT_JOB_BG`` (or its high/low variants, pipelined for a batch on a
  :class:`~.link.Link`) and returns on ``JOB_CREATED``: gearmand holds the job (with a
  persistent queue, it has written it); a dedup key becomes the job's ``unique``, which
  gearmand coalesces natively;
- ``receive`` grabs jobs as a worker (:mod:`.link`); there is no ack in Gearman, the job is
  done when the worker says so: ``ack`` is ``WORK_COMPLETE``, ``nack(requeue=False)`` is
  ``WORK_FAIL`` (gearmand drops a failed background job), ``nack(requeue=True)`` submits the
  same data again and then completes the original (the copy goes to the back of its level);
- a worker that dies holding jobs: gearmand gives them to another worker (redelivery), with
  nothing that marks them as redelivered;
- a foreground job (``SUBMIT_JOB``: a caller waits for its result) is delivered with a
  ``reply_to`` of this transport's own (``#caller-...``); what is sent there before the ack
  is the result ``WORK_COMPLETE`` carries back, so the core's replies serve Gearman callers
  with no method of their own; ``call`` submits one and waits.

Several hosts: a job is submitted to the first host that answers (the next ones are for
failover); a consumer grabs from every host, as Gearman workers always do.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from gearman.admin_client import GearmanAdminClient
from gearman.errors import GearmanError

from ...spi.capabilities import Capabilities
from ...spi.errors import (
    ConfigurationError,
    ConnectionLost,
    TransportError,
)
from ...spi.priorities import PriorityBands, PriorityRange
from ...spi.timeouts import publish_timeout, publish_unreachable
from ...spi.transport import Delivery, Headers, Outgoing, Transport
from ...spi.urls import TransportURL
from . import frame
from .link import (
    RECONNECT_BACKOFF,
    SUBMIT_BG,
    Assignment,
    Link,
    LinkDown,
    Refused,
    Woken,
    _Connection,
    max_packet,
)
from .rpc import Callers, CallFailed

__all__ = ["CallFailed", "GearmanTransport"]

log = logging.getLogger(__name__)
DEFAULT_PORT = 4730
#: Largest job body (``?max_message_size=BYTES``); a link drops a server sending more.
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
_PURGE_BATCH = 64
#: How ``Delivery.reply_to`` of a foreground job starts: queue names starting so are reserved.
_CALLER = "#caller-"


class _Admin(GearmanAdminClient):  # type: ignore[misc]
    """pygearman's admin client on the connection with a connect timeout."""

    connection_class = _Connection


@dataclass(slots=True)
class _Ticket:
    """``Delivery.handle``: the assignment plus what settling it needs."""

    assignment: Assignment
    consumer: _Consumer
    level: int
    #: The foreground job's reply address, while its caller waits; None for background jobs.
    caller: str | None
    #: What was sent to ``caller``: the result the ack completes the job with.
    result: bytes = b""
    settled: bool = False


@dataclass(slots=True)
class _Consumer:
    """The worker links (one per host) and prefetched jobs of one queue's bands."""

    queue: str
    links: list[Link]
    buffer: deque[Assignment] = field(default_factory=deque)
    unsettled: int = 0
    turn: int = 0


class GearmanTransport(Transport):
    """Gearman background jobs through pygearman. See the module docstring."""

    name = "gearman"

    def __init__(self, url: TransportURL, *, prefetch: int = 16) -> None:
        super().__init__(url, prefetch=max(1, prefetch))
        if not url.hosts:
            raise ConfigurationError(f"{url.redacted()} names no gearmand host")
        self._hosts = [(h.name, h.port or DEFAULT_PORT) for h in url.hosts]
        self._host_list = [f"{h}:{p}" for h, p in self._hosts]
        self._io_timeout = url.number("timeout", 30.0)
        self._publish_timeout = publish_timeout(url)
        self._bands = PriorityBands.from_url(url)
        size = url.integer("max_message_size", DEFAULT_MAX_MESSAGE_SIZE)
        self._max_packet = max_packet(size)
        self.capabilities = _capabilities(url.flag("durable"), self._bands, size)
        self._wake_r, self._wake_w = socket.socketpair()
        self._send_lock = threading.Lock()
        self._publishers = [
            Link(h, p, [], self._wake_r, io_timeout=self._io_timeout, max_packet=self._max_packet)
            for h, p in self._hosts
        ]
        self._callers = Callers(self._host_list)
        self._consume_lock = threading.Lock()
        #: By queue and the starts of the bands consumed (``None``: all of them).
        self._consumers: dict[tuple[str, tuple[int, ...] | None], _Consumer] = {}
        #: ``unique`` of every job received here and not yet settled (see ``send_many``).
        self._held: dict[bytes, int] = {}
        #: Foreground jobs received here and not yet settled, by their reply address.
        self._waiting: dict[str, _Ticket] = {}

    # -- publishing -------------------------------------------------------------------

    def send_many(self, queue: str, messages: Sequence[Outgoing]) -> None:
        """All jobs go out pipelined; returns when gearmand created every one. Sent to a
        foreground job's ``reply_to``, the (last) body is its result, for the ack to carry."""
        self.check_open()
        if not messages:
            return
        if queue.startswith(_CALLER):
            self._hold_result(queue, messages[-1].body)
            return
        jobs = []
        for message in messages:
            self.check_outgoing(message.body, message.options)
            placed = frame.place(queue, message.options.priority, self._bands)
            key = message.options.dedup_key
            unique = frame.unique_for(key) if key is not None else None
            if unique is None or unique in self._held:
                # Without a key the unique must still be unique: gearmand's libsqlite3
                # queue stores jobs under (unique, function), and keeps one per empty key.
                # With a key this transport holds a job of, this send is that job's retry
                # (the core resends, then acks): sharing the unique would fold the copy
                # into the job the ack is about to complete, and lose it.
                unique = _fresh_unique()
            data = frame.encode(message.body, dict(message.headers), placed.level)
            jobs.append((SUBMIT_BG[placed.native], placed.function, unique, data))
        self._submit(jobs)

    def _submit(self, jobs: list[tuple[int, bytes, bytes, bytes]]) -> None:
        """Submit on the first host that answers and wait for every ``JOB_CREATED``.

        A connection found dead (gearmand restarted, or a host failed) is retried on a fresh
        connection, the first host first: jobs whose ``JOB_CREATED`` was lost may then be
        created twice (at-least-once, never zero times)."""
        deadline = time.monotonic() + self._publish_timeout
        with self._send_lock:
            while True:
                self.check_open()
                last = "no gearmand answers"
                for _ in range(len(self._publishers) + 1):
                    link = self._publisher()
                    if link is None:
                        break
                    try:
                        link.submit(jobs)
                        return
                    except LinkDown as exc:
                        last = str(exc)
                    except Refused as exc:
                        raise TransportError(f"gearmand refused a job: {exc}") from None
                    except Woken:
                        raise self.closed_error() from None
                # a host that refused is tried again after RECONNECT_BACKOFF: wait for that
                left = deadline - time.monotonic()
                if left <= 0:
                    detail = f"gearman {self._where()}: {last}"
                    raise publish_unreachable(self.url.redacted(), self._publish_timeout, detail)
                time.sleep(min(left, RECONNECT_BACKOFF))

    def _publisher(self) -> Link | None:
        """The connected link of the first host that answers (hosts in listed order)."""
        for link in self._publishers:
            if link.connected:
                return link
            try:
                link.connect()
                return link
            except LinkDown:
                continue
        return None

    # -- consuming --------------------------------------------------------------------

    def receive(self, queue: str, timeout: float) -> Delivery | None:
        """A job of any of ``queue``'s bands, highest band first."""
        return self._receive(queue, None, timeout)

    def receive_priorities(
        self, queue: str, timeout: float, priorities: PriorityRange
    ) -> Delivery | None:
        """A job of the bands ``priorities`` covers: this worker registers only their
        functions. A range that cuts a band is :class:`Unsupported`."""
        starts = self._bands.starts_within(priorities, self.name)
        return self._receive(queue, tuple(sorted(starts)), timeout)

    def _receive(
        self, queue: str, starts: tuple[int, ...] | None, timeout: float
    ) -> Delivery | None:
        with self._consume_lock:
            self.check_open()
            consumer = self._consumer(queue, starts)
            deadline = time.monotonic() + max(0.0, timeout)
            try:
                while True:
                    if consumer.buffer:
                        job = consumer.buffer.popleft()
                        if job.link.generation == job.generation and job.link.alive():
                            return self._deliver(consumer, job)
                        continue  # its connection is gone: gearmand hands it out again
                    if self._grab(consumer, max(1, self.prefetch - consumer.unsettled)):
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._idle(consumer, remaining):
                        return None
            except Woken:
                return None

    def _consumer(self, queue: str, starts: tuple[int, ...] | None) -> _Consumer:
        consumer = self._consumers.get((queue, starts))
        if consumer is None:
            functions = frame.functions(queue, self._bands, None if starts is None else [*starts])
            links = [
                Link(
                    h,
                    p,
                    functions,
                    self._wake_r,
                    io_timeout=self._io_timeout,
                    max_packet=self._max_packet,
                )
                for h, p in self._hosts
            ]
            consumer = self._consumers[queue, starts] = _Consumer(queue, links)
        return consumer

    def _consumers_of(self, queue: str) -> list[_Consumer]:
        return [c for (name, _), c in list(self._consumers.items()) if name == queue]

    def _grab(self, consumer: _Consumer, want: int) -> bool:
        """Grab up to ``want`` jobs from the first host that has some; False if none has."""
        links = consumer.links
        reachable = 0
        for i in range(len(links)):
            link = links[(consumer.turn + i) % len(links)]
            try:
                if not link.connected:
                    link.connect()
                jobs = link.grab(want)
            except LinkDown as exc:
                log.debug("gearman link %s:%s down: %s", link.host, link.port, exc)
                continue
            reachable += 1
            if jobs:
                consumer.buffer.extend(jobs)
                consumer.turn = (consumer.turn + i + 1) % len(links)
                return True
        if not reachable:
            raise ConnectionLost(f"gearman {self._where()}: no gearmand answers")
        return False

    def _idle(self, consumer: _Consumer, remaining: float) -> bool:
        """Sleep on every link until one is woken (True) or ``remaining`` passes (False)."""
        live = []
        for link in consumer.links:
            try:
                if link.connected:
                    link.sleep()
                    live.append(link)
            except LinkDown:
                continue
        if not live:
            raise ConnectionLost(f"gearman {self._where()}: no gearmand answers")
        ready, _, _ = select.select(
            [self._wake_r.fileno(), *(k.fileno() for k in live)], [], [], remaining
        )
        if self._wake_r.fileno() in ready:
            raise Woken
        for link in live:
            if link.fileno() in ready:
                # A NOOP (a job arrived) or a closed socket: either way, grab again now;
                # the grab reconnects a lost link or reports the loss.
                with contextlib.suppress(LinkDown):
                    link.take_noop()
        return bool(ready)

    def _deliver(self, consumer: _Consumer, job: Assignment) -> Delivery:
        decoded = frame.decode(job.data)
        consumer.unsettled += 1
        self._held[job.unique] = self._held.get(job.unique, 0) + 1
        caller = f"{_CALLER}{uuid.uuid4().hex}" if decoded.foreground else None
        ticket = _Ticket(job, consumer, decoded.level, caller)
        if caller is not None:
            self._waiting[caller] = ticket
        return Delivery(
            queue=consumer.queue,
            body=decoded.body,
            headers=decoded.headers,
            handle=ticket,
            reply_to=caller,
        )

    def _hold_result(self, caller: str, result: bytes) -> None:
        ticket = self._waiting.get(caller)
        if ticket is None:  # settled already: the caller has its answer, or gave up
            log.info("gearman: dropped a reply to %s, whose job is settled", caller)
            return
        ticket.result = result

    # -- settling ---------------------------------------------------------------------

    def ack(self, delivery: Delivery) -> None:
        """``WORK_COMPLETE``; a foreground job's caller gets what was sent to its
        ``reply_to`` (nothing sent: an empty result)."""
        self._settle(delivery, "complete")

    def nack(self, delivery: Delivery, *, requeue: bool) -> None:
        ticket = self._ticket(delivery)
        if ticket.settled:
            return
        job = ticket.assignment
        if requeue and not (job.link.generation == job.generation and job.link.alive()):
            self._settle(delivery, "complete")  # its connection is gone: gearmand has it back
        elif requeue and ticket.caller is None:
            # gearmand drops a failed background job, so a requeue is a new submission of
            # the same data (a fresh unique: the original still holds its own), then done.
            # it keeps its band (the function) and its native priority in it
            native = SUBMIT_BG[frame.NATIVE[ticket.level]]
            self._submit([(native, job.function, _fresh_unique(), job.data)])
            self._settle(delivery, "complete")
        else:
            # A foreground job cannot be resubmitted for its caller: it fails, and the
            # caller sees CallFailed (and may call again).
            self._settle(delivery, "fail")

    def _ticket(self, delivery: Delivery) -> _Ticket:
        ticket = delivery.handle
        if not isinstance(ticket, _Ticket):
            raise ValueError("not a delivery of a gearman transport")
        return ticket

    def _settle(self, delivery: Delivery, how: str) -> None:
        ticket = self._ticket(delivery)
        with self._consume_lock:
            if ticket.settled:
                return
            self.check_open()
            ticket.settled = True
            if ticket.caller is not None:
                del self._waiting[ticket.caller]
            ticket.consumer.unsettled -= 1
            job = ticket.assignment
            left = self._held.pop(job.unique, 1) - 1
            if left:
                self._held[job.unique] = left
            link = job.link
            if link.generation != job.generation or not link.connected:
                log.warning(
                    "gearman: the connection that received job %r was lost; gearmand "
                    "gives it to a worker again",
                    job.handle,
                )
                return
            try:
                if how == "complete":
                    link.complete(job.handle, ticket.result)
                else:
                    link.fail(job.handle)
            except LinkDown as exc:
                log.warning("gearman: settling job %r failed (%s); it runs again", job.handle, exc)
            except Woken:
                raise self.closed_error() from None

    # -- foreground RPC ----------------------------------------------------------------

    def call(
        self,
        queue: str,
        body: bytes,
        *,
        headers: Headers | None = None,
        priority: int | None = None,
        timeout: float = 30.0,
    ) -> bytes:
        """Submit a foreground job and wait for its result: what the worker sent to the
        delivery's ``reply_to`` before its ``ack`` (a queuekit worker sends its reply
        envelope there; empty when nothing was sent). Raises :class:`CallFailed` when the
        worker fails it (``nack``) or nothing comes back within ``timeout`` seconds."""
        self.check_open()
        placed = frame.place(queue, priority, self._bands)
        data = frame.encode(body, dict(headers or {}), placed.level, foreground=True)
        return self._callers.call(queue, placed.function, data, placed.native, timeout)

    # -- inspection --------------------------------------------------------------------

    def depth(self, queue: str) -> int:
        """Ready jobs (``Transport.depth``): gearmand's queued minus running of every band,
        over every reachable host. A job a worker grabbed (prefetched, this transport's own
        buffer included) is running to gearmand: in flight, not counted."""
        self.check_open()
        names = {f.decode() for f in frame.functions(queue, self._bands)}
        total, reachable = 0, 0
        for host in self._host_list:
            try:
                admin = _Admin([host], poll_timeout=self._io_timeout)
                try:
                    rows = admin.get_status()
                finally:
                    admin.shutdown()
            except GearmanError:
                continue
            reachable += 1
            total += sum(int(r["queued"]) - int(r["running"]) for r in rows if r["task"] in names)
        if not reachable:
            raise ConnectionLost(f"gearman {self._where()}: no gearmand answers")
        return total

    def purge(self, queue: str) -> int:
        """Complete every waiting job of ``queue`` unprocessed (jobs other workers are
        running stay theirs); returns how many were dropped."""
        with self._consume_lock:
            self.check_open()
            dropped = 0
            for consumer in self._consumers_of(queue):
                while consumer.buffer:
                    job = consumer.buffer.popleft()
                    if job.link.connected and job.link.generation == job.generation:
                        with contextlib.suppress(LinkDown):
                            job.link.complete(job.handle)
                            dropped += 1
            functions = frame.functions(queue, self._bands)
            reachable = 0
            for host, port in self._hosts:
                link = Link(
                    host,
                    port,
                    functions,
                    self._wake_r,
                    io_timeout=self._io_timeout,
                    max_packet=self._max_packet,
                )
                try:
                    link.connect()
                    while jobs := link.grab(_PURGE_BATCH):
                        for job in jobs:
                            link.complete(job.handle)
                        dropped += len(jobs)
                    reachable += 1
                except LinkDown:
                    continue
                except Woken:
                    raise self.closed_error() from None
                finally:
                    link.drop()
            if not reachable:
                raise ConnectionLost(f"gearman {self._where()}: no gearmand answers")
            return dropped

    def delete(self, queue: str) -> None:
        """Purge ``queue``, close this transport's worker links for it, and drop its
        functions from gearmand (``drop function``). gearmand refuses to drop a function
        other workers are connected for; it then stays listed, empty."""
        self.purge(queue)
        with self._consume_lock:
            for key in [key for key in self._consumers if key[0] == queue]:
                for link in self._consumers.pop(key).links:
                    link.drop()
        for host, port in self._hosts:
            for function in frame.functions(queue, self._bands):
                with contextlib.suppress(OSError):
                    _admin_command(host, port, b"drop function " + function, self._io_timeout)

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Idempotent. Held jobs go back to gearmand as the worker connections close."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        locked = self._consume_lock.acquire(timeout=self._io_timeout)
        try:
            for consumer in self._consumers.values():
                for link in consumer.links:
                    link.drop()
                consumer.buffer.clear()
            self._waiting.clear()  # gearmand hands their jobs, callers waiting, to another worker
        finally:
            if locked:
                self._consume_lock.release()
        with self._send_lock:
            for link in self._publishers:
                link.drop()
        self._callers.close()
        if locked:
            self._wake_r.close()
            self._wake_w.close()

    def _where(self) -> str:
        return ",".join(self._host_list)


def _admin_command(host: str, port: int, command: bytes, timeout: float) -> bytes:
    """One line of gearmand's text admin protocol (pygearman's admin client knows only
    the read-only commands) and its one-line answer (``OK`` or ``ERR ...``)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(command + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.strip()


def _fresh_unique() -> bytes:
    return uuid.uuid4().hex.encode()


def _capabilities(durable: bool, bands: PriorityBands, max_message_size: int) -> Capabilities:
    reasons = {
        "fanout": "Gearman has no fan-out: each job goes to one worker",
        "topics": "Gearman has no fan-out: each job goes to one worker",
        "delay": (
            "gearmand 1.1.20 accepts SUBMIT_JOB_EPOCH but never runs the job when due "
            "(gearmand issue 101): the core's delayed store serves delays"
        ),
    }
    if not durable:
        reasons["durable"] = (
            "gearmand keeps jobs in memory unless started with a persistent --queue-type; "
            "say ?durable=1 in the URL when it is"
        )
    return Capabilities(
        durable=durable,
        redelivery=True,
        marks_redelivery=False,  # gearmand hands a dead worker's job on unmarked
        nack_requeue=True,
        fifo=True,
        competing_consumers=True,
        priority=True,
        priority_range=True,
        priority_bands=bands.starts,
        dedup=True,
        inspect=True,
        max_message_size=max_message_size,
        reasons=reasons,
    )
