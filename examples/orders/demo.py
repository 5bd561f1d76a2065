"""Orders end to end on SQLite files: ``python -m examples.orders.demo``.

1. The application saves orders with SQLAlchemy; each publishes ``{"order": id}`` inside
   ``with outbox(session)``, in the same transaction. The third order's transaction rolls
   back: neither the order nor its message exists.
2. A cron schedule runs a health check every ten minutes (``worker schedule add ...``).
3. A worker process relays the committed messages (``--outbox``) and ships them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Column, Integer, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Session

from queuekit import connect, outbox

from .queues import SHIPPED

URL = os.environ.get("QUEUEKIT_URL", f"sqlite:///{Path('var/orders-broker.db').resolve()}")
APP_DB = "sqlite:///var/orders-app.db"


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id = Column(Integer, primary_key=True)
    item = Column(String(100), nullable=False)


def main() -> int:
    Path("var").mkdir(exist_ok=True)
    for leftover in (SHIPPED, *Path("var").glob("orders-*.db*")):
        leftover.unlink(missing_ok=True)
    engine = create_engine(APP_DB)
    Base.metadata.create_all(engine)
    with connect(URL) as conn:
        shipping = conn.queue("shipping")
        for item in ("kettle", "teapot", "broken cup"):
            try:
                with Session(engine) as session, session.begin(), outbox(session):
                    order = Order(item=item)
                    session.add(order)
                    session.flush()  # the order's id, in this transaction
                    shipping.publish({"order": order.id, "item": item})
                    if item == "broken cup":
                        raise ValueError("out of stock")  # rolls back the order and its message
            except ValueError as exc:
                print(f"order {item!r} rolled back: {exc}")
        conn.schedule("health-check", "health", {"device": 7}, cron="*/10 * * * *",
                      timezone="Europe/Paris")  # fmt: skip
        print(f"broker holds {shipping.depth()} message(s): nothing leaves before a relay")
    engine.dispose()

    worker = [sys.executable, "-m", "queuekit", "run", "examples.orders.queues:ShippingQueue",
              "--url", URL, "--outbox", APP_DB, "--max-messages", "2"]  # fmt: skip
    print("$ worker run examples.orders.queues:ShippingQueue --outbox", APP_DB,
          "--max-messages 2")  # fmt: skip
    subprocess.run(worker, check=True)
    print(f"\nshipped ({SHIPPED}):")
    print(SHIPPED.read_text(encoding="utf-8"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
