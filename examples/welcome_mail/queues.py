"""The worker side: ``worker run examples.welcome_mail.queues:EmailQueue``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from queuekit import AbstractQueue, Message

OUTBOX = Path(os.environ.get("WELCOME_OUTBOX", "var/outbox.jsonl"))


class EmailQueue(AbstractQueue):
    queue = "email"

    def validate(self, message: Message) -> bool:
        payload = message.payload
        return isinstance(payload, dict) and "@" in str(payload.get("to", ""))

    def work(self, message: Message) -> None:
        """'Send' the mail: append it to the outbox file (a real app would call SMTP here)."""
        OUTBOX.parent.mkdir(parents=True, exist_ok=True)
        with OUTBOX.open("a", encoding="utf-8") as outbox:
            outbox.write(json.dumps({"id": message.id, **message.payload}) + "\n")
