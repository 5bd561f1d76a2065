"""The ``worker`` command: run queue classes, publish, inspect dead letters, check brokers.

Each subcommand is one small function; ``conformance`` and ``zmq-proxy`` live with the code
they run and are only dispatched to from here.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack, nullcontext
from datetime import datetime
from pathlib import Path
from types import ModuleType

from .. import __version__
from ..client.abstract import AbstractQueue
from ..client.config import resolve_url
from ..client.connection import Connection, connect
from ..client.functions import JobFunction, functions_of, serving
from ..client.progress import progress
from ..client.redrive import retry_failed
from ..features.delays import parse_duration
from ..features.registry import OVER_LIMIT_EXIT, WorkersLimitReached
from ..jobstore.base import FailedMessage
from ..spi.errors import ConfigurationError, QueuekitError
from ..spi.priorities import PriorityRange
from ..spi.urls import redact
from ..worker import deploy, supervisor
from ..worker.logs import JSONFormatter
from ..worker.loop import Limits
from . import dashboard, pause, processes, publish, relay, schedule, status
from .common import UsageError

#: Subcommands implemented elsewhere: name -> (module, function taking argv, summary).
_DELEGATED = {
    "conformance": ("queuekit.conformance.cli", "command", "check a broker against the contract"),
    "zmq-proxy": ("queuekit.adapters.zmq.proxy", "main", "run the ZeroMQ routing device"),
}
#: Subcommands in their own module here, each with ``register(subparsers)``.
_COMMANDS = (publish, relay, schedule, status, processes, pause, dashboard)
#: ``-v`` is the worker command's own flag: it may stand before or after the subcommand.
_VERBOSE = ("-v", "--verbose")
_VERBOSE_HELP = "log every message received, done, retried or failed"
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmg]?)b?$", re.IGNORECASE)
_EXIT_STATUSES = f"""exit status:
  0    stopped by SIGTERM/SIGINT/SIGHUP, or by a --max-* limit (see 3); all work in hand
       was finished and settled
  1    the broker or job store failed, --shutdown-timeout passed and work was handed
       back, or a child did not stop cleanly
  2    bad configuration: a wrong option or class path (restarting will not help)
  3    a --max-* limit was reached (with --limit-exit-code 3, as --processes children run)
  4    --processes/--reload: children crashed 5 times within 60 s; the supervisor gave up
  {OVER_LIMIT_EXIT}   the queue already has its workers limit of live workers (a supervisor should
       not restart it at once)
  130  a second SIGINT aborted; un-acked messages go back to the broker

A worker is dead when silent for $QUEUEKIT_WORKER_TIMEOUT seconds (default 60);
$QUEUEKIT_HOSTNAME names its host in the worker registry."""


def split_class_path(path: str) -> tuple[str, str]:
    """``package.module.Class`` or ``package.module:Class`` -> (module, class name)."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise UsageError(f"{path!r} is not a class path (expected module.Class or module:Class)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the project's own modules import
    return module_name, attr


def load_queue_class(path: str, queue: str | None = None) -> type[AbstractQueue]:
    """What ``worker run PATH`` runs, as an AbstractQueue subclass:

    - ``module.Class`` or ``module:Class``: that AbstractQueue subclass;
    - ``module.function`` or ``module:function`` (a ``@job`` function): the job functions
      of its module on its queue;
    - ``module``: the module's job functions; they must share one queue, or ``queue``
      (``--queue``) picks the functions of one: one worker process serves one queue.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the project's own modules import
    if ":" not in path:
        whole = _import(path, path, missing_ok=True)
        if whole is not None:
            return _module_functions(whole, path, queue)
    module_name, attr = split_class_path(path)
    module = _import(module_name, path)
    assert module is not None
    found = getattr(module, attr, None)
    if isinstance(found, JobFunction):
        return serving(
            f for f in functions_of(module) if (f.queue, f.url) == (found.queue, found.url)
        )
    if not (isinstance(found, type) and issubclass(found, AbstractQueue)):
        what = "not found" if found is None else "not an AbstractQueue subclass or @job function"
        raise UsageError(f"{path!r}: {attr!r} is {what} in module {module_name!r}")
    return found


def _import(name: str, path: str, *, missing_ok: bool = False) -> ModuleType | None:
    """Module ``name``; with ``missing_ok``, ``None`` when no module has that name."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if missing_ok and exc.name is not None and name.startswith(exc.name):
            return None  # `name` is not a module (e.g. module.Class): not an import failing
        raise UsageError(f"cannot import {name!r} for {path!r}: {exc}") from None


def _module_functions(module: ModuleType, path: str, queue: str | None) -> type[AbstractQueue]:
    functions = functions_of(module)
    if not functions:
        raise UsageError(f"module {path!r} has no @job functions; name a class (module.Class)")
    queues = sorted({f.queue for f in functions})
    if queue is not None:
        functions = [f for f in functions if f.queue == queue]
        if not functions:
            raise UsageError(f"module {path!r} has no @job functions on queue {queue!r} "
                             f"(its queues: {', '.join(queues)})")  # fmt: skip
    elif len(queues) > 1:
        runs = "; ".join(f"worker run {path} --queue {q}" for q in queues)
        raise UsageError(f"module {path!r} has @job functions on {len(queues)} queues; one "
                         f"worker process serves one queue, so run one each: {runs}")  # fmt: skip
    try:
        return serving(functions)
    except ConfigurationError as exc:
        raise UsageError(f"{path!r}: {exc}") from None


def parse_size(text: str) -> int:
    """``512M``, ``2G``, ``1048576`` -> bytes."""
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 2G)")
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match[2].lower()]
    return int(float(match[1]) * scale)


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return number


def _priority_range(text: str) -> str:
    try:
        PriorityRange.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _workers_limit(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a number of workers: {text!r}")
    return int(text)


# -- subcommands ---------------------------------------------------------------------------


def _optional(module: str, extra: str, option: str) -> ModuleType:
    """Import the module behind an option that needs an optional extra, or say which."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(f"{option} needs queuekit[{extra}] ({exc}): "
                         f"pip install 'queuekit[{extra}]'") from None  # fmt: skip


def cmd_run(args: argparse.Namespace) -> int:
    if args.processes or args.reload:
        return _supervise(args)
    # A child of a supervisor in Prometheus multiprocess mode records and the parent serves
    if args.metrics_port is not None or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics = _optional("queuekit.worker.metrics", "metrics", "--metrics-port")
        metrics.enable_metrics()
        if args.metrics_port is not None:
            try:
                metrics.serve_metrics(args.metrics_port)  # serves until the process exits
            except OSError as exc:
                raise UsageError(f"--metrics-port {args.metrics_port}: {exc}") from None
    cls = load_queue_class(args.queue_class, args.queue)
    if args.queue:
        cls = type(cls.__name__, (cls,), {"queue": args.queue, "__module__": cls.__module__})
    url = resolve_url(args.url or cls.url, queue=cls.queue_name())
    concurrency = args.concurrency or cls.concurrency
    prefetch = max(args.prefetch, concurrency)  # a free thread never waits on the broker
    with connect(url, prefetch=prefetch) as conn:  # closed on an abort too: un-acked work
        worker = cls(conn).worker(  # goes back to the broker at once
            max_messages=args.max_messages,
            max_seconds=args.max_seconds,
            max_memory=args.max_memory,
            priorities=args.priorities,
            concurrency=concurrency,
            shutdown_timeout=args.shutdown_timeout,
            workers_limit=args.workers_limit,
            wait_for_slot=args.wait_for_slot,
            outbox=args.outbox,
        )
        try:
            processed = worker.run()
        except WorkersLimitReached as exc:
            print(f"worker: {exc}; exiting with status {exc.exit_code}", file=sys.stderr)
            return exc.exit_code
    print(f"worker: processed {processed} message(s) from {cls.queue_name()!r}", file=sys.stderr)
    if worker.handed_back:
        return 1  # the worker logged what it handed back
    return args.limit_exit_code if worker.stopped_by_limit else 0


def _supervise(args: argparse.Namespace) -> int:
    """``--processes P`` / ``--reload``: see :mod:`queuekit.worker.supervisor`."""
    if (args.max_messages or 1) <= 0 or (args.max_seconds or 1) <= 0:
        raise UsageError("with --processes or --reload, the --max-* limits must be positive")
    watch = []
    if args.reload:
        module = split_class_path(args.queue_class)[0]
        try:
            watch.append(supervisor.package_root(module))
        except LookupError as exc:
            raise UsageError(f"--reload: {exc}") from None
    limits = Limits(args.max_messages, args.max_seconds, args.max_memory)
    command = supervisor.child_command(args.argv)
    logging.getLogger("queuekit.supervisor").setLevel(logging.INFO)  # a few lines, all useful
    if args.metrics_port is None:
        return supervisor.Supervisor(command, args.processes or 1, limits, watch=watch).run()
    # The supervisor serves the sum of its children's metrics (Prometheus multiprocess mode)
    metrics = _optional("queuekit.worker.metrics", "metrics", "--metrics-port")
    with ExitStack() as stack:
        try:
            exited = stack.enter_context(metrics.serving_children(args.metrics_port))
        except OSError as exc:
            raise UsageError(f"--metrics-port {args.metrics_port}: {exc}") from None
        return supervisor.Supervisor(command, args.processes or 1, limits, watch=watch,
                                     exited=exited).run()  # fmt: skip


def cmd_deploy(args: argparse.Namespace) -> int:
    if args.target == "supervisor" and (args.processes or 1) > 1 and args.metrics_port:
        raise UsageError("supervisord runs --processes as separate programs that would all "
                         f"serve --metrics-port {args.metrics_port}: deploy with systemd "
                         "(the built-in supervisor serves their sum), or one program per "
                         "port")  # fmt: skip
    executable = Path(sys.executable).parent / "worker"
    found = str(executable) if executable.exists() else shutil.which("worker")
    if found is None:
        raise UsageError("cannot find the `worker` executable to put in the config")
    run_options = args.argv[args.argv.index(args.target) + 1 :]
    run_options.remove(args.queue_class)
    if args.shutdown_timeout is None:  # the worker's deadline and the stop wait must match
        run_options += ["--shutdown-timeout", f"{deploy.DEFAULT_SHUTDOWN_TIMEOUT:g}"]
    class_name = split_class_path(args.queue_class)[1]
    command = deploy.worker_command(os.path.abspath(found), args.queue_class, run_options,
                                    supervisord=args.target == "supervisor")  # fmt: skip
    deployment = deploy.Deployment(
        name=args.name or "queuekit-" + re.sub(r"[^a-z0-9_-]+", "-", class_name.lower()),
        what=args.queue_class,
        command=command,
        processes=args.processes or 1,
        directory=os.path.abspath(args.directory),
        shutdown_timeout=args.shutdown_timeout or deploy.DEFAULT_SHUTDOWN_TIMEOUT,
        log_dir=args.log_dir,
        url=args.url,
        user=args.user,
    )
    render = deploy.supervisor_program if args.target == "supervisor" else deploy.systemd_unit
    print(render(deployment), end="")
    return 0


def cmd_failed(args: argparse.Namespace) -> int:
    """With ``--url`` or ``--queue``: that broker's job store. Without: the store of every
    broker the configuration names (the default and each ``[queues]`` route), once each."""
    url = resolve_url(args.url, queue=args.queue) if args.url or args.queue else None
    with connect(url) as conn:
        stores: dict[str, Connection] = {}
        for each in conn.connections():
            stores.setdefault(each.jobs.url.render(reveal=True), each)
        return _FAILED_ACTIONS[args.action](conn, list(stores.values()), args)


def _failed_list(conn: Connection, stores: list[Connection], args: argparse.Namespace) -> int:
    count = 0
    for store in stores:
        for entry in store.failed.list(args.queue):
            when = datetime.fromtimestamp(entry.failed_at).isoformat(timespec="seconds")
            print(f"{entry.id}\t{when}\t{entry.queue}\t{entry.message_id or '-'}\t{entry.reason}")
            count += 1
    print(f"{count} failed message(s)", file=sys.stderr)
    return 0


def _find_failed(
    stores: list[Connection], args: argparse.Namespace
) -> tuple[Connection, FailedMessage]:
    """The one failed entry ``args.id`` names, and the connection whose store holds it."""
    failed_id = _failed_id(args)
    found = [(s, e) for s in stores if (e := s.failed.get(failed_id)) is not None]
    if not found:
        raise UsageError(f"no failed message {args.id}")
    if len(found) > 1:
        where = ", ".join(f"{e.queue!r} on {s.url.redacted()}" for s, e in found)
        raise UsageError(f"failed id {args.id} is in more than one job store ({where}); "
                         "name its queue with --queue")  # fmt: skip
    return found[0]


def _failed_show(conn: Connection, stores: list[Connection], args: argparse.Namespace) -> int:
    _, entry = _find_failed(stores, args)
    print(f"id: {entry.id}\nqueue: {entry.queue}\nmessage: {entry.message_id}\n"
          f"reason: {entry.reason}\nattempts: {entry.attempts}\n"
          f"body: {entry.body.decode('utf-8', 'backslashreplace')}")  # fmt: skip
    if entry.traceback:
        print(entry.traceback, end="")
    return 0


def _failed_retry(conn: Connection, stores: list[Connection], args: argparse.Namespace) -> int:
    """Each entry goes back through the broker its queue is routed to (see
    :func:`~queuekit.client.redrive.retry_failed`), a batch per ``send_many``."""
    if args.id == "all":
        entries = [(s, e) for s in stores for e in s.failed.list(args.queue)]
    else:  # an unknown id says so, as `failed show` does, not "0 message(s)"
        entries = [_find_failed(stores, args)]
    retried = 0
    shown = progress("failed retry", len(entries)) if args.id == "all" else nullcontext(None)
    try:
        with shown as advance:  # its last line is printed as it closes: before the summary
            for store in dict.fromkeys(s for s, _ in entries):
                mine = [e for s, e in entries if s is store]
                for count in retry_failed(conn, store, mine):
                    retried += count
                    if advance is not None:
                        advance(count)
    finally:  # exact when a batch fails: its messages stay in the failed store
        print(f"{retried} message(s) back on their queue", file=sys.stderr)
    return 0 if retried == len(entries) else 1


def _failed_purge(conn: Connection, stores: list[Connection], args: argparse.Namespace) -> int:
    removed = sum(store.failed.purge(args.queue) for store in stores)
    print(f"{removed} failed message(s) removed", file=sys.stderr)
    return 0


def _failed_id(args: argparse.Namespace) -> int:
    if args.id is None or not str(args.id).isdigit():
        raise UsageError(
            f"worker failed {args.action} needs the numeric id from 'worker failed list'"
        )
    return int(args.id)


_FAILED_ACTIONS: dict[str, Callable[[Connection, list[Connection], argparse.Namespace], int]] = {
    "list": _failed_list,
    "show": _failed_show,
    "retry": _failed_retry,
    "purge": _failed_purge,
}


def cmd_clear_finished(args: argparse.Namespace) -> int:
    try:
        older_than = parse_duration(args.older_than)
    except ValueError as exc:
        raise UsageError(f"--older-than: {exc}") from None
    with connect(resolve_url(args.url, queue=args.queue), jobstore=args.jobstore) as conn:
        removed = conn.jobs.clear_finished(older_than, queue=args.queue)
    print(f"{removed} finished job record(s) removed", file=sys.stderr)
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    with connect(resolve_url(args.url), jobstore=args.jobstore) as conn:
        record = conn.job(args.id)
    if record is None:
        raise UsageError(f"no job record {args.id}")
    when = {
        k: datetime.fromtimestamp(v).isoformat(timespec="milliseconds") if v else "-"
        for k, v in (("created", record.created_at), ("started", record.started_at),
                     ("finished", record.finished_at))
    }  # fmt: skip
    print(f"id: {record.id}\nqueue: {record.queue}\nname: {record.name or '-'}\n"
          f"state: {record.state}\nattempts: {record.attempts}\n"
          f"created: {when['created']}\nstarted: {when['started']}\n"
          f"finished: {when['finished']}\nworker pid: {record.worker_pid or '-'}\n"
          f"peak memory: {record.peak_memory or '-'}\n"
          f"result: {json.dumps(record.result)}\nerror: {record.error or '-'}\n"
          f"key: {record.key or '-'}\npayload: {record.payload or '-'}")  # fmt: skip
    if record.traceback:
        print(record.traceback, end="")
    return 0


# -- the parser ----------------------------------------------------------------------------


def _add_run_options(run: argparse.ArgumentParser) -> None:
    """The options of ``worker run``, which ``worker deploy`` takes too and puts in the
    command it writes."""
    run.add_argument("queue_class", metavar="TARGET",
                     help="module.Class or module:Class; module (its @job functions: with "
                     "several queues, pick one with --queue); module.function (the @job "
                     "functions of its module on its queue)")  # fmt: skip
    run.add_argument("--url", help="broker URL (default: configured, see above)")
    run.add_argument("--queue", help="queue name (default: the class's `queue`); for a "
                     "module, which of its queues to serve")  # fmt: skip
    run.add_argument("--prefetch", type=int, default=16,
                     help="messages buffered ahead (at least the concurrency)")  # fmt: skip
    run.add_argument("-c", "--concurrency", type=_positive, metavar="N",
                     help="messages in flight at once: N threads, or N tasks for an "
                     "`async def work` (default: the class's, else 1)")  # fmt: skip
    run.add_argument("--shutdown-timeout", type=float, metavar="S",
                     help="on SIGTERM, let work in flight finish for S seconds, then hand "
                     "the rest back to the broker and exit 1 (default: wait)")  # fmt: skip
    run.add_argument("--max-messages", type=int, metavar="N", help="exit after N messages")
    run.add_argument("--max-seconds", type=float, metavar="S", help="exit after S seconds")
    run.add_argument("--max-memory", type=parse_size, metavar="SIZE",
                     help="exit once resident memory reaches SIZE (e.g. 512M)")  # fmt: skip
    run.add_argument("--limit-exit-code", type=int, default=0, metavar="CODE",
                     help="exit status when a --max-* limit ends the run (default 0)")  # fmt: skip
    run.add_argument("-p", "--priorities", metavar="RANGE", type=_priority_range,
                     help="take only these priorities: 10, 20-40, 25- or -20")  # fmt: skip
    run.add_argument("--workers-limit", type=_workers_limit, metavar="N",
                     help="start only if fewer than N workers of the queue are alive on the"
                          " hosts sharing the job store (default: the class's workers_limit;"
                          f" 0: none); over it, exit with status {OVER_LIMIT_EXIT}")  # fmt: skip
    run.add_argument("--outbox", metavar="URL",
                     help="relay this queue's committed rows of the outbox in this application "
                     "database (default: $QUEUEKIT_OUTBOX)")  # fmt: skip
    run.add_argument("--wait-for-slot", action="store_true",
                     help="over the workers limit, wait for a slot instead of exiting")  # fmt: skip
    run.add_argument("--log-format", choices=["text", "json"],
                     help="json: one JSON object per log line, with a message event's id, "
                     "queue, handler, attempt, duration, outcome and error "
                     "(default: $QUEUEKIT_LOG_FORMAT, else text)")  # fmt: skip
    run.add_argument("--metrics-port", type=int, metavar="PORT",
                     help="serve Prometheus metrics on http://0.0.0.0:PORT/metrics "
                     "(needs queuekit[metrics]); with --processes the supervisor serves the "
                     "sum over its workers")  # fmt: skip
    run.add_argument("--processes", type=_positive, metavar="P",
                     help="a supervisor and P worker processes: it restarts one that dies, "
                          "replaces one that reaches a --max-* limit (each child's), passes "
                          "SIGTERM/SIGINT on and waits")  # fmt: skip


def _add_deploy_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    deploy_parser = sub.add_parser(
        "deploy", allow_abbrev=False,
        help="print a supervisord program section or a systemd unit that runs a worker",
        description="Print a config that runs `worker run CLASS [options]`; every `worker run` "
                    "option goes into its command line, except --url, which goes into its "
                    "environment as QUEUEKIT_URL. supervisord runs --processes as numprocs; "
                    "systemd runs the built-in supervisor (worker run --processes). The "
                    "worker gets --shutdown-timeout S (default "
                    f"{deploy.DEFAULT_SHUTDOWN_TIMEOUT:g}) and the stop wait before SIGKILL "
                    f"is S + {deploy.STOP_MARGIN:g} seconds.",
    )  # fmt: skip
    deploy_parser.add_argument("target", choices=["supervisor", "systemd"])
    _add_run_options(deploy_parser)
    deploy_parser.add_argument("--name", help="program / unit name (default: queuekit-CLASS)")
    deploy_parser.add_argument("--directory", default=".",
                               help="working directory (default: this one)")  # fmt: skip
    deploy_parser.add_argument("--log-dir", default="/var/log/queuekit",
                               help="supervisord: the log directory (%(default)s)")  # fmt: skip
    deploy_parser.add_argument("--user", help="the user the workers run as")
    deploy_parser.set_defaults(func=cmd_deploy)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worker",
        description="queuekit: run background-job workers and talk to queues on any broker.",
        epilog=(
            "The broker comes from --url, else $QUEUEKIT_URL, else queuekit.toml, else "
            "~/.local/state/queuekit/queuekit.db (an embedded queue, no server needed); "
            "the job store from $QUEUEKIT_JOBSTORE, else a per-broker file beside it. "
            "Example: worker run myproject.queues:EmailQueue --max-messages 100"
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(*_VERBOSE, action="store_true", help=_VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run", help="process a queue with an AbstractQueue subclass or a module's @job functions",
        allow_abbrev=False,
        epilog=_EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    _add_run_options(run)
    run.add_argument("--reload", action="store_true",
                     help="development only: restart the workers (after the messages in hand) "
                          "when a .py file of the class's package changes")  # fmt: skip
    run.set_defaults(func=cmd_run)

    _add_deploy_parser(sub)

    failed = sub.add_parser("failed", help="list, show, retry or purge dead letters")
    failed.add_argument("action", choices=sorted(_FAILED_ACTIONS))
    failed.add_argument("id", nargs="?", help="failed id (show, retry) or 'all' (retry)")
    failed.add_argument("--queue", help="only this queue (default: every queue of every "
                        "broker configured, routes included)")  # fmt: skip
    failed.add_argument("--url")
    failed.set_defaults(func=cmd_failed)

    clear = sub.add_parser("clear-finished", help="delete done and failed job records")
    clear.add_argument("--older-than", default="14d", metavar="DURATION",
                       help="only those finished longer ago (default 14d; 0: all)")  # fmt: skip
    clear.add_argument("--queue", help="only this queue")
    clear.add_argument("--url")
    clear.add_argument("--jobstore", help="job store URL (default: configured)")
    clear.set_defaults(func=cmd_clear_finished)

    for module in _COMMANDS:
        module.register(sub)

    job = sub.add_parser("job", help="show the job record of a message id")
    job.add_argument("id", metavar="ID")
    job.add_argument("--url")
    job.add_argument("--jobstore", help="job store URL (default: configured)")
    job.set_defaults(func=cmd_job)

    for command in sub.choices.values():  # SUPPRESS: absent here keeps the value given before
        command.add_argument(*_VERBOSE, action="store_true", default=argparse.SUPPRESS,
                             help=_VERBOSE_HELP)  # fmt: skip
    for name, (_, _, summary) in _DELEGATED.items():
        sub.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in args_list if not a.startswith("-")), None)
    if first in _DELEGATED:
        module, function, _ = _DELEGATED[first]
        rest = args_list[args_list.index(first) + 1 :]
        if any(a in _VERBOSE for a in args_list):
            # Otherwise left unconfigured: the conformance table keeps its own output clean.
            _configure_logging(verbose=True)
            rest = [a for a in rest if a not in _VERBOSE]
        delegate: Callable[[list[str]], int] = getattr(importlib.import_module(module), function)
        return _guarded(lambda: delegate(rest))
    args = build_parser().parse_args(args_list)
    args.argv = args_list  # --processes and deploy pass it on to the workers they start
    log_format = getattr(args, "log_format", None) or os.environ.get("QUEUEKIT_LOG_FORMAT")
    if log_format not in (None, "", "text", "json"):
        print(f"worker: QUEUEKIT_LOG_FORMAT must be text or json, not {log_format!r}",
              file=sys.stderr)  # fmt: skip
        return 2
    _configure_logging(verbose=args.verbose, json_lines=log_format == "json")
    return _guarded(lambda: int(args.func(args)))


def _configure_logging(*, verbose: bool, json_lines: bool = False) -> None:
    """Warnings, and a worker's exit on a limit, always; with ``-v`` every message event.
    ``json_lines``: one JSON object per record, with a message event's fields."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if json_lines:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JSONFormatter())


#: A reader closed our stdout early (``worker status --json | head -1``): the status a shell
#: gives a process that SIGPIPE ended (128 + 13), which is what a C tool would exit with.
BROKEN_PIPE_EXIT = 141


def _guarded(call: Callable[[], int]) -> int:
    """Expected failures become one line on stderr, never a traceback or a leaked secret."""
    try:
        code = call()
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit flush
        return code
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE_EXIT
    except UsageError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    except QueuekitError as exc:
        print(f"worker: {redact(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _silence_stdout() -> None:
    """Point stdout at devnull, so the interpreter's last flush of what is still buffered
    for the closed pipe raises no second BrokenPipeError ("Exception ignored ...")."""
    try:
        fileno = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # stdout replaced by a file-less stream
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fileno)
    os.close(devnull)
