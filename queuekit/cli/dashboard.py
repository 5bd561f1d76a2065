"""``worker dashboard``: the web dashboard (extra ``queuekit[dashboard]``), served by uvicorn.

Bound to 127.0.0.1 by default. Any other address needs a token (``--token`` or
``$QUEUEKIT_DASHBOARD_TOKEN``); without one the command refuses to start.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..client.config import load_config, resolve_url, routes
from ..client.connection import connect
from .common import UsageError

TOKEN_VARIABLE = "QUEUEKIT_DASHBOARD_TOKEN"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = sub.add_parser(
        "dashboard",
        help="serve the web dashboard: queues, failed messages, jobs, workers, pause",
        epilog=(
            f"Bound to 127.0.0.1 unless --host says otherwise; any other address needs a "
            f"token (--token, or better ${TOKEN_VARIABLE}, which no process list shows). "
            "Browsers sign in once with it; scripts send 'Authorization: Bearer TOKEN'."
        ),
    )
    command.add_argument("queues", nargs="*", metavar="QUEUE", help="queues to show as well")
    command.add_argument("--url")
    command.add_argument("--jobstore", help="job store URL (default: configured)")
    command.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    command.add_argument("--port", type=int, default=8787, help="port (default 8787)")
    command.add_argument("--token", help=f"required to use it (default ${TOKEN_VARIABLE})")
    command.add_argument("--read-only", action="store_true",
                         help="show everything, change nothing")  # fmt: skip
    command.set_defaults(func=cmd_dashboard)


def cmd_dashboard(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..dashboard import Dashboard, Guard, UnsafeBind, check_bind, create_app
    except ImportError as exc:
        raise UsageError(
            f"the dashboard needs an optional dependency ({exc.name}): install queuekit[dashboard]"
        ) from None
    token = args.token or os.environ.get(TOKEN_VARIABLE) or None
    try:
        check_bind(args.host, token)
    except UnsafeBind as exc:
        raise UsageError(str(exc)) from None
    first = args.queues[0] if args.queues else None
    url = resolve_url(args.url, queue=first)
    # On the configured default broker, connect as `worker failed` does: with its routes, so
    # a retried dead letter goes back through the broker its queue is routed to.
    configured_default = args.url is None and url == routes()[0]
    with connect(None if configured_default else url, jobstore=args.jobstore) as conn:
        configured = [q for q, routed in load_config().queues.items() if routed == url]
        model = Dashboard(conn, [*args.queues, *configured])
        app = create_app(model, Guard(token=token, read_only=args.read_only))
        where = f"[{args.host}]" if ":" in args.host else args.host
        mode = " (read-only)" if args.read_only else ""
        print(f"dashboard on http://{where}:{args.port}/ for {conn.url.redacted()}{mode}",
              file=sys.stderr, flush=True)  # fmt: skip
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
