"""``worker schedule add|list|remove``: recurring jobs kept in the job store.

::

    worker schedule add health-check health '{"device": 7}' --cron "*/10 * * * *"
    worker schedule add digest mail '{"to": "team"}' --every "1 day" --start 2030-01-01T09:00
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime

from ..client.config import resolve_url
from ..client.connection import connect
from ..jobstore.base import Schedule
from .common import UsageError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    schedule = sub.add_parser("schedule", help="add, list or remove recurring jobs")
    schedule.add_argument("action", choices=["add", "list", "remove"])
    schedule.add_argument("name", nargs="?", metavar="NAME")
    schedule.add_argument("queue_arg", nargs="?", metavar="QUEUE",
                          help="the queue its runs go to (add; or --queue)")  # fmt: skip
    schedule.add_argument("payload_arg", nargs="?", metavar="JSON",
                          help="the payload of every run (add; or --payload)")  # fmt: skip
    schedule.add_argument("--queue", help=argparse.SUPPRESS)
    schedule.add_argument("--payload", metavar="JSON", help=argparse.SUPPRESS)
    when = schedule.add_mutually_exclusive_group()
    when.add_argument("--every", help="seconds, '1 day' or an ISO 8601 duration (add)")
    when.add_argument(
        "--cron",
        metavar="EXPR",
        help="a cron expression, e.g. '*/10 * * * *' (add; queuekit[cron])",
    )
    schedule.add_argument(
        "--timezone", metavar="ZONE", help="the IANA time zone of --cron slots (default UTC)"
    )
    schedule.add_argument("--start", help="the first run, an ISO 8601 moment (default: now)")
    schedule.add_argument("--job-name", default="", help="handler name stored in the metadata")
    schedule.add_argument("--priority", type=int, help="0-255, higher first")
    schedule.add_argument("--url")
    schedule.add_argument("--jobstore", help="job store URL (default: configured)")
    schedule.set_defaults(func=cmd_schedule)


def cmd_schedule(args: argparse.Namespace) -> int:
    queue = _one_of(args.queue_arg, args.queue, "QUEUE")
    payload = _one_of(args.payload_arg, args.payload, "JSON")
    with connect(resolve_url(args.url, queue=queue), jobstore=args.jobstore) as conn:
        if args.action == "list":
            for item in conn.schedules():
                when = datetime.fromtimestamp(item.next_run).isoformat(timespec="seconds")
                template = json.dumps(item.template["payload"])
                print(f"{item.name}\t{item.queue}\t{describe(item)}\tnext {when}\t{template}")
            return 0
        if not args.name:
            raise UsageError(f"schedule {args.action} needs a NAME")
        if args.action == "remove":
            if not conn.unschedule(args.name):
                raise UsageError(f"no schedule {args.name}")
            return 0
        if not (queue and payload is not None and (args.every or args.cron)):
            raise UsageError("schedule add needs NAME QUEUE JSON and --every or --cron")
        try:
            start = datetime.fromisoformat(args.start) if args.start else None
            item = conn.schedule(args.name, queue, json.loads(payload), args.every,
                                 cron=args.cron, timezone=args.timezone, start=start,
                                 job_name=args.job_name, priority=args.priority)  # fmt: skip
        except (TypeError, ValueError) as exc:  # bad JSON, --every, --cron, --start, ...
            raise UsageError(str(exc)) from None
    when = datetime.fromtimestamp(item.next_run).isoformat(timespec="seconds")
    print(f"{item.name}: {describe(item)} on {item.queue!r}, next {when}")
    return 0


def describe(item: Schedule) -> str:
    """``every 600s`` or ``cron '*/10 * * * *' UTC``."""
    if item.cron is None:
        return f"every {item.every:g}s"
    return f"cron {item.cron!r} {item.timezone or 'UTC'}"


def _one_of(positional: str | None, option: str | None, what: str) -> str | None:
    if positional is not None and option is not None:
        raise UsageError(f"give {what} once (as an argument or an option, not both)")
    return positional if positional is not None else option
