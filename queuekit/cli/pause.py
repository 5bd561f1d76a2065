"""``worker pause QUEUE`` and ``worker resume QUEUE``: stop and restart taking from a queue.

The flag lives in the job store, so it reaches every worker of the queue on every host
sharing it within about a second, and outlives restarts; ``worker status`` shows it.
"""

from __future__ import annotations

import argparse
import sys

from ..client.config import resolve_url
from ..client.connection import connect


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, summary in (
        ("pause", "workers of a queue take no messages until it is resumed"),
        ("resume", "workers of a paused queue take messages again"),
    ):
        command = sub.add_parser(name, help=summary)
        command.add_argument("queue", metavar="QUEUE")
        command.add_argument("--url")
        command.add_argument("--jobstore", help="job store URL (default: configured)")
        command.set_defaults(func=cmd_pause if name == "pause" else cmd_resume)


def cmd_pause(args: argparse.Namespace) -> int:
    with connect(resolve_url(args.url, queue=args.queue), jobstore=args.jobstore) as conn:
        conn.jobs.pause_queue(args.queue)
    print(f"{args.queue}: paused (workers finish what they hold, then wait)", file=sys.stderr)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    with connect(resolve_url(args.url, queue=args.queue), jobstore=args.jobstore) as conn:
        resumed = conn.jobs.resume_queue(args.queue)
    print(f"{args.queue}: {'resumed' if resumed else 'was not paused'}", file=sys.stderr)
    return 0
