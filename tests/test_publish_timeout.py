"""The publish timeout (``?publish_timeout=``): with its broker down, a publish fails within
the timeout with ``ConnectionLost`` naming the broker (redacted) and the timeout, instead of
hanging for a minute (a web request publishing must fail fast).

"Down" is a TCP forwarder this test owns and stops (tests/proxy.py): the client sees its
connection reset and the port refused, as when a broker dies. The shared brokers keep
running.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from queuekit import ConnectionLost, connect
from queuekit.spi.errors import ConfigurationError
from queuekit.spi.timeouts import DEFAULT_PUBLISH_TIMEOUT, publish_timeout
from queuekit.spi.urls import TransportURL
from tests.proxy import Proxy
from tests.support import require_broker

XMPP = "xmpp://queuekit:queuekit@127.0.0.1:{port}/?domain=localhost&pubsub=pubsub.localhost&tls=off&allow_plaintext=1"

#: (scripts/brokers name, port, URL with {port} for the forwarder's)
SERVERS = [
    ("rabbitmq", 5672, "amqp://guest:guest@127.0.0.1:{port}/"),
    ("rabbitmq-stomp", 61613, "stomp://guest:guest@127.0.0.1:{port}"),
    ("activemq", 61623, "stomp://guest:guest@127.0.0.1:{port}"),
    ("gearman", 4731, "gearman://127.0.0.1:{port}"),
    ("prosody", 5222, XMPP),
    ("ejabberd", 5322, XMPP),
]


@pytest.fixture(params=SERVERS, ids=lambda s: s[0])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[Proxy, str]]:
    name, port, url = request.param
    require_broker(name, "127.0.0.1", port)
    proxy = Proxy(("127.0.0.1", port))
    yield proxy, url.format(port=proxy.port)
    proxy.stop()


def with_option(url: str, option: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{option}"


def test_a_publish_to_a_broker_that_went_down_fails_within_the_timeout(
    server: tuple[Proxy, str],
) -> None:
    proxy, url = server
    queue = f"publish-timeout-{uuid.uuid4().hex[:8]}"
    # Given a connection that published while its broker was up
    with connect(with_option(url, "publish_timeout=1")) as conn:
        try:
            conn.queue(queue).publish({"n": 1})
            # When the broker goes down
            proxy.stop()
            started = time.monotonic()
            with pytest.raises(ConnectionLost) as caught:
                conn.queue(queue).publish({"n": 2})
            took = time.monotonic() - started
        finally:
            with connect(url.replace(f":{proxy.port}", f":{proxy.target[1]}")) as direct:
                direct.transport.delete(queue)
    # Then the publish gave up after about the timeout, saying where and how long
    assert 0.9 <= took < 3.0, took
    message = str(caught.value)
    assert "publish timeout of 1 s" in message and str(proxy.port) in message, message
    assert ":queuekit@" not in message and ":guest@" not in message, message


def test_the_publish_timeout_is_a_url_option_with_a_default_for_web_requests() -> None:
    assert publish_timeout(TransportURL.parse("amqp://h/")) == DEFAULT_PUBLISH_TIMEOUT == 5.0
    assert publish_timeout(TransportURL.parse("stomp://h?publish_timeout=0.5")) == 0.5
    with pytest.raises(ConfigurationError, match="publish_timeout"):
        publish_timeout(TransportURL.parse("gearman://h?publish_timeout=soon"))


def test_amqp_gives_up_on_a_closed_port_within_the_timeout() -> None:
    """Nothing listening at all (the broker was down before the first publish)."""
    with connect("amqp://guest:guest@127.0.0.1:5999/?publish_timeout=1") as conn:
        started = time.monotonic()
        with pytest.raises(
            ConnectionLost, match=r"127\.0\.0\.1:5999\?publish_timeout=1: publish gave up"
        ):
            conn.queue("never").publish({"n": 1})
        assert time.monotonic() - started < 3.0
