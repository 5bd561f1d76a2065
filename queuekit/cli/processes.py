"""``worker processes``: the instances of process managers, their state and next timeout."""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime

from ..client.config import resolve_url
from ..client.connection import connect
from ..features.delays import parse_duration
from ..jobstore.base import ProcessInstance
from .common import UsageError, duration, table

#: How much of an instance's state the table shows (``--json`` shows all of it).
_STATE_WIDTH = 60


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    processes = sub.add_parser(
        "processes",
        help="list process-manager instances (state, version, next timeout) or purge ended ones",
    )
    processes.add_argument("action", choices=["list", "purge"])
    processes.add_argument("manager", nargs="?", metavar="MANAGER",
                           help="a process manager's name (default: every one)")  # fmt: skip
    processes.add_argument("--state", choices=["running", "completed"],
                           help="list: only running or only completed instances")  # fmt: skip
    processes.add_argument("--older-than", default="14d", metavar="DURATION",
                           help="purge: completed instances whose last step is older, "
                           "and ids of events handled before (default 14d; 0: all)")  # fmt: skip
    processes.add_argument("--limit", type=int, default=1000, help="list: at most this many")
    processes.add_argument("--json", action="store_true", help="list: one JSON document")
    processes.add_argument("--url")
    processes.add_argument("--jobstore", help="job store URL (default: configured)")
    processes.set_defaults(func=cmd_processes)


def cmd_processes(args: argparse.Namespace) -> int:
    with connect(resolve_url(args.url), jobstore=args.jobstore) as conn:
        if args.action == "purge":
            try:
                older_than = parse_duration(args.older_than)
            except ValueError as exc:
                raise UsageError(f"--older-than: {exc}") from None
            removed = conn.jobs.purge_processes(args.manager, older_than=older_than)
            print(f"{removed} completed instance(s) removed")
            return 0
        completed = None if args.state is None else args.state == "completed"
        found = conn.jobs.processes(args.manager, completed=completed, limit=args.limit)
    if args.json:
        print(json.dumps([summary(i) for i in found], indent=2))
    else:
        print(render(found, time.time()))
    return 0


def summary(instance: ProcessInstance) -> dict[str, object]:
    """An instance as ``--json`` shows it."""
    return {
        "manager": instance.manager,
        "key": instance.key,
        "state": "completed" if instance.completed else "running",
        "version": instance.version,
        "data": instance.state,
        "started_at": instance.started_at,
        "updated_at": instance.updated_at,
        "next_timeout": instance.next_timeout,
    }


def render(instances: list[ProcessInstance], now: float) -> str:
    """Instances as a table: the next timeout as a moment and how far off it is."""
    if not instances:
        return "no process instances"
    rows = [("manager", "key", "state", "version", "updated", "next timeout", "data")]
    for i in instances:
        data = json.dumps(i.state, separators=(",", ":"))
        if len(data) > _STATE_WIDTH:
            data = data[: _STATE_WIDTH - 3] + "..."
        rows.append((i.manager, i.key, "completed" if i.completed else "running", str(i.version),
                     f"{duration(now - i.updated_at)} ago", _moment(i.next_timeout, now),
                     data))  # fmt: skip
    return table(rows)


def _moment(when: float | None, now: float) -> str:
    if when is None:
        return "-"
    at = datetime.fromtimestamp(when).isoformat(timespec="seconds")
    return f"{at} (in {duration(when - now)})" if when > now else f"{at} (due)"
