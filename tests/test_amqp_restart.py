"""amqp:// across a real RabbitMQ restart (``scripts/brokers restart rabbitmq``): the same
transport objects keep publishing and consuming, and delayed messages keep waiting."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from pathlib import Path

from queuekit.adapters.amqp import AMQPTransport
from queuekit.spi.transport import SendOptions
from queuekit.spi.urls import TransportURL
from tests.support import require_broker, wait_until

URL = "amqp://guest:guest@127.0.0.1:5672/"
ROOT = Path(__file__).resolve().parent.parent


def restart_broker() -> None:
    subprocess.run(["scripts/brokers", "restart", "rabbitmq"], cwd=ROOT, check=True)


def test_publishing_and_consuming_resume_on_the_same_transports() -> None:
    require_broker("rabbitmq", "127.0.0.1", 5672)
    queue = f"test-amqp-restart-{uuid.uuid4().hex}"
    # a batch producer that rides out the restart, not a web request that fails fast
    producer = AMQPTransport(TransportURL.parse(URL + "?publish_timeout=120"))
    consumer = AMQPTransport(TransportURL.parse(URL), prefetch=8)
    confirmed: list[bytes] = []
    received: set[bytes] = set()
    errors: list[BaseException] = []
    stop = threading.Event()

    def publish() -> None:
        try:
            for i in range(400):
                body = b"m%05d" % i
                producer.send(queue, body, {})  # no exception may escape: reconnects inside
                confirmed.append(body)
                if stop.wait(0.01):
                    return
        except BaseException as exc:
            errors.append(exc)

    def consume() -> None:
        try:
            while not stop.is_set():
                delivery = consumer.receive(queue, 0.2)
                if delivery is not None:
                    received.add(delivery.body)
                    consumer.ack(delivery)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish), threading.Thread(target=consume)]
    for thread in threads:
        thread.start()
    try:
        # Given traffic in both directions
        wait_until(lambda: len(received) >= 20 or errors, 20, "traffic before the restart")
        # When the broker restarts mid-stream
        restart_broker()
        # Then both sides carry on and every confirmed message arrives
        wait_until(lambda: len(confirmed) == 400 or errors, 120, "all 400 sends to return")
        wait_until(lambda: received >= set(confirmed) or errors, 60, "every confirmed message")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        assert not errors, errors
        producer.delete(queue)
        producer.close()
        consumer.close()
    assert not set(confirmed) - received


def test_a_delayed_message_survives_a_restart() -> None:
    require_broker("rabbitmq", "127.0.0.1", 5672)
    queue = f"test-amqp-restart-delay-{uuid.uuid4().hex}"
    transport = AMQPTransport(TransportURL.parse(URL))
    try:
        # Given a message due in 6 s, waiting in the delay cascade
        due = time.time() + 6
        transport.send(queue, b"later", {"k": "v"}, options=SendOptions(not_before=due))
        # When the broker restarts meanwhile
        restart_broker()
        # Then it still arrives, not before it is due
        delivery = transport.receive(queue, 60)
        assert delivery is not None and delivery.body == b"later"
        assert delivery.headers == {"k": "v"}
        assert time.time() >= due
        transport.ack(delivery)
    finally:
        transport.delete(queue)
        transport.close()
