"""``worker relay --db URL``: send every queue's committed outbox rows to its broker.

Workers started with ``--outbox URL`` relay their own queue's rows; this command relays
every queue's, for queues whose workers do not (or run elsewhere). Each queue goes to the
broker it is routed to (``--url``, ``$QUEUEKIT_URL``, queuekit.toml), as for any publish.
Several relays may run at once: a per-queue lease in the outbox database lets one send a
queue at a time (:mod:`queuekit.features.outbox`).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from contextlib import ExitStack

from ..client.config import resolve_url
from ..client.connection import Connection, connect
from ..features.broker import Broker
from ..features.outbox import BATCH, LEASE, holder_id, relay
from ..jobstore.outbox import open_outbox
from ..spi.errors import QueuekitError

log = logging.getLogger("queuekit")

_EVERY = 0.5  # seconds between looks at the outbox


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = sub.add_parser(
        "relay", help="send the application database's committed outbox rows to their queues"
    )
    command.add_argument("--db", required=True, metavar="URL",
                         help="the application database: sqlite:///app.db or an SQLAlchemy "
                              "URL (postgresql://..., mysql://...)")  # fmt: skip
    command.add_argument("--url", help="broker URL (default: each queue's configured one)")
    command.add_argument("--jobstore", help="job store URL (default: configured)")
    command.add_argument("--once", action="store_true",
                         help="relay what is committed now, then exit")  # fmt: skip
    command.add_argument("--batch", type=int, default=BATCH, metavar="N",
                         help="rows sent per batch (default %(default)s)")  # fmt: skip
    command.add_argument("--lease", type=float, default=LEASE, metavar="S",
                         help="seconds a dead relay's queue waits before another relay "
                              "sends it again (default %(default)g)")  # fmt: skip
    command.set_defaults(func=cmd_relay)


def cmd_relay(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    holder, sent = holder_id(), 0
    table = open_outbox(args.db)
    with ExitStack() as stack:
        stack.callback(table.close)
        connections: dict[str, Connection] = {}

        def broker_for(queue: str) -> Broker:
            url = resolve_url(args.url, queue=queue)
            if url not in connections:
                connections[url] = stack.enter_context(connect(url, jobstore=args.jobstore))
            return connections[url].broker

        while not stop.is_set():
            try:
                count = relay(table, broker_for, holder, batch=args.batch, lease=args.lease)
            except QueuekitError as exc:  # the broker or the database is away: rows wait
                if args.once:
                    raise
                log.warning("could not relay the outbox: %s", exc)
                count = 0
            sent += count
            if args.once and not count:
                break
            if not count:
                stop.wait(_EVERY)
    print(f"worker: relayed {sent} message(s)", file=sys.stderr)
    return 0
