"""Who may use the dashboard, and which requests count as its own.

- **Bind.** On a loopback address the dashboard may run open (only this host reaches it);
  on any other address it needs a token and :func:`check_bind` refuses to start without.
- **Token.** With one, every request must carry it: ``Authorization: Bearer TOKEN`` (for
  scripts), or the session cookie the login form sets, which holds an HMAC of the token,
  never the token itself. Both are compared in constant time. No page shows the token.
- **CSRF.** Every POST must carry the form field ``csrf`` equal to the ``qk_csrf`` cookie
  (a random value the dashboard set, ``SameSite=Strict``): another site can make a browser
  send the cookie, never read it to fill the field. A POST whose ``Origin`` is another
  origin, or that the browser marks ``Sec-Fetch-Site: cross-site``, is refused as well.
- **Read-only.** Every POST but the login is refused; pages show no buttons.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request

SESSION_COOKIE = "qk_session"
CSRF_COOKIE = "qk_csrf"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class UnsafeBind(ValueError):
    """The dashboard was asked to listen beyond this host without a token."""


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen on ``host`` beyond loopback without a token."""
    if not is_loopback(host) and not token:
        raise UnsafeBind(
            f"the dashboard binds {host}, beyond this host: set a token with --token or "
            "$QUEUEKIT_DASHBOARD_TOKEN (or bind 127.0.0.1)"
        )


@dataclass(frozen=True)
class Guard:
    """The dashboard's access rules (see the module docstring)."""

    token: str | None = None
    read_only: bool = False

    @property
    def session(self) -> str | None:
        """The session cookie's value: derived from the token, so it shows no secret."""
        if not self.token:
            return None
        return hmac.new(self.token.encode(), b"queuekit-dashboard-session",
                        hashlib.sha256).hexdigest()  # fmt: skip

    def token_matches(self, offered: str) -> bool:
        return bool(self.token) and hmac.compare_digest(offered.encode(), str(self.token).encode())

    def authenticated(self, request: Request) -> bool:
        session = self.session
        if session is None:
            return True
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(credential.strip()):
            return True
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return hmac.compare_digest(cookie.encode(), session.encode())


def csrf_value(request: Request) -> tuple[str, bool]:
    """This browser's CSRF value, and whether it is new (to be set as a cookie)."""
    current = request.cookies.get(CSRF_COOKIE)
    if current and len(current) >= 32:
        return current, False
    return secrets.token_urlsafe(32), True


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site."""
    if request.headers.get("sec-fetch-site", "same-origin") == "cross-site":
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not sent by every client: the CSRF field is the check then
    host = request.headers.get("host", "")
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc == host


def csrf_ok(request: Request, submitted: str) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    return (
        same_origin(request)
        and bool(cookie)
        and hmac.compare_digest(cookie.encode(), submitted.encode())
    )
