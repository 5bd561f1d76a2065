"""Child process of the conformance suite: ``python -m queuekit.conformance.child SPEC``.

``SPEC`` is JSON naming a role; the URL comes from ``QUEUEKIT_CONFORMANCE_URL``. Events go
to stdout as JSON lines. Closing stdin asks the child to finish; the suite kills it with
SIGKILL (a crash) or SIGTERM (a graceful stop) to test what the broker does then.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
from typing import Any

from ..spi.registry import open_transport, register_transport
from ..spi.urls import TransportURL
from .consumers import consume


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _load(reference: str) -> Any:
    module, _, name = reference.partition(":")
    target: Any = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    return target


def _stop_on_stdin_eof() -> threading.Event:
    stop = threading.Event()

    def wait() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait, daemon=True).start()
    return stop


def main(argv: list[str]) -> int:
    spec: dict[str, Any] = json.loads(argv[0])
    url = TransportURL.parse(os.environ["QUEUEKIT_CONFORMANCE_URL"])
    if spec.get("factory"):
        register_transport(url.scheme, _load(spec["factory"]))
    role = spec["role"]
    if role == "consume":
        transport = open_transport(url, prefetch=int(spec.get("prefetch", 16)))
        try:
            consume(
                transport,
                spec["queue"],
                emit,
                _stop_on_stdin_eof(),
                hold=bool(spec.get("hold")),
                work_seconds=float(spec.get("work", 0.0)),
            )
        finally:
            transport.close()
        return 0
    if role == "dispatch":
        from .public import dispatch_child

        return dispatch_child(url.render(reveal=True), spec, emit)
    emit({"event": "error", "detail": f"unknown role {role!r}"})
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception as exc:
        emit({"event": "error", "detail": f"{type(exc).__name__}: {exc}"})
        raise
