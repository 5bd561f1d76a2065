"""``worker status``: every queue's counts and the workers alive, as a table or JSON."""

from __future__ import annotations

import argparse
import json

from ..client.config import load_config, resolve_url
from ..client.connection import connect
from ..features.status import Status, snapshot
from .common import duration, table


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser(
        "status",
        help="every queue's ready, delayed, in flight, failed and oldest age; workers alive",
        epilog=(
            "Queues: those named, those routed to this broker in queuekit.toml, and every "
            "queue the worker registry or the job store knows. 'unknown' (null in --json) is "
            "a count the broker cannot tell, never a zero. A worker silent for "
            "$QUEUEKIT_WORKER_TIMEOUT seconds (default 60) is left out as dead."
        ),
    )
    status.add_argument("queues", nargs="*", metavar="QUEUE", help="queues to show as well")
    status.add_argument("--url")
    status.add_argument("--jobstore", help="job store URL (default: configured)")
    status.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    status.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    first = args.queues[0] if args.queues else None
    url = resolve_url(args.url, queue=first)
    with connect(url, jobstore=args.jobstore) as conn:
        configured = [q for q, routed in load_config().queues.items() if routed == url]
        status = snapshot(conn.broker, [*args.queues, *configured])
    if args.json:
        print(json.dumps(status.as_json(), indent=2))
    else:
        print(render_status(status))
    return 0


def render_status(status: Status) -> str:
    """The snapshot as two aligned tables; ``unknown`` where the broker cannot count."""

    def count(value: int | None) -> str:
        return "unknown" if value is None else str(value)

    def age(seconds: float | None) -> str:
        return "unknown" if seconds is None else duration(seconds)

    queues = [("queue", "ready", "delayed", "in flight", "working", "failed", "oldest",
               "workers", "paused")]  # fmt: skip
    for q in status.queues:
        queues.append((q.name, count(q.ready), count(q.delayed), count(q.in_flight),
                       str(q.working), str(q.failed), age(q.latency), str(q.workers),
                       "paused" if q.paused else "-"))  # fmt: skip
    workers = [("host", "pid", "queue", "concurrency", "processed", "failed", "current", "rss",
                "seen")]  # fmt: skip
    for w in status.workers:
        workers.append((w.host, str(w.pid), w.queue, str(w.concurrency), str(w.processed),
                        count(w.failed), ",".join(w.current) or "-",
                        "-" if w.rss is None else f"{w.rss / 2**20:.0f}M",
                        f"{duration(status.taken_at - w.last_seen)} ago"))  # fmt: skip
    errors = [f"{q.name}: the broker could not be asked: {q.error}" for q in status.queues
              if q.error]  # fmt: skip
    return "\n".join([
        f"broker {status.broker}, job store {status.jobstore}", "",
        table(queues) if status.queues else "no queues known",
        "",
        f"{len(status.workers)} worker(s) alive (heard from within "
        f"{status.heartbeat_timeout:g}s)",
        *([table(workers)] if status.workers else []),
        *errors,
    ])  # fmt: skip
