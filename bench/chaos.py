"""Chaos: N messages through real ``worker run`` processes while workers are SIGKILLed and
the broker restarts; prints what was lost, what ran twice, and the bound on the latter.

A producer process publishes ``--messages`` ids (0..N-1, confirmed ``publish_many`` batches;
a batch that fails is sent again) to a fresh queue, while ``--supervisors`` copies of
``worker run chaos:ChaosJobs -c 8 --processes 2`` consume it. The handler appends each id to
a file of its own process *inside* ``work()``, so an id on disk means the handler ran before
the ack; ``os.write`` on an ``O_APPEND`` file puts it in the kernel at once, and a SIGKILL
cannot take back what the kernel has (only a kernel crash could, which is not simulated,
so there is no fsync).

Every ``--kill-every`` seconds one worker process, a supervisor or a child picked at random,
gets SIGKILL. A killed child is restarted by its supervisor; a killed supervisor's children
are SIGKILLed too (as a container runtime or systemd would kill what is left of the unit)
and the bench starts the supervisor again, as it does for one that gave up on a crash loop
(exit 4: five child crashes within 60 s). The broker restarts ``--restarts`` times, when a
quarter, half and three quarters of the ids have been processed (``scripts/brokers restart
NAME``, or ``--restart-command``), in a thread, so kills go on during a restart.

The run ends when every id has been processed and no record has come for ``--settle``
seconds (late duplicates: a killed worker's messages come back after a lease), or after
``--timeout`` seconds, which prints the ids still missing. ``lost`` is N minus the ids seen.

The bound on duplicates: an id runs twice only if its handler ran and the broker did not
learn of the ack, so the message was held by a process that was killed, or on a connection
the broker dropped when it restarted. A worker process holds at most ``prefetch`` messages
un-acked (the broker's prefetch; the runner takes at most ``2c - 1 <= prefetch`` of them),
and at most ``prefetch`` more whose ack is not durable yet (SQLite commits the deletes with
the next claim of up to ``prefetch`` rows, within a second when idle), so one disruption of
one process costs at most ``2 x prefetch`` duplicates. Bound = (processes killed + restarts
x worker processes) x 2 x prefetch + resent batches x batch size (a batch resent after a
restart may have reached the broker the first time).

Run: ``.venv/bin/python bench/chaos.py URL [--broker NAME] [--messages 100000]``;
``bench/bench_chaos.py --quick`` is the smoke run (SQLite, 5,000 messages, a kill every
0.5 s) that ``scripts/bench-smoke`` runs. Broker URLs: ``scripts/brokers urls``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import report

from queuekit import AbstractQueue, Message, QueuekitError, connect

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RECORDS = "CHAOS_RECORDS"  # the environment variable naming the directory of id files
EMBEDDED = ("sqlite", "memory")  # no server to restart, no publish_timeout option

_record_lock = threading.Lock()
_record_fd: dict[int, int] = {}  # pid -> fd: a forked process opens its own file


class ChaosJobs(AbstractQueue):
    """Appends the payload (an int id) to ``$CHAOS_RECORDS/<pid>.ids`` before it is acked."""

    queue = "chaos"

    def work(self, message: Message) -> None:
        os.write(_records(), b"%d\n" % message.payload)


def _records() -> int:
    pid = os.getpid()
    with _record_lock:
        if pid not in _record_fd:
            path = Path(os.environ[RECORDS]) / f"{pid}.ids"
            _record_fd[pid] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        return _record_fd[pid]


# -- the producer (a process of its own) ---------------------------------------------------


def produce(url: str, queue: str, messages: int, batch: int) -> None:
    """Publish ids 0..messages-1; print the number of resent batches last."""
    resent = 0
    with connect(url) as conn:
        target = conn.queue(queue)
        for start in range(0, messages, batch):
            ids = list(range(start, min(start + batch, messages)))
            while True:
                try:
                    target.publish_many(ids)
                    break
                except QueuekitError as exc:
                    resent += 1
                    print(f"producer: batch at {start} failed ({exc}); sending it again",
                          file=sys.stderr)  # fmt: skip
                    time.sleep(1)
                    conn.reconnect()
    print(f"resent {resent}", flush=True)


def producer_url(url: str) -> str:
    """The producer rides out a broker restart: a publish may wait up to 120 s for it."""
    if url.split(":", 1)[0] in EMBEDDED or "publish_timeout=" in url:
        return url
    return url + ("&" if "?" in url else "?") + "publish_timeout=120"


# -- what the handlers wrote ---------------------------------------------------------------


class Tally:
    """Reads the id files as they grow: how often each id ran, and when the last one came."""

    def __init__(self, directory: Path, messages: int) -> None:
        self.directory, self.counts = directory, [0] * messages
        self.seen = self.records = 0
        self.last_record = time.monotonic()
        self.complete_at: float | None = None  # when the last missing id came
        self.dead: set[int] = set()  # ids the workers put in the failed store
        self._offsets: dict[Path, int] = {}

    def update(self) -> None:
        for path in self.directory.glob("*.ids"):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as file:
                file.seek(offset)
                data = file.read()
            complete = data.rfind(b"\n") + 1  # a line being written is read next time
            self._offsets[path] = offset + complete
            for line in data[:complete].split():
                self.records += 1
                self.last_record = time.monotonic()
                i = int(line)
                self.seen += self.counts[i] == 0
                self.counts[i] += 1
        if self.complete_at is None and self.seen == len(self.counts):
            self.complete_at = time.monotonic()

    @property
    def duplicates(self) -> int:
        return self.records - self.seen

    def missing(self) -> list[int]:
        """Ids never run and not in the failed store."""
        return [i for i, count in enumerate(self.counts) if count == 0 and i not in self.dead]


# -- the workers and the chaos -------------------------------------------------------------


@dataclass
class Supervisor:
    """One ``worker run --processes 2`` started by the bench, restarted when it dies."""

    command: list[str]
    log: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    exits: list[int] = field(default_factory=list)

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, cwd=HERE, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=log,
            )  # fmt: skip

    def children(self) -> list[psutil.Process]:
        try:
            children: list[psutil.Process] = psutil.Process(self.pid).children()
            return children
        except psutil.NoSuchProcess:
            return []

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


@dataclass
class Chaos:
    """What the bench did to the workers and the broker."""

    children_killed: int = 0
    supervisors_killed: int = 0
    orphans_killed: int = 0
    gave_up: int = 0  # supervisors that exited on their own (a crash loop) and were restarted
    restarts: list[float] = field(default_factory=list)  # seconds each broker restart took
    restart_errors: list[str] = field(default_factory=list)

    @property
    def processes_killed(self) -> int:
        return self.children_killed + self.orphans_killed


def kill(process: psutil.Process | int) -> bool:
    try:
        os.kill(process if isinstance(process, int) else process.pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def kill_supervisor(supervisor: Supervisor, chaos: Chaos) -> None:
    """SIGKILL a supervisor and the children it leaves behind (they would run on, orphaned)."""
    orphans = supervisor.children()
    if kill(supervisor.pid):
        chaos.supervisors_killed += 1
    assert supervisor.process is not None
    supervisor.process.wait()
    chaos.orphans_killed += sum(kill(child) for child in orphans)
    supervisor.start()


def keep_running(supervisors: Sequence[Supervisor], chaos: Chaos) -> None:
    """Start again a supervisor that exited on its own (it gave up on a crash loop)."""
    for supervisor in supervisors:
        assert supervisor.process is not None
        status = supervisor.process.poll()
        if status is not None:
            supervisor.exits.append(status)
            chaos.gave_up += 1
            chaos.orphans_killed += sum(kill(child) for child in supervisor.children())
            supervisor.start()


def kill_one(supervisors: Sequence[Supervisor], chaos: Chaos, rng: random.Random) -> None:
    """SIGKILL one worker process, a supervisor or a child, picked at random."""
    victims: list[tuple[Supervisor, psutil.Process | None]] = []
    for supervisor in supervisors:
        victims.append((supervisor, None))
        victims += [(supervisor, child) for child in supervisor.children()]
    supervisor, child = rng.choice(victims)
    if child is None:
        kill_supervisor(supervisor, chaos)
    elif kill(child):
        chaos.children_killed += 1


def restart_broker(command: str, chaos: Chaos) -> None:
    started = time.monotonic()
    done = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True,
                          check=False)  # fmt: skip
    chaos.restarts.append(time.monotonic() - started)
    if done.returncode != 0:
        chaos.restart_errors.append(f"{command!r} exited {done.returncode}: {done.stderr[-300:]}")


def restart_command(args: argparse.Namespace) -> str | None:
    """The command that restarts the broker, or None when there is none (embedded, or
    ``--restarts 0``); raises SystemExit when a server broker has neither option."""
    if args.restarts == 0 or args.url.split(":", 1)[0] in EMBEDDED:
        return None
    if args.restart_command:
        return str(args.restart_command)
    if args.broker:
        return f"scripts/brokers restart {shlex.quote(args.broker)}"
    raise SystemExit("chaos: give --broker NAME (scripts/brokers restart NAME) or "
                     "--restart-command CMD, or --restarts 0")  # fmt: skip


# -- one run -------------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    messages: int
    tally: Tally
    chaos: Chaos
    bound: int
    resent: int | None
    elapsed: float
    drained: bool
    restart: str | None

    def row(self) -> list[report.Cell]:
        lost = len(self.tally.missing())
        restarts = "n/a (embedded)" if self.restart is None else str(len(self.chaos.restarts))
        return [
            self.label, self.messages, self.tally.records,
            lost if self.drained else f"{lost} (timeout)", len(self.tally.dead),
            self.tally.duplicates, self.bound,
            f"{self.chaos.children_killed} + {self.chaos.supervisors_killed}",
            restarts, round(self.elapsed),
        ]  # fmt: skip


def run(args: argparse.Namespace, directory: Path) -> Result:
    queue = f"chaos-{uuid.uuid4().hex[:12]}"
    records = directory / "records"
    records.mkdir()
    # The workers and the producer import this checkout's queuekit (a worktree's, not the
    # one the virtualenv was installed from) and the handler from bench/.
    env = {**os.environ, RECORDS: str(records), "PYTHONPATH": f"{HERE}{os.pathsep}{ROOT}"}
    worker = Path(sys.executable).parent / "worker"
    command = [str(worker), "run", "chaos:ChaosJobs", "--url", args.url, "--queue", queue,
               "-c", str(args.concurrency), "--processes", str(args.processes),
               "--prefetch", str(args.prefetch)]  # fmt: skip
    supervisors = [Supervisor(command, directory / f"supervisor-{n}.log", env)
                   for n in range(args.supervisors)]  # fmt: skip
    restart = restart_command(args)
    chaos, tally, rng = Chaos(), Tally(records, args.messages), random.Random(args.seed)
    thresholds = [args.messages * (k + 1) // (args.restarts + 1) for k in range(args.restarts)]
    restarting: threading.Thread | None = None

    started = time.monotonic()
    with (directory / "producer.log").open("wb") as producer_log:
        producer = subprocess.Popen(
            [sys.executable, __file__, args.url, "--produce", "--queue", queue,
             "--messages", str(args.messages), "--batch", str(args.batch)],
            cwd=HERE, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=producer_log,
        )  # fmt: skip
    for supervisor in supervisors:
        supervisor.start()
    next_kill = time.monotonic() + args.kill_every
    drained = False
    try:
        while time.monotonic() - started < args.timeout:
            time.sleep(0.2)
            tally.update()
            keep_running(supervisors, chaos)
            everything = tally.seen == args.messages and producer.poll() is not None
            if everything and time.monotonic() - tally.last_record >= args.settle:
                drained = True
                break
            idle = restarting is None or not restarting.is_alive()
            if restart and thresholds and tally.seen >= thresholds[0] and idle:
                thresholds.pop(0)
                restarting = threading.Thread(target=restart_broker, args=(restart, chaos))
                restarting.start()
            if not everything and time.monotonic() >= next_kill:
                kill_one(supervisors, chaos, rng)
                next_kill += args.kill_every
        elapsed = (tally.complete_at or time.monotonic()) - started
    finally:
        if restarting is not None:
            restarting.join()
        stop(supervisors, producer)
        tally.dead = forget(args.url, queue, drained)
    tally.update()
    out = producer.stdout.read().decode() if producer.stdout else ""
    resent = int(out.split()[-1]) if out.startswith("resent") else None
    processes = args.processes * args.supervisors
    bound = (chaos.processes_killed + len(chaos.restarts) * processes) * 2 * args.prefetch
    bound += (resent or 0) * args.batch
    label = args.label or (args.broker or args.url.split(":", 1)[0])
    return Result(label, args.messages, tally, chaos, bound, resent, elapsed, drained, restart)


def stop(supervisors: Sequence[Supervisor], producer: subprocess.Popen[bytes]) -> None:
    """SIGTERM every supervisor (each stops its children) and wait, SIGKILL after 60 s;
    end the producer if it still runs."""
    if producer.poll() is None:
        producer.kill()
    producer.wait()
    for supervisor in supervisors:
        if supervisor.process is not None and supervisor.process.poll() is None:
            supervisor.process.send_signal(signal.SIGTERM)
    for supervisor in supervisors:
        assert supervisor.process is not None
        try:
            supervisor.process.wait(60)
        except subprocess.TimeoutExpired:
            for child in supervisor.children():
                kill(child)
            kill(supervisor.pid)
            supervisor.process.wait()


def forget(url: str, queue: str, drained: bool) -> set[int]:
    """The ids the workers put in the failed store (e.g. delivered over 20 times unsettled:
    not lost, but not run), purged from it; delete the run's queue on the broker (a shared
    broker keeps durable queues), or keep it when ids are missing: what is left on it tells
    a stall from a loss."""
    dead: set[int] = set()
    try:
        with connect(url) as conn:
            dead = {json.loads(f.body)["payload"] for f in conn.failed.list(queue, limit=10**6)}
            conn.failed.purge(queue)
            if drained:
                conn.transport.delete(queue)
    except QueuekitError as exc:
        print(f"chaos: could not clean up queue {queue}: {exc}", file=sys.stderr)
    if not drained:
        print(f"chaos: queue {queue} kept on the broker", file=sys.stderr)
    return dead


def describe(result: Result) -> Iterator[str]:
    chaos = result.chaos
    yield (f"{chaos.children_killed} children and {chaos.supervisors_killed} supervisors "
           f"SIGKILLed ({chaos.orphans_killed} orphaned children with them); "
           f"{chaos.gave_up} supervisor(s) gave up on a crash loop and were started "
           "again.")  # fmt: skip
    if result.restart:
        took = ", ".join(f"{s:.0f}" for s in chaos.restarts)
        yield f"Broker restarts (`{result.restart}`): {len(chaos.restarts)}, taking {took} s."
    for error in chaos.restart_errors:
        yield f"A restart failed: {error}"
    if result.resent is None:
        yield "The producer did not finish (no count of resent batches)."
    elif result.resent:
        yield f"The producer resent {result.resent} batch(es) after failed publishes."
    if not result.drained:
        missing = result.tally.missing()
        yield (f"**Timeout after {result.elapsed:.0f} s**: {len(missing)} id(s) never "
               f"processed, e.g. {missing[:20]}.")  # fmt: skip
    if result.tally.duplicates > result.bound:
        yield "**Duplicates exceed the bound.**"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", help="broker URL (default: a fresh SQLite file)")
    parser.add_argument("--broker", help="its name for `scripts/brokers restart NAME`")
    parser.add_argument("--restart-command", metavar="CMD", help="shell command restarting it")
    parser.add_argument("--label", help="the row's name (default: --broker, else the scheme)")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--supervisors", type=int, default=2,
                        help="`worker run --processes 2` supervisors")  # fmt: skip
    parser.add_argument("--processes", type=int, default=2,
                        help="each supervisor's children (1 for XMPP: one consumer per "
                        "queue)")  # fmt: skip
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--prefetch", type=int, default=16)
    parser.add_argument("--batch", type=int, default=500, help="producer batch size")
    parser.add_argument("--kill-every", type=float, default=2.0, metavar="S")
    parser.add_argument("--settle", type=float, default=10.0, metavar="S",
                        help="quiet seconds after the last id before the run ends")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=3600.0, metavar="S")
    parser.add_argument("--seed", type=int, help="for the choice of victims")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory")
    parser.add_argument("--produce", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    quick = {"messages": 5_000, "restarts": 1, "kill_every": 0.5, "settle": 5, "timeout": 150}
    args = report.parse_args(parser, quick)
    if args.produce:
        produce(producer_url(args.url), args.queue, args.messages, args.batch)
        return
    directory = Path(tempfile.mkdtemp(prefix="qk-chaos-"))
    if args.url is None:  # short leases: a killed worker's messages come back in 5 s
        args.url = f"sqlite:///{directory}/chaos.db?lease=5"
        args.label = args.label or "sqlite"
    result = run(args, directory)
    report.heading(
        f"Chaos: {args.messages:,} messages, a worker SIGKILLed every {args.kill_every:g} s",
        f"{args.supervisors} x `worker run -c {args.concurrency} --processes {args.processes} "
        f"--prefetch {args.prefetch}`; bound on duplicates = (processes killed + restarts x "
        f"{args.processes * args.supervisors} processes) x 2 x prefetch + resent batches x "
        f"{args.batch} (bench/chaos.py's docstring derives it). Kills: children + "
        "supervisors. Elapsed: from the producer's start to the last id's first run.",
    )
    report.table(
        ["broker", "messages", "processed", "lost", "failed store", "duplicates", "bound", "kills",
         "restarts", "elapsed s"],
        [result.row()],
    )  # fmt: skip
    for line in describe(result):
        print(line)
    lost = len(result.tally.missing())
    if lost or args.keep:
        print(f"\nRun directory kept: {directory} (worker logs, id files)")
    else:
        shutil.rmtree(directory, ignore_errors=True)
    if lost or result.tally.duplicates > result.bound:
        sys.exit(1)


if __name__ == "__main__":
    main()
