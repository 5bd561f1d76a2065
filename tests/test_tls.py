"""TLS against the real listeners scripts/brokers starts, with the throw-away CA it makes
($QUEUEKIT_VAR/tls): RabbitMQ's TLS node (AMQP 5671 and STOMP 61614, client certificates
required), ActiveMQ's stomp+ssl (61624; 61625 requires client certificates), and STARTTLS
on Prosody and ejabberd.

Given each listener, a client that trusts the CA works; one that trusts another CA, or
names a host the certificate does not, fails in one line and never talks in plain; a
broker that verifies clients takes our certificate and refuses a client without one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from queuekit.spi.errors import ConfigurationError, TransportError
from queuekit.spi.registry import open_transport
from queuekit.spi.tls import TLSSettings
from queuekit.spi.urls import TransportURL
from tests.proxy import Proxy
from tests.support import require_broker, wait_until

ROOT = Path(__file__).resolve().parent.parent
TLS = Path(os.environ.get("QUEUEKIT_VAR", ROOT / "var")) / "tls"
CA, OTHER_CA = TLS / "ca.crt", TLS / "other-ca.crt"
CLIENT = f"&cert={TLS / 'client.crt'}&key={TLS / 'client.key'}"
XMPP = "xmpp://queuekit:queuekit@{host}:{port}/?domain=localhost&pubsub=pubsub.localhost&ca={ca}"
#: A name that reaches 127.0.0.1 (the resolver reads it as 127.0.0.1) but that the server
#: certificate does not hold (it holds localhost, pubsub.localhost and 127.0.0.1).
OTHER_HOST = "127.1"
#: What a client says first in plain on each protocol: never seen on a TLS port.
PLAIN_OPENINGS = (b"AMQP", b"CONNECT", b"STOMP", b"guest", b"<auth")


@dataclass(frozen=True)
class Listener:
    broker: str  # its file in scripts/brokers.d
    port: int
    url: str  # with {host}, {port} and {ca} to fill in
    starttls: bool = False  # XMPP: a plain stream header and <starttls/> come first

    def at(self, host: str = "localhost", port: int | None = None, ca: Path = CA) -> str:
        return self.url.format(host=host, port=port or self.port, ca=ca)


LISTENERS = {
    "rabbitmq-amqps": Listener(
        "rabbitmq-tls", 5671, "amqps://guest:guest@{host}:{port}/?ca={ca}" + CLIENT
    ),
    "rabbitmq-stomp": Listener(
        "rabbitmq-tls", 61614, "stomp+ssl://guest:guest@{host}:{port}?ca={ca}" + CLIENT
    ),
    "activemq-stomp": Listener("activemq", 61624, "stomp+ssl://guest:guest@{host}:{port}?ca={ca}"),
    "activemq-stomp-clients": Listener(  # needClientAuth
        "activemq", 61625, "stomp+ssl://guest:guest@{host}:{port}?ca={ca}" + CLIENT
    ),
    "prosody": Listener("prosody", 5222, XMPP, starttls=True),
    "ejabberd": Listener("ejabberd", 5322, XMPP, starttls=True),
}


@pytest.fixture(params=sorted(LISTENERS))
def listener(request: pytest.FixtureRequest) -> Listener:
    found = LISTENERS[request.param]
    require_broker(found.broker, "127.0.0.1", found.port)
    assert CA.is_file(), f"no test CA in {TLS} (scripts/brokers up makes it)"
    return found


def round_trip(url: str) -> None:
    transport = open_transport(url)
    queue = f"tls-{uuid.uuid4().hex[:10]}"
    try:
        transport.send(queue, b"\x00over tls", {"h": "v"})
        delivery = transport.receive(queue, 10.0)
        assert delivery is not None and delivery.body == b"\x00over tls"
        transport.ack(delivery)
    finally:
        transport.delete(queue)
        transport.close()


def publish(url: str) -> None:
    """Open a transport and publish one message: AMQP connects on first use."""
    transport = open_transport(url)
    try:
        transport.send("tls-never", b"x", {})
    finally:
        transport.close()


def publish_with_cli(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "queuekit", "publish", "--url", url, "tls-never", "{}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_publish_and_consume_over_each_tls_listener(listener: Listener) -> None:
    round_trip(listener.at())


def test_a_wrong_ca_fails_in_one_line_and_nothing_goes_in_plain(listener: Listener) -> None:
    # Given a client that trusts another CA, through a proxy that records what it sends
    proxy = Proxy(("127.0.0.1", listener.port))
    try:
        # When it publishes with the CLI
        result = publish_with_cli(listener.at("127.0.0.1", proxy.port, OTHER_CA))
        # Then one line says which certificate was refused and against which CA
        assert result.returncode == 1, result
        assert "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("worker: TLS: the certificate of ")
        assert f"checked against ca={OTHER_CA}" in result.stderr
        # And every connection it made opened a TLS handshake: nothing was said in plain
        wait_until(lambda: proxy.sent and all(b"\x16\x03" in sent for sent in proxy.sent))
    finally:
        proxy.stop()
    for sent in proxy.sent:
        plain = bytes(sent[: sent.index(b"\x16\x03")])
        if listener.starttls:
            assert b"<starttls" in plain
        else:
            assert plain == b""
        assert not [opening for opening in PLAIN_OPENINGS if opening in sent]


@pytest.mark.parametrize(  # XMPP checks the JID's domain (next test), not the host
    "name", sorted(name for name, listener in LISTENERS.items() if not listener.starttls)
)
def test_a_wrong_host_name_fails_in_one_line(name: str) -> None:
    listener = LISTENERS[name]
    require_broker(listener.broker, "127.0.0.1", listener.port)
    with pytest.raises(ConfigurationError) as refused:
        publish(listener.at(OTHER_HOST))
    assert "\n" not in str(refused.value)
    assert f"Hostname mismatch, certificate is not valid for '{OTHER_HOST}'" in str(refused.value)


def test_an_xmpp_domain_the_certificate_does_not_name_fails_in_one_line() -> None:
    # Given Prosody's second virtual host, misnamed.localhost, which the certificate lacks
    listener = LISTENERS["prosody"]
    require_broker(listener.broker, "127.0.0.1", listener.port)
    url = listener.at("127.0.0.1").replace("domain=localhost", "domain=misnamed.localhost")
    # Then the client refuses the certificate before it logs in
    with pytest.raises(ConfigurationError) as refused:
        publish(url)
    assert "\n" not in str(refused.value)
    assert "certificate is not valid for 'misnamed.localhost'" in str(refused.value)


def test_verify_off_still_uses_tls_but_checks_no_certificate(listener: Listener) -> None:
    round_trip(listener.at(ca=OTHER_CA) + "&verify=0")


def test_the_ca_may_come_from_the_environment_and_the_url_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listener = LISTENERS["activemq-stomp"]
    require_broker(listener.broker, "127.0.0.1", listener.port)
    url = f"stomp+ssl://guest:guest@localhost:{listener.port}"
    monkeypatch.setenv("QUEUEKIT_TLS_CA", str(CA))
    round_trip(url)
    result = publish_with_cli(f"{url}?ca={OTHER_CA}")
    assert result.returncode == 1 and "checked against ca=" + str(OTHER_CA) in result.stderr


@pytest.mark.parametrize("name", sorted(n for n, found in LISTENERS.items() if CLIENT in found.url))
def test_a_broker_that_verifies_clients_takes_ours_and_refuses_a_client_without_one(
    name: str,
) -> None:
    listener = LISTENERS[name]
    require_broker(listener.broker, "127.0.0.1", listener.port)
    round_trip(listener.at())  # with cert= and key=
    without = listener.at().replace(CLIENT, "&connect_timeout=3")
    if name.endswith("amqps"):  # the server's alert reaches py-amqp: one clear line
        with pytest.raises(ConfigurationError, match="refused the handshake") as refused:
            publish(without)
        assert "tlsv13 alert certificate required; check a client certificate" in str(refused.value)
    else:  # stomp.py sees the connection close (or no CONNECTED): refused all the same
        with pytest.raises(
            TransportError, match=r"after the TLS handshake \(does it want a client certificate"
        ):
            publish(without)


# -- the options, without a broker ------------------------------------------------------------


def test_options_come_from_the_url_then_the_environment(tmp_path: Path) -> None:
    pem = tmp_path / "a.pem"
    pem.write_text("not read until a connection is made")
    env = {"QUEUEKIT_TLS_CA": str(pem), "QUEUEKIT_TLS_CERT": str(pem)}
    url = TransportURL.parse(f"amqps://h/?key={pem}&verify=0")
    assert TLSSettings.from_url(url, env) == TLSSettings(str(pem), str(pem), str(pem), False)
    assert TLSSettings.from_url(TransportURL.parse("amqps://h/"), {}) == TLSSettings()


@pytest.mark.parametrize(
    ("query", "env", "error"),
    [
        ("ca=/no/such.pem", {}, r"option ca=/no/such.pem is not a file"),
        ("", {"QUEUEKIT_TLS_CERT": "/no/c.pem"}, r"\$QUEUEKIT_TLS_CERT=/no/c.pem is not a file"),
        ("key={pem}", {}, r"key= needs cert="),
        ("verify=maybe", {}, r"verify='maybe' is not a boolean"),
    ],
)
def test_bad_options_are_refused_before_connecting(
    tmp_path: Path, query: str, env: dict[str, str], error: str
) -> None:
    pem = tmp_path / "a.pem"
    pem.write_text("x")
    url = TransportURL.parse("amqps://h/?" + query.format(pem=pem))
    with pytest.raises(ConfigurationError, match=error):
        TLSSettings.from_url(url, env)


def test_verify_off_makes_a_context_that_checks_nothing() -> None:
    context = TLSSettings(verify=False).context()
    assert (context.check_hostname, context.verify_mode) == (False, 0)
    assert TLSSettings().context().check_hostname
