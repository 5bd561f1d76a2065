"""One connection to one gearmand, driven one request at a time.

pygearman's ``GearmanWorker.work()`` is a blocking loop that runs a callback per job and
completes it itself; queuekit needs the opposite shape: grab a job, hand it out, complete it
later (or never, if the process dies). So this module drives the protocol directly on
pygearman's :class:`~gearman.connection.GearmanConnection`, which does the socket and the
binary framing; what is left here is the small request/reply sequence:

- ``SUBMIT_JOB_BG`` (and its band variants) answered by ``JOB_CREATED``, pipelined for a
  batch (pygearman's client does the same with an epoll object per call and two polls per
  job, which costs more than the round trip on loopback);

- ``CAN_DO`` once per function; ``GRAB_JOB_UNIQ`` answered by ``JOB_ASSIGN_UNIQ`` or
  ``NO_JOB`` (several grabs may be pipelined: gearmand lets a worker hold many jobs);
- ``PRE_SLEEP`` when idle, answered by ``NOOP`` once a job arrives;
- ``WORK_COMPLETE``/``WORK_FAIL`` settle a job (no reply). A job still held when the
  connection closes goes back to gearmand's queue for another worker.

Not thread-safe: the transport serialises use. Every wait also watches a wake-up socket, so
``close()`` from another thread interrupts a blocked wait.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections import deque
from typing import Any

from gearman import protocol
from gearman.connection import GearmanConnection
from gearman.errors import ConnectionError as GearmanConnectionError
from gearman.errors import GearmanError

__all__ = ["Assignment", "Link", "LinkDown", "Refused", "Woken"]

_ASSIGN = protocol.GEARMAN_COMMAND_JOB_ASSIGN_UNIQ
_NO_JOB = protocol.GEARMAN_COMMAND_NO_JOB
_NOOP = protocol.GEARMAN_COMMAND_NOOP
_ERROR = protocol.GEARMAN_COMMAND_ERROR
_CREATED = protocol.GEARMAN_COMMAND_JOB_CREATED
#: Background submit command per band, as pygearman names the bands.
SUBMIT_BG = {
    "LOW": protocol.GEARMAN_COMMAND_SUBMIT_JOB_LOW_BG,
    None: protocol.GEARMAN_COMMAND_SUBMIT_JOB_BG,
    "HIGH": protocol.GEARMAN_COMMAND_SUBMIT_JOB_HIGH_BG,
}
RECONNECT_BACKOFF = 1.0


class LinkDown(Exception):
    """The connection failed; jobs held on it are back on the server."""


class Refused(Exception):
    """gearmand answered ERROR (e.g. an argument too large); the link is dropped."""


class Woken(Exception):
    """The wake-up socket fired (the transport is closing)."""


class _Connection(GearmanConnection):  # type: ignore[misc]
    """pygearman's connection with a connect timeout (its own connect never times out)."""

    connect_timeout = 5.0
    #: pygearman refuses to reconnect within 1 s; callers here bound their own retries.
    connect_cooldown_seconds = 0.0

    def _create_client_socket(self) -> None:
        try:
            sock = socket.create_connection(
                (self.gearman_host, self.gearman_port), timeout=self.connect_timeout
            )
        except OSError as exc:
            self.throw_exception(exception=exc)
        self.set_socket(sock)


class Assignment:
    """A job handed to this link: ``handle`` settles it, on this link's ``generation``."""

    __slots__ = ("data", "function", "generation", "handle", "link", "unique")

    def __init__(self, link: Link, args: dict[str, bytes]) -> None:
        self.link = link
        self.generation = link.generation
        self.handle: bytes = args["job_handle"]
        self.function: bytes = args["task"]
        self.unique: bytes = args["unique"]
        self.data: bytes = args["data"]


log = logging.getLogger("queuekit.gearman")

#: Bytes read from the socket at once.
_READ = 65536
#: Room in a packet beside the job data: header, function name, handle, unique id.
_PACKET_ALLOWANCE = 64 * 1024


def max_packet(max_message_size: int) -> int:
    """The largest packet a link reads for job data of up to ``max_message_size`` bytes
    (the frame of queuekit headers counts in the job data, see :mod:`.frame`)."""
    return max_message_size + _PACKET_ALLOWANCE


class Link:
    """A connection to ``host:port``; a worker able to do ``functions`` when given any."""

    def __init__(
        self,
        host: str,
        port: int,
        functions: list[bytes],
        wakeup: socket.socket,
        *,
        io_timeout: float = 30.0,
        max_packet: int = 64 * 1024 * 1024 + _PACKET_ALLOWANCE,  # see max_packet()
    ) -> None:
        self.host, self.port = host, port
        #: The largest packet read: a server that sends more is dropped (LinkDown), so a
        #: packet header announcing gigabytes cannot grow the read buffer without bound.
        self.max_packet = max_packet
        self.functions = functions
        self.wakeup = wakeup
        self.io_timeout = io_timeout
        #: Bumped on every (re)connect: an assignment from an older generation is void.
        self.generation = 0
        self.sleeping = False
        self._conn: Any = None
        #: After a failed connect, no new attempt before this (monotonic) time.
        self._retry_at = 0.0
        self._pending: deque[tuple[int, dict[str, bytes]]] = deque()

    @property
    def connected(self) -> bool:
        return self._conn is not None and bool(self._conn.connected)

    def fileno(self) -> int:
        return int(self._conn.gearman_socket.fileno())

    # -- connection ------------------------------------------------------------------

    def connect(self) -> None:
        """(Re)connect and register the functions; raises :class:`LinkDown`.

        A host that refused is not tried again for :data:`RECONNECT_BACKOFF` seconds, so a
        dead host among several costs one attempt per second, not one per ``receive``."""
        self.drop()
        if time.monotonic() < self._retry_at:
            raise LinkDown(f"gearmand {self.host}:{self.port} refused a moment ago")
        conn = _Connection(host=self.host, port=self.port)
        conn.connect_timeout = min(self.io_timeout, _Connection.connect_timeout)
        try:
            conn.connect()
        except GearmanError as exc:
            self._retry_at = time.monotonic() + RECONNECT_BACKOFF
            raise LinkDown(str(exc)) from None
        self._conn = conn
        self.generation += 1
        for function in self.functions:
            conn.send_command(protocol.GEARMAN_COMMAND_CAN_DO, {"task": function})
        self._flush()

    def drop(self) -> None:
        """Close the socket; gearmand requeues whatever this link held."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._pending.clear()
        self.sleeping = False

    # -- requests ----------------------------------------------------------------------

    def submit(self, jobs: list[tuple[int, bytes, bytes, bytes]]) -> None:
        """Submit ``(command, function, unique, data)`` jobs in one round trip; return once
        gearmand answered ``JOB_CREATED`` for each (raises :class:`LinkDown`/:class:`Refused`)."""
        for cmd, function, unique, data in jobs:
            self._conn.send_command(cmd, {"task": function, "unique": unique, "data": data})
        self._flush()
        deadline = time.monotonic() + self.io_timeout
        created = 0
        while created < len(jobs):
            cmd, _ = self._read(deadline)
            if cmd == _CREATED:
                created += 1

    def grab(self, count: int) -> list[Assignment]:
        """Ask for up to ``count`` jobs in one round trip; fewer (or none) when idle."""
        self.sleeping = False
        for _ in range(count):
            self._conn.send_command(protocol.GEARMAN_COMMAND_GRAB_JOB_UNIQ, {})
        self._flush()
        jobs: list[Assignment] = []
        answered = 0
        while answered < count:
            cmd, args = self._read(time.monotonic() + self.io_timeout)
            if cmd == _ASSIGN:
                jobs.append(Assignment(self, args))
                answered += 1
            elif cmd == _NO_JOB:
                answered += 1
        return jobs

    def sleep(self) -> None:
        """Tell gearmand to wake this link (NOOP) when a job arrives."""
        if not self.sleeping:
            self._conn.send_command(protocol.GEARMAN_COMMAND_PRE_SLEEP, {})
            self._flush()
            self.sleeping = True

    def take_noop(self) -> bool:
        """Consume what the socket has; True once a NOOP (wake-up) has arrived."""
        self._fill(block=False)
        woke = False
        while True:
            command = self._conn.read_command()
            if command is None:
                return woke
            cmd, args = command
            if cmd == _NOOP:
                woke = True
                self.sleeping = False
            else:
                self._check(cmd, args)
                self._pending.append((cmd, args))

    def alive(self) -> bool:
        """Whether the connection still stands, noticing a close by gearmand (one
        non-blocking poll): jobs held on a lost connection are gearmand's again."""
        if not self.connected:
            return False
        try:
            self._fill(block=False)
        except LinkDown:
            return False
        return True

    def complete(self, handle: bytes, data: bytes = b"") -> None:
        self._send(protocol.GEARMAN_COMMAND_WORK_COMPLETE, {"job_handle": handle, "data": data})

    def fail(self, handle: bytes) -> None:
        self._send(protocol.GEARMAN_COMMAND_WORK_FAIL, {"job_handle": handle})

    # -- I/O ---------------------------------------------------------------------------

    def _send(self, cmd: int, args: dict[str, bytes]) -> None:
        self._conn.send_command(cmd, args)
        self._flush()

    def _flush(self) -> None:
        conn = self._conn
        try:
            conn.send_commands_to_buffer()
            deadline = time.monotonic() + self.io_timeout
            while conn.send_data_to_socket():
                self._wait(select_write=True, deadline=deadline)
        except GearmanConnectionError as exc:
            self.drop()
            raise LinkDown(str(exc)) from None

    def _read(self, deadline: float) -> tuple[int, dict[str, bytes]]:
        """The next command that is not a stray NOOP."""
        while True:
            if self._pending:
                return self._pending.popleft()
            command = self._conn.read_command()
            if command is not None:
                cmd, args = command
                if cmd == _NOOP:
                    continue
                self._check(cmd, args)
                return cmd, args
            self._wait(select_write=False, deadline=deadline)
            self._fill(block=False)

    def _fill(self, *, block: bool) -> None:
        conn = self._conn
        try:
            readable, _, _ = select.select([conn.gearman_socket], [], [], None if block else 0)
            if readable:
                # After each parse the buffer holds less than one packet; more than the
                # largest packet plus this read means a packet above the limit.
                if conn.read_data_from_socket(_READ) > self.max_packet + _READ:
                    self.drop()  # the job goes back to gearmand, for a worker with room
                    reason = (f"{self.host}:{self.port} sent a packet above {self.max_packet} "
                              "bytes (raise ?max_message_size= or purge the queue)")  # fmt: skip
                    log.warning("gearman: dropped the connection: %s", reason)
                    raise LinkDown(reason)
                conn.read_commands_from_buffer()
        except (GearmanConnectionError, OSError) as exc:
            self.drop()
            raise LinkDown(str(exc)) from None
        except GearmanError as exc:  # a protocol error: the stream is unusable
            self.drop()
            raise LinkDown(f"protocol error from {self.host}:{self.port}: {exc}") from None

    def _wait(self, *, select_write: bool, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self.drop()
            raise LinkDown(f"gearmand {self.host}:{self.port} did not answer in time")
        sock = self._conn.gearman_socket
        rlist = [self.wakeup] if select_write else [sock, self.wakeup]
        wlist = [sock] if select_write else []
        readable, _, _ = select.select(rlist, wlist, [], remaining)
        if self.wakeup in readable:
            raise Woken

    def _check(self, cmd: int, args: dict[str, bytes]) -> None:
        if cmd == _ERROR:
            self.drop()
            raise Refused(
                f"gearmand {self.host}:{self.port} error {args.get('error_code', b'')!r}: "
                f"{args.get('error_text', b'')!r}"
            )
