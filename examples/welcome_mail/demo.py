"""The story end to end on the embedded SQLite default: ``scripts/demo``.

1. A ``UserService`` saves three users (one with a broken address); each save triggers
   ``user.saved`` and the bridge turns the event into a message on the ``email`` queue.
2. A worker process (``worker run ...``) sends the mails, then exits.
3. The outbox and the failed store are printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from queuekit import EventManager, bridge, connect

from .queues import OUTBOX
from .services import User, UserService

URL = os.environ.get("QUEUEKIT_URL", f"sqlite:///{Path('var/demo.db').resolve()}")


def welcome(event: object) -> dict[str, str]:
    params = event.params  # type: ignore[attr-defined]
    return {"to": params["email"], "subject": f"Welcome, {params['name']}!"}


def main() -> int:
    for leftover in (OUTBOX, *Path("var").glob("demo.db*")):
        leftover.unlink(missing_ok=True)
    with connect(URL) as conn:
        events = EventManager()
        bridge(events, "user.saved", conn.queue("email"), to_payload=welcome)
        users = UserService(events)
        for user in (User(1, "Ada", "ada@example.com"), User(2, "Linus", "linus@example.com"),
                     User(3, "Nobody", "not-an-address")):  # fmt: skip
            users.save(user)
        print(f"queued {conn.queue('email').depth()} welcome mails on {conn.url}")

    worker = [sys.executable, "-m", "queuekit", "run", "examples.welcome_mail.queues:EmailQueue",
              "--url", URL, "--max-messages", "3"]  # fmt: skip
    print("$ worker run examples.welcome_mail.queues:EmailQueue --url", URL, "--max-messages 3")
    subprocess.run(worker, check=True)

    print(f"\noutbox ({OUTBOX}):")
    print(OUTBOX.read_text(encoding="utf-8"), end="")
    with connect(URL) as conn:
        for failed in conn.failed.list("email"):
            print(f"failed store: message {failed.message_id}: {failed.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
