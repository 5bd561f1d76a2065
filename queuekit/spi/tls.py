"""TLS options, read the same way by every adapter: ``ca=``, ``cert=``, ``key=``, ``verify=``.

A URL whose scheme asks for TLS (``amqps://``, ``stomp+ssl://``; XMPP's STARTTLS unless
``tls=off``) connects with TLS or not at all: no adapter falls back to a plain connection.

- ``ca``: the CA certificates (PEM file) that sign the server's certificate; default: the
  system's CAs. ``$QUEUEKIT_TLS_CA`` when the URL has none.
- ``cert``, ``key``: a client certificate (PEM) and its key, for brokers that verify
  clients; ``key`` may be left out when ``cert`` holds both. ``$QUEUEKIT_TLS_CERT`` and
  ``$QUEUEKIT_TLS_KEY`` when the URL has none.
- ``verify``: ``1`` (the default) checks the server's certificate chain and host name;
  ``0`` turns both checks off (the connection is still encrypted).

A handshake that fails on a certificate (the server's is not trusted or names another host;
the server refused ours or wanted one) is a :class:`ConfigurationError` in one line, from
:func:`refusal`: reconnecting would only repeat it.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import ConfigurationError
from .urls import TransportURL

#: The URL options this module reads; an adapter that refuses unknown options allows these.
TLS_OPTIONS = frozenset({"ca", "cert", "key", "verify"})
#: Where a file option comes from when the URL leaves it out.
TLS_ENV = {"ca": "QUEUEKIT_TLS_CA", "cert": "QUEUEKIT_TLS_CERT", "key": "QUEUEKIT_TLS_KEY"}


@dataclass(frozen=True)
class TLSSettings:
    """The TLS side of a URL: which CA to trust, which certificate to show, whether to check."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    verify: bool = True

    @classmethod
    def from_url(cls, url: TransportURL, environ: Mapping[str, str] = os.environ) -> TLSSettings:
        """Read the options (the URL first, then the environment); a file that is not there
        is refused now, not at the first connect."""
        files: dict[str, str | None] = {}
        for name, variable in TLS_ENV.items():
            value = url.option(name) or None
            origin = f"option {name}="
            if value is None and environ.get(variable):
                value, origin = environ[variable], f"${variable}="
            if value is not None and not os.path.isfile(value):
                raise ConfigurationError(f"{url.redacted()}: {origin}{value} is not a file")
            files[name] = value
        if files["key"] and not files["cert"]:
            raise ConfigurationError(f"{url.redacted()}: key= needs cert= (the client certificate)")
        return cls(
            ca=files["ca"], cert=files["cert"], key=files["key"], verify=url.flag("verify", True)
        )

    def context(self) -> ssl.SSLContext:
        """A client context: TLS 1.2 or later, these CAs, this client certificate."""
        context = ssl.create_default_context(cafile=self.ca)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert:
            context.load_cert_chain(self.cert, self.key)
        return context

    def trusted(self) -> str:
        """Which CAs the server's certificate was checked against, for error messages."""
        return f"ca={self.ca}" if self.ca else "the system's CAs (set ca= or $QUEUEKIT_TLS_CA)"


def refusal(exc: BaseException, where: str, tls: TLSSettings) -> ConfigurationError | None:
    """The one-line error for a TLS failure that no reconnect cures, else None.

    ``where`` names the server (``host:port``). Other TLS failures (the socket closed during
    the handshake, as when a broker restarts) stay the adapter's recoverable errors.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = str(exc.verify_message or exc.reason or exc)
        return ConfigurationError(
            f"TLS: the certificate of {where} is not accepted: {why.rstrip('.')} "
            f"(checked against {tls.trusted()})"
        )
    reason = exc.reason if isinstance(exc, ssl.SSLError) else None
    if reason and "ALERT" in reason:
        alert = reason.lower().replace("_", " ")
        hint = "a client certificate: cert= and key=" if not tls.cert else f"cert={tls.cert}"
        return ConfigurationError(f"TLS: {where} refused the handshake ({alert}; check {hint})")
    return None


__all__ = ["TLS_ENV", "TLS_OPTIONS", "TLSSettings", "refusal"]
