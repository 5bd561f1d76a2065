"""The XMPP connection: connecting and logging in, noticing a loss, connecting again.

One slixmpp client at a time. Every operation starts with :meth:`Connection.ensure`, so the
next call after a lost connection connects again (same resource, so server-side
subscriptions still apply) and then lets the session restore what it listens to. IQs go
through :meth:`Connection.iq` (or join :attr:`Connection.iqs`), so a dropped stream fails
them at once instead of after the IQ timeout. On every (re)connect it reads the pub/sub
service's features (XEP-0030), which decide what the transport declares (``service``).
Everything here runs on the loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout

from ...spi.errors import ConfigurationError, ConnectionLost
from ...spi.tls import refusal
from .quickack import ack_at_once
from .settings import XMPPSettings


class _ReportedHere(logging.Filter):
    """slixmpp logs a failed TLS handshake as an error before it fires ``ssl_invalid_chain``;
    the connection reports that failure itself (one line, with the reason), so the log
    record would only say it twice, without the reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "CERT: Invalid certificate trust chain."


logging.getLogger("slixmpp.xmlstream.xmlstream").addFilter(_ReportedHere())


class Connection:
    """Owns the slixmpp client; ``closing`` says the transport is closing for good."""

    def __init__(
        self,
        settings: XMPPSettings,
        *,
        restore: Callable[[], Awaitable[None]],
        notifications: Mapping[str, Callable[[Any], None]],
    ) -> None:
        self.settings = settings
        self.client: Any = None
        self.connected = False
        self.closing = False
        self.iqs: set[asyncio.Future[Any]] = set()  # outstanding: failed when the stream drops
        self.features: frozenset[str] = frozenset()  # the pub/sub service's, from disco#info
        self._restore = restore  # after (re)connecting: subscribe again
        self._notifications = notifications  # slixmpp event name -> handler
        self._connecting: asyncio.Future[None] | None = None

    async def ensure(self) -> Any:
        if self.connected:
            return self.client
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None
        return self.client

    async def _connect(self) -> None:
        s = self.settings
        await self.drop_client()
        client = slixmpp.ClientXMPP(f"{s.jid}/{s.resource}", s.password)
        client.enable_direct_tls = False
        client.enable_starttls = s.tls is not None
        client.enable_plaintext = s.tls is None
        if s.tls is not None:  # checked against the JID's domain, as XMPP names servers
            client.ssl_context = s.tls.context()
        for plugin in ("xep_0030", "xep_0004", "xep_0060"):
            client.register_plugin(plugin)
        # without TLS no credentials ever (a server that offers no STARTTLS gets no login)
        client.plugin["feature_mechanisms"].unencrypted_scram = s.tls is None and s.allow_plaintext
        ack_at_once(client)
        outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def settle(result: str) -> None:
            if not outcome.done():
                outcome.set_result(result)

        client.add_event_handler("session_start", lambda _: settle("ok"))
        client.add_event_handler("failed_all_auth", lambda _: settle("auth"))
        client.add_event_handler("connection_failed", lambda e: settle(f"connect: {e}"))
        refused: list[BaseException] = []  # a failed TLS handshake

        def tls_failed(error: object) -> None:
            if isinstance(error, ssl.SSLError):
                refused.append(error)
                settle("tls")

        # slixmpp reports a failed handshake as the disconnect's reason, or as this event
        client.add_event_handler("ssl_invalid_chain", tls_failed)
        client.add_event_handler("disconnected", tls_failed)
        client.add_event_handler("disconnected", lambda _: self._on_disconnected(client))
        # A server going down may accept the connection and then drop it: fail fast.
        client.add_event_handler("disconnected", lambda _: settle("disconnected"))
        for event, handler in self._notifications.items():
            client.add_event_handler(event, handler)
        self.client = client
        client.connect(s.host, s.port)
        try:
            result = await asyncio.wait_for(outcome, s.timeout)
        except TimeoutError:
            result = "timeout"
        if result != "ok":
            transport = client.transport
            encrypted = transport is not None and transport.get_extra_info("ssl_object")
            await self.drop_client()
            where = f"{s.host}:{s.port}"
            if result == "tls" and s.tls is not None:
                error = refusal(refused[0], f"xmpp {where} ({s.jid.partition('@')[2]})", s.tls)
                raise error or ConnectionLost(f"xmpp: TLS with {where} failed: {refused[0]}")
            if result == "auth" and s.tls is not None and not encrypted:
                raise ConfigurationError(
                    f"xmpp: {where} offered no STARTTLS and TLS is required (tls=off to go without)"
                )
            if result == "auth":
                raise ConfigurationError(f"xmpp: authentication as {s.jid} failed at {where}")
            raise ConnectionLost(f"xmpp: cannot reach {where} ({result})")
        self.connected = True
        self.features = await self._discover()
        await self._restore()

    async def _discover(self) -> frozenset[str]:
        """The pub/sub service's features; a JID that is no pub/sub service is a
        configuration error (a typo in ``pubsub=`` would otherwise fail on first use)."""
        s = self.settings
        try:
            info = await self.iq(
                self.client.plugin["xep_0030"].get_info(jid=s.pubsub, timeout=s.timeout)
            )
        except IqError as exc:
            raise ConfigurationError(
                f"xmpp: {s.pubsub} does not answer service discovery ({exc.condition}); "
                "set pubsub= in the URL to the server's pub/sub service"
            ) from None
        disco = info["disco_info"]
        features = frozenset(disco["features"])
        if not any(identity[0] == "pubsub" for identity in disco["identities"]):
            raise ConfigurationError(f"xmpp: {s.pubsub} is not a pub/sub service")
        return features

    def _on_disconnected(self, client: Any) -> None:
        if client is not self.client:
            return
        self.connected = False
        for future in list(self.iqs):
            if future.done():
                continue
            if isinstance(future, asyncio.Task):  # a Task takes no exception: cancel it; its
                future.cancel()  # awaiter in iq() turns that into ConnectionLost
            else:
                future.set_exception(ConnectionLost("xmpp: connection lost"))

    async def drop_client(self) -> None:
        client, self.client = self.client, None
        self.connected = False
        if client is None:
            return
        client.cancel_connection_attempt()
        if client.transport is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(client.disconnect(wait=1.0), 3.0)
            client.abort()
        for task in (getattr(client, "_run_out_filters", None),):
            if task is not None and not task.done():
                task.cancel()

    async def iq(self, future: Awaitable[Any]) -> Any:
        """Await one IQ; map slixmpp's errors, and fail fast when the connection drops."""
        fut = asyncio.ensure_future(future)
        self.iqs.add(fut)
        try:
            return await fut
        except IqTimeout:
            raise ConnectionLost("xmpp: the server did not answer in time") from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this caller itself is cancelled
            raise ConnectionLost("xmpp: connection lost") from None  # _on_disconnected
        finally:
            self.iqs.discard(fut)

    @property
    def pubsub(self) -> Any:
        """slixmpp's XEP-0060 plugin; raises ``ConnectionLost`` while not connected."""
        if self.client is None or not self.connected:
            raise ConnectionLost("xmpp: the connection was lost")
        return self.client.plugin["xep_0060"]
