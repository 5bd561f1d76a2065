"""The ``amqp://`` URL: hosts, vhost, credentials and the query options the adapter reads.

Unknown options are refused, so a typo never silently turns a guarantee off.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from ...spi.errors import ConfigurationError
from ...spi.priorities import BANDS_OPTION, PriorityBands
from ...spi.timeouts import PUBLISH_TIMEOUT_OPTION, publish_timeout
from ...spi.tls import TLS_OPTIONS, TLSSettings
from ...spi.urls import Host, TransportURL

#: RabbitMQ 3.x's default ``max_message_size`` (128 MiB; checked: 3.10.8 reports 134217728).
RABBITMQ_MAX_MESSAGE_SIZE = 128 * 1024 * 1024
#: ``x-max-priority`` of the queues the adapter declares: queuekit's 0-255 maps onto 0-10.
#: Measured here: 10 levels cost nothing against a plain queue; 255 levels cut consuming ~10x.
DEFAULT_MAX_PRIORITY = 10
#: ``?queue_type=``: RabbitMQ's classic queues (one node) or quorum queues (replicated by Raft
#: over a cluster's nodes; RabbitMQ 3.8+).
QUEUE_TYPES = ("classic", "quorum")
#: Options a quorum queue cannot honour, and why (refused rather than silently ignored).
_NOT_ON_QUORUM = {
    "max_priority": "RabbitMQ 3.x quorum queues have no x-max-priority (4.x: two fixed"
    " levels); priority bands (?priority_bands=) still give ranges",
    "delay": "the delay cascade's TTL queues are classic queues on one node, which a cluster"
    " can lose; on quorum queues the core's delayed store (the job store) keeps delays",
}

_OPTIONS = frozenset(
    {
        "queue_type",
        "confirm",
        "max_priority",
        BANDS_OPTION,
        "delay",
        "heartbeat",
        "connect_timeout",
        "reconnect_timeout",
        "inspect_timeout",
        PUBLISH_TIMEOUT_OPTION,
        "confirm_timeout",
        "max_message_size",
        "subscription_ttl",
        "exchange",
        *TLS_OPTIONS,
    }
)


@dataclass(frozen=True)
class Settings:
    hosts: tuple[Host, ...]
    userid: str
    password: str
    vhost: str
    tls: TLSSettings | None  # amqps:// only
    #: Work and subscription queues are quorum queues (``?queue_type=quorum``).
    quorum: bool
    confirm: bool
    max_priority: int
    #: One work queue per band (a single band when priorities are off): see docs/amqp.md.
    bands: PriorityBands
    delay: bool
    heartbeat: int
    connect_timeout: float
    reconnect_timeout: float
    #: How long an inspection (``depth``, so ``worker status`` and the dashboard) reconnects
    #: before it says the broker is unreachable: a few seconds, not ``reconnect_timeout``.
    inspect_timeout: float
    #: How long a publish reconnects before it gives up (:mod:`queuekit.spi.timeouts`).
    publish_timeout: float
    confirm_timeout: float
    max_message_size: int
    subscription_ttl: float
    exchange: str

    @classmethod
    def from_url(cls, url: TransportURL) -> Settings:
        unknown = sorted(set(url.query) - _OPTIONS)
        if unknown:
            raise ConfigurationError(
                f"{url.redacted()}: unknown option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(_OPTIONS))}"
            )
        secure = url.scheme == "amqps"
        default_port = 5671 if secure else 5672
        hosts = tuple(Host(h.name or "localhost", h.port or default_port) for h in url.hosts)
        quorum = _quorum(url)
        max_priority = url.integer("max_priority", DEFAULT_MAX_PRIORITY, allow_zero=True)
        max_priority = 0 if quorum else max_priority
        if not 0 <= max_priority <= 255:
            raise ConfigurationError(f"{url.redacted()}: max_priority must be 0-255")
        return cls(
            hosts=hosts or (Host("localhost", default_port),),
            userid=url.username if url.username is not None else "guest",
            password=url.password if url.password is not None else "guest",
            vhost=url.path or "/",
            tls=TLSSettings.from_url(url) if secure else None,
            quorum=quorum,
            confirm=url.flag("confirm", True),
            max_priority=max_priority,
            bands=PriorityBands.from_url(url) if max_priority or quorum else PriorityBands(()),
            delay=not quorum and url.flag("delay", True),
            heartbeat=url.integer("heartbeat", 0, allow_zero=True),
            connect_timeout=url.number("connect_timeout", 5.0),
            reconnect_timeout=url.number("reconnect_timeout", 60.0),
            inspect_timeout=url.number("inspect_timeout", 5.0),
            publish_timeout=publish_timeout(url),
            confirm_timeout=url.number("confirm_timeout", 30.0),
            max_message_size=url.integer("max_message_size", RABBITMQ_MAX_MESSAGE_SIZE),
            subscription_ttl=url.number("subscription_ttl", 3600.0),
            exchange=url.option("exchange") or "queuekit.topics",
        )

    def kombu_kwargs(self, host: Host) -> dict[str, Any]:
        return {
            "hostname": host.name,
            "port": host.port,
            "userid": self.userid,
            "password": self.password,
            "virtual_host": self.vhost,
            "ssl": _ssl_options(self.tls, host.name) if self.tls is not None else False,
            "connect_timeout": self.connect_timeout,
            "heartbeat": self.heartbeat,
            "transport": "pyamqp",
        }


def _quorum(url: TransportURL) -> bool:
    """Whether ``?queue_type=`` asks for quorum queues; refuses what they cannot honour."""
    queue_type = url.option("queue_type") or "classic"
    if queue_type not in QUEUE_TYPES:
        raise ConfigurationError(
            f"{url.redacted()}: queue_type={queue_type!r}; known: {', '.join(QUEUE_TYPES)}"
        )
    if queue_type != "quorum":
        return False
    for option, why in _NOT_ON_QUORUM.items():
        if url.option(option) not in (None, "0"):
            raise ConfigurationError(
                f"{url.redacted()}: {option}= does not apply to quorum queues: {why}"
            )
    return True


def _ssl_options(tls: TLSSettings, hostname: str) -> dict[str, Any]:
    """py-amqp's ssl options (it takes a dict, not a context): it builds a TLS client context
    from them, with the system's CAs when ``ca_certs`` is absent."""
    options: dict[str, Any] = {"cert_reqs": ssl.CERT_REQUIRED if tls.verify else ssl.CERT_NONE}
    if tls.ca:
        options["ca_certs"] = tls.ca
    if tls.cert:
        options["certfile"], options["keyfile"] = tls.cert, tls.key
    if tls.verify:  # a server name turns py-amqp's host name check on (CERT_NONE forbids it)
        options["server_hostname"] = hostname
    return options
