"""Transport URLs: parsing (several hosts for failover) and redaction of secrets.

A password never leaves this module in clear text through ``str``/``repr``: logs, errors
and the CLI print :meth:`TransportURL.redacted`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote

from .errors import ConfigurationError

_URL = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*)://(?P<rest>.*)$", re.DOTALL)
_SECRET_QUERY_KEYS = frozenset({"password", "secret", "token", "pass"})


@dataclass(frozen=True)
class Host:
    name: str
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.name}]" if ":" in self.name else self.name
        return host if self.port is None else f"{host}:{self.port}"


@dataclass(frozen=True)
class TransportURL:
    """A parsed ``scheme://user:password@host:port[,host2:port]/path?query`` URL."""

    scheme: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    hosts: tuple[Host, ...] = ()
    path: str = ""
    query: dict[str, str] = field(default_factory=dict, hash=False)

    @classmethod
    def parse(cls, url: str) -> TransportURL:
        match = _URL.match(url.strip())
        if not match:
            raise ConfigurationError(f"not a URL: {redact(url)!r} (expected scheme://...)")
        rest = match["rest"]
        rest, _, query = rest.partition("?")
        netloc, slash, path = rest.partition("/")
        userinfo, at, hostlist = netloc.rpartition("@")
        if not at:
            userinfo, hostlist = "", netloc
        username = password = None
        if userinfo:
            user, colon, secret = userinfo.partition(":")
            username = unquote(user)
            password = unquote(secret) if colon else None
        hosts = tuple(_parse_host(item, url) for item in hostlist.split(",") if item)
        return cls(
            scheme=match["scheme"].lower(),
            username=username,
            password=password,
            hosts=hosts,
            path=unquote(path) if slash else "",
            query=dict(parse_qsl(query, keep_blank_values=True)),
        )

    @property
    def host(self) -> Host:
        """The first host (the primary one when several are listed for failover)."""
        if not self.hosts:
            raise ConfigurationError(f"{self.redacted()} names no host")
        return self.hosts[0]

    def option(self, name: str, default: str | None = None) -> str | None:
        return self.query.get(name, default)

    def number(self, name: str, default: float, *, allow_zero: bool = False) -> float:
        """A positive numeric query option (or zero with ``allow_zero``), else
        ``ConfigurationError`` naming the option. Every adapter reads its numbers here,
        so a bad value is refused the same way whatever the broker."""
        text = self.query.get(name)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (value >= 0 if allow_zero else value > 0):  # also rejects NaN
            raise self._bad_option(name, text, "number", allow_zero)
        return value

    def integer(self, name: str, default: int, *, allow_zero: bool = False) -> int:
        """:meth:`number` for counts and sizes (bytes, milliseconds, items): whole numbers
        only, so ``hwm=1.5`` is refused rather than silently cut to 1."""
        text = self.query.get(name)
        if text is None:
            return default
        value = int(text) if text.isascii() and text.isdigit() else -1
        if not (value >= 0 if allow_zero else value > 0):
            raise self._bad_option(name, text, "whole number", allow_zero)
        return value

    def _bad_option(self, name: str, text: str, kind: str, allow_zero: bool) -> ConfigurationError:
        wanted = f"a {kind} >= 0" if allow_zero else f"a positive {kind}"
        return ConfigurationError(f"{self.redacted()}: option {name}={text!r} must be {wanted}")

    def flag(self, name: str, default: bool = False) -> bool:
        """A boolean query option: ``1/true/yes/on`` or ``0/false/no/off``."""
        value = self.query.get(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in {"1", "true", "yes", "on", ""}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigurationError(f"{self.redacted()}: option {name}={value!r} is not a boolean")

    def render(self, *, reveal: bool = False) -> str:
        auth = ""
        if self.username is not None:
            auth = quote(self.username, safe="")
            if self.password is not None:
                auth += ":" + (quote(self.password, safe="") if reveal else "***")
            auth += "@"
        hosts = ",".join(str(h) for h in self.hosts)
        path = "/" + quote(self.path, safe="/") if self.path or self.scheme == "sqlite" else ""
        query = "&".join(
            f"{k}={'***' if (k.lower() in _SECRET_QUERY_KEYS and not reveal) else v}"
            for k, v in self.query.items()
        )
        return f"{self.scheme}://{auth}{hosts}{path}" + (f"?{query}" if query else "")

    def redacted(self) -> str:
        return self.render(reveal=False)

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:
        return f"TransportURL({self.redacted()!r})"


def _parse_host(item: str, url: str) -> Host:
    if item.startswith("["):
        name, _, tail = item[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        name, _, port_text = item.partition(":")
    if not port_text:
        return Host(unquote(name))
    if not port_text.isdigit():
        raise ConfigurationError(f"bad port {port_text!r} in {redact(url)}")
    return Host(unquote(name), int(port_text))


# user:secret@ with or without a scheme in front; the secret may hold "/" (a mistyped URL)
_USERINFO = re.compile(
    r"(?P<head>(?:[a-zA-Z][\w+.\-]*://)?[^\s:/@'\"]*:)(?P<secret>(?!//)[^\s@'\"]*)@"
)  # (?!//): in "mysql://root@host" the "//root" after the scheme's colon is no secret
_QUERY_SECRET = re.compile(r"(?P<head>[?&](?:password|secret|token|pass)=)[^&#]*", re.IGNORECASE)


def redact(text: str) -> str:
    """Hide passwords in any text that may contain URLs (log lines, error messages)."""
    text = _USERINFO.sub(lambda m: f"{m['head']}***@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['head']}***", text)
