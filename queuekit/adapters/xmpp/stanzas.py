"""The XEP-0060 vocabulary the session speaks, kept apart from what it does with it.

Namespaces, the data forms queuekit submits and reads (node configuration, publish-options),
turning ``<item>`` elements into :class:`Item`, and mapping an IQ error to queuekit's error
tree (which conditions are worth a reconnect). Nothing here holds state or does I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree as ET

from slixmpp.exceptions import IqError
from slixmpp.plugins import xep_0004

from ...spi.errors import ConnectionLost, MalformedMessage, TransportError
from .settings import decode_payload

_FORM: Any = xep_0004.Form  # slixmpp's data forms are untyped

PUBSUB = "http://jabber.org/protocol/pubsub"
EVENT = "{http://jabber.org/protocol/pubsub#event}"
NODE_CONFIG = "http://jabber.org/protocol/pubsub#node_config"
PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
_PUBSUB_ERRORS = "{http://jabber.org/protocol/pubsub#errors}"
_XDATA = "{jabber:x:data}"
_VALIDATE = "{http://jabber.org/protocol/xdata-validate}"


@dataclass(slots=True)
class Item:
    """One pub/sub item. ``taken`` counts the consumers that took it (from the queue's
    taken-journal, see ``TakenJournal.mark``), ``marked`` says this consumer is among them,
    ``requeued`` counts local ``nack(requeue=True)``."""

    id: str
    body: bytes
    headers: dict[str, str]
    taken: int = 0
    marked: bool = False
    requeued: int = 0


def parse_items(elements: Iterable[ET.Element]) -> Iterable[Item]:
    for element in elements:
        item_id = element.get("id", "")
        try:
            body, headers = decode_payload(element[0] if len(element) else None)
        except MalformedMessage as exc:
            # Not ours to interpret: hand the raw XML up so the core's failed store keeps it.
            raw = ET.tostring(element[0]) if len(element) else b""
            body, headers = raw or exc.body, {"x-queuekit-malformed": exc.reason}
        yield Item(item_id, body, headers)


def form(form_type: str, values: dict[str, Any]) -> Any:
    submitted = _FORM()
    submitted["type"] = "submit"
    submitted.add_field(var="FORM_TYPE", ftype="hidden", value=form_type)
    for var, value in values.items():
        submitted.add_field(var=var, value=value)
    return submitted


def publish_options(preconditions: dict[str, Any]) -> Any:
    """Publish-options: the server refuses the publish if the node's config differs."""
    return form(PUBLISH_OPTIONS, preconditions)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """What queuekit reads of a node's configuration form."""

    persist: bool
    max_items: str
    #: The server's bound on max_items when the form states it (XEP-0122 range), else None.
    range_max: int | None
    #: None when the server has no such field (then it sends no last item on subscribe).
    send_last: str | None


def read_config(xml: ET.Element) -> NodeConfig:
    persist, max_items, range_max, send_last = False, "", None, None
    for f in xml.iter(f"{_XDATA}field"):
        value = f.findtext(f"{_XDATA}value") or ""
        if f.get("var") == "pubsub#persist_items":
            persist = value in ("1", "true")
        elif f.get("var") == "pubsub#send_last_published_item":
            send_last = value
        elif f.get("var") == "pubsub#max_items":
            max_items = value
            limit = f.find(f"{_VALIDATE}validate/{_VALIDATE}range")
            if limit is not None and (limit.get("max") or "").isdigit():
                range_max = int(limit.get("max") or 0)
    return NodeConfig(persist, max_items, range_max, send_last)


def new_id() -> str:
    return uuid.uuid4().hex


def precondition_failed(exc: IqError) -> bool:
    """A publish refused because the node's config differs from its publish-options."""
    error = exc.iq.xml.find("{jabber:client}error")
    if error is not None and error.find(f"{_PUBSUB_ERRORS}precondition-not-met") is not None:
        return True
    return exc.condition == "conflict" and "Field does not match" in (exc.text or "")


def iq_error(exc: IqError, what: str) -> TransportError:
    condition, text = exc.condition, exc.text or ""
    detail = f"xmpp: cannot {what}: {condition}" + (f" ({text})" if text else "")
    if condition == "forbidden":
        detail += (
            "; on Prosody only admins may create nodes (add the account to admins), on "
            "ejabberd mod_pubsub's access_createnode decides"
        )
    if precondition_failed(exc):
        detail += "; the node's configuration changed under us (precondition-not-met)"
    if condition in ("remote-server-timeout", "service-unavailable", "internal-server-error"):
        return ConnectionLost(detail)
    return TransportError(detail)
