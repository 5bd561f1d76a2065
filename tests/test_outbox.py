"""The transactional outbox on SQLite (sqlite3 and SQLAlchemy), PostgreSQL and MariaDB:
rollback publishes nothing, commit publishes once, in order; a relay SIGKILLed between
sending a batch and deleting it sends it again, and the inbox drops the duplicates."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from queuekit import Connection, Message, connect, outbox
from queuekit.features.outbox import holder_id, relay
from queuekit.jobstore.outbox import TABLE, OutboxTable, open_outbox
from tests.databases import drop_tables, require_database
from tests.support import wait_until
from tests.workers.harness import start_worker


@dataclass
class AppDB:
    """The application's database: ``url`` for a relay, ``transaction()`` what the
    application publishes in (committed at the end of the block, rolled back on an
    exception), ``hold_deletes()`` keeps anyone from deleting outbox rows meanwhile."""

    url: str
    transaction: Callable[[], contextlib.AbstractContextManager[Any]]
    hold_deletes: Callable[[], contextlib.AbstractContextManager[None]]
    close: Callable[[], None] = lambda: None


def _sqlite3_db(path: Path) -> AppDB:
    @contextlib.contextmanager
    def transaction() -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(path)
        try:
            with db:  # commits, or rolls back on an exception
                db.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY)")
                db.execute("INSERT INTO orders DEFAULT VALUES")
                yield db
        finally:
            db.close()

    return AppDB(f"sqlite:///{path}", transaction, lambda: _sqlite_write_lock(path))


@contextlib.contextmanager
def _sqlite_write_lock(path: Path) -> Iterator[None]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


def _sqlalchemy_db(url: str, relay_url: str) -> AppDB:
    import sqlalchemy
    from sqlalchemy.orm import Session

    engine = sqlalchemy.create_engine(url)
    key = sqlalchemy.Column("id", sqlalchemy.Integer, primary_key=True)
    orders = sqlalchemy.Table("qkt_orders", sqlalchemy.MetaData(), key)
    orders.metadata.create_all(engine)

    @contextlib.contextmanager
    def transaction() -> Iterator[Session]:
        with Session(engine) as session, session.begin():
            session.execute(orders.insert())
            yield session

    @contextlib.contextmanager
    def hold_deletes() -> Iterator[None]:
        rows = sqlalchemy.Table(TABLE, sqlalchemy.MetaData(), autoload_with=engine)
        with engine.connect() as conn, conn.begin() as tx:
            conn.execute(sqlalchemy.select(rows.c.id).with_for_update(read=True)).all()
            yield
            tx.rollback()

    if engine.dialect.name == "sqlite":  # FOR SHARE means nothing there: the file's lock
        path = Path(engine.url.database or "")
        return AppDB(relay_url, transaction, lambda: _sqlite_write_lock(path), engine.dispose)
    return AppDB(relay_url, transaction, hold_deletes, engine.dispose)


@pytest.fixture(params=["sqlite3", "sqlalchemy-sqlite", "postgresql", "mariadb"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AppDB]:
    path = tmp_path / "app.db"
    if request.param == "sqlite3":
        yield _sqlite3_db(path)
        return
    if request.param == "sqlalchemy-sqlite":
        db = _sqlalchemy_db(f"sqlite:///{path}", f"sqlite:///{path}")
        yield db
        db.close()
        return
    base = require_database(request.param)
    db = _sqlalchemy_db(base, base)
    try:
        yield db
    finally:
        db.close()
        drop_tables(base, TABLE)
        drop_tables(base, "qkt_orders")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Connection]:
    with connect(f"sqlite:///{tmp_path}/broker.db", jobstore=f"sqlite:///{tmp_path}/jobs.db") as c:
        yield c


@pytest.fixture
def table(app: AppDB) -> Iterator[OutboxTable]:
    opened = open_outbox(app.url)
    yield opened
    opened.close()


def _drain(conn: Connection, queue: str, count: int) -> list[Message]:
    got: list[Message] = []
    conn.queue(queue).dispatch(got.append, max_messages=count, max_seconds=10,
                               handle_signals=False)  # fmt: skip
    return got


def test_a_rollback_publishes_nothing(
    app: AppDB, table: OutboxTable, broker: Connection, name: str
) -> None:
    class Refused(Exception):
        pass

    with pytest.raises(Refused), app.transaction() as tx, outbox(tx):
        broker.queue(name).publish({"order": 1})
        raise Refused
    assert relay(table, lambda q: broker.broker, holder_id()) == 0
    assert broker.queue(name).depth() == 0


def test_a_commit_publishes_once_in_order(
    app: AppDB, table: OutboxTable, broker: Connection, name: str
) -> None:
    with app.transaction() as tx, outbox(tx):
        ids = [broker.queue(name).publish({"n": n}) for n in range(3)]
        ids += broker.queue(name).publish_many([{"n": 3}, {"n": 4}])
    assert broker.queue(name).depth() == 0  # nothing is sent before a relay runs
    assert relay(table, lambda q: broker.broker, holder_id(), batch=2) == 5
    assert relay(table, lambda q: broker.broker, holder_id()) == 0
    got = _drain(broker, name, 5)
    assert [m.id for m in got] == ids
    assert [m.payload["n"] for m in got] == list(range(5))


def test_racing_relays_send_each_row_once_and_in_order(
    app: AppDB, table: OutboxTable, broker: Connection, name: str
) -> None:
    for start in range(0, 120, 40):
        with app.transaction() as tx, outbox(tx):
            broker.queue(name).publish_many([{"n": n} for n in range(start, start + 40)])
    tables = [open_outbox(app.url) for _ in range(3)]
    sent: list[int] = []
    barrier = threading.Barrier(len(tables))

    def run(own: OutboxTable) -> None:
        barrier.wait()
        while own.queues():
            sent.append(relay(own, lambda q: broker.broker, holder_id(), batch=7))

    threads = [threading.Thread(target=run, args=(t,)) for t in tables]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for own in tables:
        own.close()
    assert sum(sent) == 120
    assert [m.payload["n"] for m in _drain(broker, name, 120)] == list(range(120))


def test_a_worker_relays_its_queue(app: AppDB, broker: Connection, name: str) -> None:
    with app.transaction() as tx, outbox(tx):
        sent = broker.queue(name).publish({"order": 7})
    got: list[Message] = []
    broker.queue(name).dispatch(got.append, max_messages=1, max_seconds=10,
                                handle_signals=False, outbox=app.url)  # fmt: skip
    assert [m.id for m in got] == [sent]


def test_a_relay_killed_mid_batch_resends_and_the_inbox_drops_duplicates(
    app: AppDB, table: OutboxTable, broker: Connection, name: str, tmp_path: Path
) -> None:
    with app.transaction() as tx, outbox(tx):
        ids = broker.queue(name).publish_many([{"n": n} for n in range(20)])
    broker_url = broker.url.render(reveal=True)
    relay_args = ("relay", "--db", app.url, "--url", broker_url, "--jobstore",
                  f"sqlite:///{tmp_path}/relay-jobs.db", "--lease", "1")  # fmt: skip
    # Given a relay that has taken the queue's lease and read its rows, held up at the
    # broker (the broker's write lock is ours) ...
    with contextlib.ExitStack() as held:
        held.enter_context(_sqlite_write_lock(tmp_path / "broker.db"))
        first = start_worker(*relay_args, cwd=tmp_path)
        wait_until(lambda: _lease_holder(app.url, name), what="the relay's lease")
        # ... when it sends the batch but cannot delete the rows (we hold them) ...
        with app.hold_deletes():
            held.close()  # the broker lets the batch in
            wait_until(lambda: broker.queue(name).depth() == 20, what="the batch sent")
            first.send_signal(signal.SIGKILL)  # ... and dies before deleting them
            first.communicate(timeout=10)
    # Then the rows are still there, and the next relay (once the lease ends) sends them again.
    assert [row.message_id for row in table.pending(name, 100)] == ids
    second = start_worker(*relay_args, cwd=tmp_path)
    try:
        wait_until(lambda: not table.queues(), what="the outbox emptied by the second relay")
    finally:
        second.send_signal(signal.SIGTERM)
        _, errors = second.communicate(timeout=10)
    assert "relayed 20 message(s)" in errors, errors
    got = _drain(broker, name, 40)
    assert sorted(m.id for m in got) == sorted(ids * 2)
    inbox = broker.inbox("orders")
    done: list[str] = []
    for message in got:
        with inbox.once(message) as first_time:
            if first_time:
                done.append(message.id)
    assert done == ids  # each once, in order


def _lease_holder(url: str, queue: str) -> bool:
    """Whether a relay holds ``queue``'s lease (read without taking any lock)."""
    from queuekit.jobstore.outbox import LEASES

    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
            with contextlib.suppress(sqlite3.OperationalError):  # no table yet
                return bool(db.execute(f"SELECT holder FROM {LEASES} WHERE queue = ? AND holder"
                                       " != ''", (queue,)).fetchone())  # fmt: skip
            return False
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sqlalchemy.text(f"SELECT holder FROM {LEASES} WHERE queue = :q AND holder != ''"),
                {"q": queue},
            ).first()
        return row is not None
    except sqlalchemy.exc.ProgrammingError:
        return False
    finally:
        engine.dispose()


def test_outbox_refuses_what_it_cannot_write_to_and_calls_inside_it(
    broker: Connection, tmp_path: Path, name: str
) -> None:
    with pytest.raises(TypeError, match="SQLAlchemy Session or Connection, or an sqlite3"):
        outbox(object()).__enter__()
    with (
        contextlib.closing(sqlite3.connect(tmp_path / "app.db")) as db,
        outbox(db),
        pytest.raises(RuntimeError, match="inside outbox"),
    ):
        broker.queue(name).call({"n": 1}, timeout=0.1)


def test_the_orders_example_ships_committed_orders_once(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.workers.harness import child_env

    done = subprocess.run([sys.executable, "-m", "examples.orders.demo"], cwd=tmp_path,
                          env=child_env(), capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "order 'broken cup' rolled back" in done.stdout
    assert "broker holds 0 message(s)" in done.stdout
    shipped = (tmp_path / "var" / "shipped.jsonl").read_text(encoding="utf-8")
    assert '"item": "kettle"' in shipped and '"item": "teapot"' in shipped
    assert "broken cup" not in shipped


def test_a_row_that_is_no_envelope_goes_to_the_failed_store(
    broker: Connection, tmp_path: Path, name: str
) -> None:
    from queuekit.jobstore.outbox import outbox_writer
    from queuekit.spi.transport import Outgoing

    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        outbox_writer(db).add(name, "garbage-1", Outgoing(b"not json", {}), None)
        with outbox(db):
            kept = broker.queue(name).publish({"n": 1})
    table = open_outbox(f"sqlite:///{path}")
    try:
        assert relay(table, lambda q: broker.broker, holder_id()) == 2
        assert table.queues() == []
    finally:
        table.close()
    [failed] = broker.failed.list(name)
    assert (failed.message_id, failed.body) == ("garbage-1", b"not json")
    assert "body is not JSON" in failed.reason
    assert [m.id for m in _drain(broker, name, 1)] == [kept]


def test_a_delay_waits_after_the_relay(broker: Connection, tmp_path: Path, name: str) -> None:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as db, db, outbox(db):
        broker.queue(name).publish({"n": 1}, delay=3600)
    table = open_outbox(f"sqlite:///{path}")
    try:
        assert relay(table, lambda q: broker.broker, holder_id()) == 1
    finally:
        table.close()
    assert broker.queue(name).depth() == 0  # relayed, and still an hour away
    assert broker.transport.stats(name).delayed == 1
