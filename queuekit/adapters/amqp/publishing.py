"""The publisher connection: one thread owns it and pipelines publisher confirms.

Callers on any thread hand their messages to the publisher's own I/O thread and wait. The
thread writes each caller's messages as ``basic.publish`` frames as soon as they arrive,
without waiting for the confirms of messages written before them, and wakes each caller
once the broker has confirmed all of its own (RabbitMQ acks with ``multiple``). So N
publishing threads keep the connection busy instead of queueing behind one another's round
trips, and py-amqp, which is not thread-safe, is only ever driven by one thread.

A failure is the caller's whose messages it concerns: messages returned as unroutable three
times, or nacked until its publish timeout (a nack means the broker does not have them, e.g.
a quorum queue between leaders: they are written again on a new channel), fail that caller
only. A lost connection, or confirms that stop
coming for ``confirm_timeout``, is hidden for up to ``publish_timeout`` (``reconnect_timeout``
for the admin calls): the thread reconnects and writes again everything not yet confirmed,
in order (a duplicate is possible, a loss is not). Messages go out ``mandatory``; one
returned as unroutable (its queue was deleted elsewhere) is sent again once the queue is
declared again. ``subscribe``, ``depth``, ``purge`` and ``delete`` run on the same channel
through ``admin``, after the confirms of what was written before them are in (a failed
passive declaration closes the channel, which would leave those in doubt).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from amqp import exceptions as amqp_errors
from amqp import spec

from ...spi.errors import ConfigurationError, ConnectionLost, TransportError
from ...spi.timeouts import publish_unreachable
from ...spi.transport import Transport
from .link import CHANNEL_ERRORS, RECOVERABLE, Link, backoff, map_channel_error
from .messages import Publication
from .settings import Settings
from .topology import Declarations

log = logging.getLogger("queuekit.amqp")

#: The longest the I/O thread waits for a frame before it looks at its deadlines again.
_SLICE = 1.0


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass(eq=False)
class _Job:
    """One caller's request to the I/O thread: messages to publish, or an admin call."""

    what: str
    queue: str | None = None
    #: Messages still to write (at first all; after a reconnect, what was not confirmed).
    items: list[Publication] = field(default_factory=list)
    operation: Callable[[Any], Any] | None = None
    missing: Any = None
    #: Seconds an admin call reconnects before it gives up (``None``: reconnect_timeout).
    patience: float | None = None
    #: A publish gives up reconnecting after this (``time.monotonic``).
    deadline: float = 0.0
    outstanding: int = 0  # written, not yet confirmed
    confirm_by: float = 0.0  # when the outstanding ones are overdue
    returned: list[Publication] = field(default_factory=list)
    returns: int = 0
    #: Nacked by the broker (it does not have them): written again until ``deadline``.
    nacked: list[Publication] = field(default_factory=list)
    result: Any = None
    error: BaseException | None = None
    done: bool = False
    #: Held until the job is done: the caller blocks on it (cheaper than an Event).
    finished: threading.Lock = field(default_factory=_held_lock)


class _Waker:
    """A socket pair: writing to one end wakes the I/O thread out of ``select``. Opened
    with the thread, so a transport that never publishes holds no sockets for it."""

    def __init__(self) -> None:
        self._pair: tuple[socket.socket, socket.socket] | None = None

    def open(self) -> None:
        self._pair = socket.socketpair()
        for end in self._pair:
            end.setblocking(False)

    @property
    def reader(self) -> socket.socket:
        assert self._pair is not None, "opened before the I/O thread starts"
        return self._pair[0]

    def wake(self) -> None:
        if self._pair is not None:
            with contextlib.suppress(BlockingIOError):  # full: a wake is pending anyway
                self._pair[1].send(b"\0")

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self.reader.recv(4096):
                pass

    def close(self) -> None:
        if self._pair is not None:
            for end in self._pair:
                end.close()
            self._pair = None


class Publisher:
    """The publisher's connection, its I/O thread, its confirms and what it declared.

    Thread-safe: every call may come from any thread. Once its transport (``owner``) is
    closed every call raises :class:`TransportClosed`.
    """

    def __init__(self, settings: Settings, owner: Transport) -> None:
        self.settings = settings
        self._owner = owner
        self._lock = threading.Lock()  # guards the inbox and the thread's start and stop
        self._inbox: list[_Job] = []
        self._forgotten: list[str] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._waker = _Waker()
        # owned by the I/O thread from here on
        self._link = Link(settings, "publisher", on_channel=self._on_channel)
        self._declarations = Declarations(settings)
        self._seq = 0
        self._unconfirmed: dict[int, tuple[Publication, _Job]] = {}
        self._returned: set[int] = set()
        self._failing_since: float | None = None
        self._last_failure: BaseException | None = None
        self._attempt = 0

    # -- the callers' side ---------------------------------------------------------------

    def publish(self, queue: str | None, items: list[Publication]) -> None:
        """Publish ``items`` (for ``queue``, or broadcasts when None) and wait for their
        confirms; reconnect and resend what the broker did not confirm, until
        ``publish_timeout`` runs out (then :class:`ConnectionLost`, see
        :mod:`queuekit.spi.timeouts`)."""
        deadline = time.monotonic() + self.settings.publish_timeout
        self._call(_Job("publish", queue, list(items), deadline=deadline))

    def admin(
        self,
        what: str,
        operation: Callable[[Any], Any],
        missing: Any = None,
        *,
        patience: float | None = None,
    ) -> Any:
        """Run ``operation`` on the publisher channel, reconnecting like ``publish`` for up
        to ``patience`` s (default ``reconnect_timeout``); ``missing`` is the answer when
        the broker says the queue does not exist."""
        return self._call(_Job(what, operation=operation, missing=missing, patience=patience))

    def forget(self, queues: list[str]) -> None:
        """``queues`` were deleted: declare them again before publishing to them."""
        with self._lock:
            self._forgotten.extend(queues)

    def close(self) -> None:
        """Let the I/O thread finish what it holds, then close the connection."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._waker.wake()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._link.close()
        self._waker.close()

    def _call(self, job: _Job) -> Any:
        self._owner.check_open()
        with self._lock:
            if self._stopping:
                raise self._owner.closed_error()
            if self._pid != os.getpid():
                self._after_fork()
            self._inbox.append(job)
            if self._thread is None:
                self._waker.open()
                self._thread = threading.Thread(
                    target=self._run, name="queuekit-amqp-publisher", daemon=True
                )
                self._thread.start()
        self._waker.wake()
        job.finished.acquire()
        if job.error is not None:
            raise job.error
        return job.result

    def _after_fork(self) -> None:
        """In a forked child the parent's I/O thread is gone and its socket is not ours."""
        self._pid = os.getpid()
        self._thread = None
        self._inbox.clear()
        self._waker = _Waker()
        self._link = Link(self.settings, "publisher", on_channel=self._on_channel)
        self._unconfirmed.clear()
        self._returned.clear()

    # -- the I/O thread ------------------------------------------------------------------

    def _run(self) -> None:
        waiting: list[_Job] = []  # in arrival order, not yet started
        active: list[_Job] = []  # publishes written (or to write again), not all confirmed
        while True:
            with self._lock:
                waiting += self._inbox
                self._inbox = []
                forgotten, self._forgotten = self._forgotten, []
                stopping = self._stopping
            for queue in forgotten:
                self._declarations.forget(queue)
            try:
                waiting = self._start(waiting, active)
                self._write(active)
                active = self._finish_settled(active)
                if stopping and not waiting and not active:
                    return
                if any(job.items for job in active):
                    continue  # messages to write again first
                if any(job.outstanding for job in active):
                    self._await_confirms(active)
                elif not waiting:
                    self._idle()
            except CHANNEL_ERRORS as exc:
                self._link.reset_channel()
                self._take_back()
                error = map_channel_error(exc, f"amqp publish to {_queues(active)}")
                for job in active:  # which caller's message the broker refused is unknown
                    self._end(job, error)
                active = []
            except RECOVERABLE as exc:
                active = self._recover(exc, active)
            except Exception as exc:  # not ours to hide: every caller waiting sees it
                if not isinstance(exc, ConfigurationError):  # a bad login or certificate:
                    log.exception("amqp publisher failed")  # the callers' error says it all
                self._link.drop()
                self._take_back()
                for job in [*active, *waiting]:
                    self._end(job, exc)
                active, waiting = [], []

    def _start(self, waiting: list[_Job], active: list[_Job]) -> list[_Job]:
        """Take up the waiting jobs in order: publishes join ``active``; an admin call runs
        once nothing written before it awaits a confirm. Return those not started."""
        for index, job in enumerate(waiting):
            if job.operation is None:
                active.append(job)
            elif any(j.outstanding for j in active):
                return waiting[index:]
            else:
                self._admin(job)
        return []

    def _write(self, active: list[_Job]) -> None:
        """Write every job's unwritten messages, declaring their queues first."""
        confirm = self.settings.confirm
        for job in active:
            if not job.items:
                continue
            if self._owner.closed:  # cut short by close: what is written is still confirmed
                self._end(job, self._owner.closed_error())
                continue
            channel = self._link.channel()
            try:
                self._declarations.prepare(channel, job.items)
            except CHANNEL_ERRORS as exc:  # this caller's queue cannot be declared
                self._link.reset_channel()
                self._take_back()
                self._end(job, map_channel_error(exc, f"amqp publish to {job.queue!r}"))
                continue
            send = channel.send_method
            items, job.items = job.items, []
            for index, item in enumerate(items):
                if confirm:
                    self._seq += 1
                    self._unconfirmed[self._seq] = (item, job)
                    job.outstanding += 1
                try:
                    send(
                        spec.Basic.Publish,
                        "Bssbb",
                        (0, item.exchange, item.routing_key, item.mandatory, False),
                        item.message,
                    )
                except BaseException:
                    # Not written yet: the rest of the batch (this one too when unconfirmed
                    # messages are not tracked; with confirms it is, and goes back with them)
                    job.items = items[index + 1 if confirm else index :] + job.items
                    raise
            job.confirm_by = time.monotonic() + self.settings.confirm_timeout
            self._failing_since, self._attempt = None, 0

    def _finish_settled(self, active: list[_Job]) -> list[_Job]:
        """Wake the callers whose messages are all confirmed; return the others."""
        left = []
        for job in active:
            if job.done:
                continue
            if job.outstanding or job.items:
                left.append(job)
            elif job.nacked:
                if time.monotonic() >= job.deadline:
                    refused = f"amqp: the broker refused {len(job.nacked)} message(s)"
                    self._end(job, TransportError(refused))
                    continue
                self._write_again_nacked(job)
                left.append(job)
            elif job.returned:  # unroutable: its queue vanished (deleted elsewhere); redeclare
                job.returns += 1
                if job.returns > 2:
                    unroutable = f"amqp: messages for {job.queue!r} cannot be routed"
                    self._end(job, TransportError(unroutable))
                    continue
                self._declarations.forget_queues()
                job.items, job.returned = job.returned, []
                left.append(job)
            else:
                self._end(job)
        return left

    def _write_again_nacked(self, job: _Job) -> None:
        """The broker nacked some of ``job``'s messages: the queue could not take them (a
        quorum queue between leaders), so they are not in the broker. Write them again on
        a new channel (RabbitMQ 3.10 kept nacking on a channel that first met the queue
        while its dead leader was not yet noticed: seen here), after a short pause."""
        log.warning("amqp: the broker refused %d message(s); sending them again", len(job.nacked))
        self._link.reset_channel()
        self._take_back()  # the old channel's confirms are gone: its unconfirmed go again
        job.items, job.nacked = [*job.nacked, *job.items], []
        self._pause(job.deadline)

    def _await_confirms(self, active: list[_Job]) -> None:
        """Read frames (confirms, returns) until one comes, a caller arrives, or a slice
        passes; raise :class:`ConnectionLost` when a caller's confirms are overdue."""
        now = time.monotonic()
        overdue = min(job.confirm_by for job in active if job.outstanding)
        if now >= overdue:
            raise ConnectionLost(
                f"amqp: no publisher confirm within {self.settings.confirm_timeout:g} s"
            )
        sock = self._link.socket()
        pending = getattr(sock, "pending", None)  # TLS: decrypted bytes select cannot see
        if not (pending and pending()):
            wait = min(_SLICE, overdue - now)
            ready, _, _ = select.select([sock, self._waker.reader], [], [], wait)
            if self._waker.reader in ready:
                self._waker.clear()
            if sock not in ready:
                return
        while self._link.drain(0):
            pass

    def _idle(self) -> None:
        """Nothing to do: sleep until a caller arrives, reading what the broker sends
        meanwhile (heartbeats, or the end of a connection it closed)."""
        tick = self.settings.heartbeat / 2 if self.settings.heartbeat else None
        sock = self._link.socket() if self._link.current is not None else None
        ready, _, _ = select.select([self._waker.reader, *([sock] if sock else [])], [], [], tick)
        if self._waker.reader in ready:
            self._waker.clear()
        if sock is not None and sock in ready:
            while self._link.drain(0):
                pass
        elif sock is not None and tick:
            self._link.heartbeat()

    def _admin(self, job: _Job) -> None:
        assert job.operation is not None
        while True:
            try:
                self._owner.check_open()
                job.result = job.operation(self._link.channel())
                self._failing_since, self._attempt = None, 0
                self._end(job)
                return
            except amqp_errors.NotFound:
                self._link.reset_channel()
                job.result = job.missing
                self._end(job)
                return
            except CHANNEL_ERRORS as exc:
                self._link.reset_channel()
                self._end(job, map_channel_error(exc, f"amqp {job.what}"))
                return
            except RECOVERABLE as exc:
                self._lost(exc)
            except Exception as exc:  # TransportClosed, or a bug: the caller's to see
                self._end(job, exc)
                return
            patience = self.settings.reconnect_timeout if job.patience is None else job.patience
            if time.monotonic() - (self._failing_since or 0.0) > patience:
                self._failing_since, self._attempt = None, 0
                self._end(job, ConnectionLost(
                    f"amqp {job.what}: no broker reachable for {patience:g} s"))  # fmt: skip
                return
            self._pause(None)

    def _recover(self, exc: BaseException, active: list[_Job]) -> list[_Job]:
        """The connection failed: everything not confirmed is written again on the next
        one, for each caller until its publish timeout; back off before reconnecting."""
        self._lost(exc)
        now, left = time.monotonic(), []
        for job in active:
            if job.done:
                continue
            if self._owner.closed:
                self._end(job, self._owner.closed_error())
            elif now >= job.deadline:
                self._end(job, publish_unreachable(self._owner.url.redacted(),
                                                   self.settings.publish_timeout,
                                                   self._last_failure))  # fmt: skip
            else:
                left.append(job)
        if left:
            self._pause(min(job.deadline for job in left))
        else:
            self._failing_since, self._attempt = None, 0
        return left

    def _lost(self, exc: BaseException) -> None:
        self._link.drop()
        self._take_back()
        self._last_failure = exc
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning("amqp publisher connection lost (%s); reconnecting", exc)

    def _pause(self, deadline: float | None) -> None:
        pause = backoff(self._attempt)
        if deadline is not None:
            pause = max(0.0, min(pause, deadline - time.monotonic()))
        time.sleep(pause)
        self._attempt += 1

    def _take_back(self) -> None:
        """The channel is gone with its confirms: each caller writes again, in order,
        what it had not had confirmed, before what it had not written yet."""
        again: dict[_Job, list[Publication]] = {}
        for item, job in self._unconfirmed.values():
            again.setdefault(job, []).append(item)
            job.outstanding = 0
        for job, items in again.items():
            job.items = items + job.items
        self._unconfirmed.clear()
        self._returned.clear()

    def _end(self, job: _Job, error: BaseException | None = None) -> None:
        """Wake the caller (once), with ``error`` if there is one."""
        if job.done:
            return
        if error is not None:
            for seq in [s for s, (_, j) in self._unconfirmed.items() if j is job]:
                del self._unconfirmed[seq]
            job.error = error
        job.done = True
        job.finished.release()

    # -- confirms and returns: py-amqp calls these while the I/O thread drains ---------

    def _on_channel(self, channel: Any) -> None:
        """Set up a fresh channel: confirms on, and forget what it declared."""
        self._seq = 0
        self._declarations.reset()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.events["basic_return"].add(self._on_return)
        if self.settings.confirm:
            channel.confirm_select()

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, nacked=False)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, nacked=True)

    def _settle(self, tag: int, multiple: bool, *, nacked: bool) -> None:
        unconfirmed = self._unconfirmed
        if multiple:
            tags = []
            for seq in unconfirmed:  # in the order written
                if seq > tag:
                    break
                tags.append(seq)
        else:
            tags = [tag]
        for seq in tags:
            entry = unconfirmed.pop(seq, None)
            if entry is None:
                continue
            self._returned.discard(seq)
            job = entry[1]
            job.outstanding -= 1
            if nacked:
                job.nacked.append(entry[0])

    def _on_return(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        """The broker sends a return before the confirm of the same message, and in the
        order they were written: the first unconfirmed match is the one."""
        for seq, (item, job) in self._unconfirmed.items():
            if (
                seq not in self._returned
                and item.routing_key == routing_key
                and item.exchange == exchange
                and item.message.body == message.body
            ):
                self._returned.add(seq)
                job.returned.append(item)
                return
        log.warning("amqp: a returned message matched nothing this publisher sent")


def _queues(jobs: list[_Job]) -> str:
    names = {job.queue for job in jobs}
    return repr(names.pop()) if len(names) == 1 else "several queues"
