"""The worker side: ``worker run examples.orders.queues:ShippingQueue --outbox URL``.

The worker relays the ``shipping`` rows of the application's outbox to the broker, then
ships each order once: a copy a relay sent twice is dropped by its message id (the inbox).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from queuekit import AbstractQueue, Message

SHIPPED = Path(os.environ.get("ORDERS_SHIPPED", "var/shipped.jsonl"))


class ShippingQueue(AbstractQueue):
    queue = "shipping"

    def work(self, message: Message) -> None:
        with self.connection.inbox("shipping").once(message) as first:
            if first:  # 'ship' it: a real app would call the carrier here
                SHIPPED.parent.mkdir(parents=True, exist_ok=True)
                with SHIPPED.open("a", encoding="utf-8") as shipped:
                    shipped.write(json.dumps({"id": message.id, **message.payload}) + "\n")
