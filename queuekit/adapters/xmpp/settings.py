"""The ``xmpp://`` URL and the item payload format.

URL::

    xmpp://USER:PASSWORD@HOST[:PORT]/?domain=D&pubsub=SERVICE&tls=on|off&allow_plaintext=1

``USER`` is a local part (the JID is ``USER@domain``) or a whole bare JID with ``@`` written as
``%40``. ``HOST:PORT`` is where to connect (default port 5222); ``domain`` defaults to HOST.
TLS (STARTTLS) is required unless ``tls=off``, checked with ``ca=`` (and ``verify=``,
:mod:`queuekit.spi.tls`) against the XMPP domain; authenticating on an unencrypted stream also
needs ``tls=off`` and ``allow_plaintext=1``, so a plain stream is never used by accident. See
docs/xmpp.md for every option.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree as ET

from ...spi.errors import ConfigurationError, MalformedMessage
from ...spi.tls import TLSSettings
from ...spi.urls import TransportURL

NS = "urn:queuekit:xmpp:0"
_M, _H, _B = f"{{{NS}}}m", f"{{{NS}}}h", f"{{{NS}}}b"
# Characters that survive an XML text node unchanged: no controls, and no CR (XML parsers
# normalise CR/CRLF to LF), no lone surrogates.
_XML_UNSAFE = re.compile("[^\t\n\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class XMPPSettings:
    jid: str
    password: str
    host: str
    port: int
    pubsub: str
    tls: TLSSettings | None  # None: tls=off
    allow_plaintext: bool
    prefix: str
    resource: str
    timeout: float
    inflight: int
    max_items: str
    persist_topics: bool
    fanout_buffer: int
    max_message_size: int

    @classmethod
    def from_url(cls, url: TransportURL) -> XMPPSettings:
        if not url.username or url.password is None:
            raise ConfigurationError(f"{url.redacted()}: an xmpp:// URL needs user:password@")
        host = url.host
        domain = url.option("domain") or host.name
        jid = url.username if "@" in url.username else f"{url.username}@{domain}"
        domain = jid.partition("@")[2]
        tls = url.flag("tls", True)
        allow_plaintext = url.flag("allow_plaintext", False)
        if not tls and not allow_plaintext:
            raise ConfigurationError(
                f"{url.redacted()}: tls=off would send credentials over an unencrypted "
                "stream; add allow_plaintext=1 to accept that (loopback/test servers only)"
            )
        max_items = url.option("max_items", "max") or "max"
        if max_items != "max" and not max_items.isdigit():
            raise ConfigurationError(f"{url.redacted()}: max_items must be a number or 'max'")
        return cls(
            jid=jid,
            password=url.password,
            host=host.name,
            port=host.port or 5222,
            pubsub=url.option("pubsub") or f"pubsub.{domain}",
            tls=TLSSettings.from_url(url) if tls else None,
            allow_plaintext=allow_plaintext,
            prefix=(url.option("prefix", "queuekit") or "").strip("/"),
            resource=url.option("resource") or f"queuekit-{uuid.uuid4().hex[:12]}",
            timeout=url.number("timeout", 30.0),
            inflight=url.integer("inflight", 256),
            max_items=max_items,
            persist_topics=url.flag("persist_topics", False),
            fanout_buffer=url.integer("fanout_buffer", 10000),
            max_message_size=url.integer("max_message_size", 150_000),
        )

    def queue_node(self, queue: str) -> str:
        return f"{self.prefix}/queue/{queue}" if self.prefix else f"queue/{queue}"

    def journal_node(self, queue: str) -> str:
        """Where consumers record which items of ``queue`` they took (see docs/xmpp.md)."""
        return f"{self.prefix}/taken/{queue}" if self.prefix else f"taken/{queue}"

    def scratch_node(self) -> str:
        """A node of its own for asking the server something (``Nodes._find_cap``)."""
        name = f"probe/{uuid.uuid4().hex}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def topic_node(self, topic: str) -> str:
        return f"{self.prefix}/topic/{topic}" if self.prefix else topic


def encode_payload(body: bytes, headers: Any) -> ET.Element:
    """``<m xmlns=NS><h n="k">v</h>...<b [enc="base64"]>body</b></m>``.

    Text bodies (queuekit's JSON envelopes) travel as they are; anything an XML text node
    would alter goes as base64, flagged, so bytes round-trip exactly.
    """
    root = ET.Element(_M)
    for key, value in headers.items():
        header = ET.SubElement(root, _H, n=str(key))
        header.text = str(value)
    node = ET.SubElement(root, _B)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or _XML_UNSAFE.search(text):
        node.set("enc", "base64")
        node.text = base64.b64encode(body).decode("ascii")
    else:
        node.text = text
    return root


def decode_payload(payload: ET.Element | None) -> tuple[bytes, dict[str, str]]:
    """The inverse of :func:`encode_payload`; raises :class:`MalformedMessage`."""
    if payload is None or payload.tag != _M:
        tag = None if payload is None else payload.tag
        raise MalformedMessage(f"pub/sub item without a queuekit payload (got {tag})")
    headers = {h.get("n", ""): h.text or "" for h in payload.iterfind(_H)}
    node = payload.find(_B)
    text = "" if node is None else node.text or ""
    if node is not None and node.get("enc") == "base64":
        try:
            return base64.b64decode(text, validate=True), headers
        except (binascii.Error, ValueError) as exc:
            raise MalformedMessage(f"bad base64 body: {exc}", text.encode()) from None
    return text.encode("utf-8"), headers
