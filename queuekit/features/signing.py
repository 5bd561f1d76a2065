"""Signed messages: an HMAC-SHA256 over each message, checked before anything runs.

With signing keys configured (``QUEUEKIT_SIGNING_KEYS="k2:BASE64,k1:BASE64"`` or
``signing_keys`` in ``queuekit.toml``), the :class:`~queuekit.features.broker.Broker` signs
every body it encodes with the *first* key, and the worker pipeline verifies each delivery
with *any* listed key before decoding it: rotation is "add the new key first, keep the old
one until no message signed with it is left". A delivery that is unsigned, signed with an
unknown key, or whose signature does not match is an :class:`UnverifiedMessage`: it goes to
the failed store with the reason and never runs.

**Where the signature travels.** In front of the envelope, as one line of the body::

    QKSIG1 <key id> <base64url HMAC, unpadded>\\n{"payload": ..., "metadata": {...}}

not in a transport header: a body reaches every place a message can be (the delayed store,
a serial group's line, an in-place requeue, the failed store, every adapter) byte for byte,
while transport headers do not survive all of them.

**What it covers.** The MAC is over a version tag, the queue name and the whole envelope:
payload and every metadata field (id, name, attempts, not_before, priority, key, once,
group, correlation_id, reply_to, retry, headers, record, store). So a signed message can
be neither altered nor moved to another queue. It does not stop replay, and it hides
nothing (docs/security.md).

Secrets never leave this module: :class:`SigningKey` has no secret in its ``repr``, and no
error or log line quotes one. Thread-safe: a :class:`Signer` is immutable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..spi.errors import ConfigurationError, UnverifiedMessage

#: What a signed body starts with; an envelope (JSON) starts with ``{``.
MAGIC = b"QKSIG1 "
#: Shortest secret accepted: HMAC-SHA256 is as strong as its key up to 32 bytes.
MIN_SECRET = 32
#: Longest signature line read (``MAGIC``, a key id, the MAC): a body is never scanned for
#: a newline further than this.
_MAX_LINE = len(MAGIC) + 64 + 1 + 43 + 1
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_DOMAIN = b"queuekit-signature-v1\0"


@dataclass(frozen=True)
class SigningKey:
    """One key: a public id (carried in each signature) and a secret (never shown)."""

    id: str
    secret: bytes = field(repr=False)


def parse_keys(text: str, *, source: str = "QUEUEKIT_SIGNING_KEYS") -> list[SigningKey]:
    """``"k2:BASE64,k1:BASE64"`` as keys, first to sign with; errors name ``source`` and
    the key id, never a secret."""
    keys: list[SigningKey] = []
    for number, raw in enumerate(text.split(","), 1):
        item = raw.strip()
        ident, sep, encoded = item.partition(":")
        if not item or not sep or not _KEY_ID.fullmatch(ident):
            raise ConfigurationError(
                f"{source}: key {number} is not 'ID:BASE64SECRET' with an id of letters, "
                "digits, '.', '_' or '-' (e.g. k2:...,k1:...)"
            )
        try:
            secret = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigurationError(
                f"{source}: the secret of key {ident!r} is not base64"
            ) from None
        if len(secret) < MIN_SECRET:
            raise ConfigurationError(
                f"{source}: the secret of key {ident!r} is {len(secret)} bytes; at least "
                f"{MIN_SECRET} random bytes are needed (see docs/security.md for making one)"
            )
        if any(k.id == ident for k in keys):
            raise ConfigurationError(f"{source}: key id {ident!r} is listed twice")
        keys.append(SigningKey(ident, secret))
    return keys


class Signer:
    """Signs with the first key, verifies with any; see the module docstring."""

    def __init__(self, keys: Sequence[SigningKey]) -> None:
        if not keys:
            raise ConfigurationError("signing needs at least one key")
        self.keys = tuple(keys)
        self._by_id = {k.id: k.secret for k in keys}
        first = self.keys[0]
        self._prefix = MAGIC + first.id.encode("ascii") + b" "
        self._secret = first.secret

    @property
    def key_ids(self) -> list[str]:
        """The ids, first the one that signs: what a log line may show."""
        return [k.id for k in self.keys]

    def sign(self, queue: str, envelope: bytes) -> bytes:
        """``envelope`` with its signature line in front, for ``queue``."""
        mac = _mac(self._secret, queue, envelope)
        return self._prefix + base64.urlsafe_b64encode(mac).rstrip(b"=") + b"\n" + envelope

    def verify(self, queue: str, body: bytes) -> bytes:
        """The envelope of a body signed for ``queue`` by a listed key; otherwise
        :class:`UnverifiedMessage` with the reason (which names no secret)."""
        key_id, signature, envelope = split(body)
        secret = self._by_id.get(key_id)
        if secret is None:
            raise UnverifiedMessage(
                f"signed with key {key_id!r}, which is not among this worker's signing keys "
                f"({', '.join(self.key_ids)})",
                body,
            )
        if not hmac.compare_digest(signature, _mac(secret, queue, envelope)):
            raise UnverifiedMessage(
                f"the signature does not match (key {key_id!r}, queue {queue!r}): the message "
                "was altered, moved from another queue, or signed with another secret",
                body,
            )
        return envelope


def envelope_of(signer: Signer | None, queue: str, body: bytes) -> bytes:
    """The envelope of a body received on ``queue``: verified when ``signer`` is set;
    without keys, a signed body is refused too (nothing here could check it), so a
    worker that was left out of a rollout says so instead of failing to parse."""
    if signer is not None:
        return signer.verify(queue, body)
    if body.startswith(MAGIC):
        raise UnverifiedMessage("the message is signed, but this process has no signing "
                                "keys to verify it: set QUEUEKIT_SIGNING_KEYS", body)  # fmt: skip
    return body


def split(body: bytes) -> tuple[str, bytes, bytes]:
    """``(key id, MAC, envelope)`` of a signed body, unchecked; :class:`UnverifiedMessage`
    when the body carries no well-formed signature line."""
    if not body.startswith(MAGIC):
        raise UnverifiedMessage("the message is not signed, and this worker requires "
                                "signatures (signing keys are set)", body)  # fmt: skip
    end = body.find(b"\n", 0, _MAX_LINE)
    parts = body[len(MAGIC) : end].split(b" ") if end > 0 else []
    if len(parts) != 2:
        raise UnverifiedMessage("the signature line is malformed", body)
    ident, encoded = parts
    try:
        key_id = ident.decode("ascii")
        mac = base64.urlsafe_b64decode(encoded + b"=" * (-len(encoded) % 4))
    except (UnicodeDecodeError, binascii.Error, ValueError):
        raise UnverifiedMessage("the signature line is malformed", body) from None
    if not _KEY_ID.fullmatch(key_id) or len(mac) != hashlib.sha256().digest_size:
        raise UnverifiedMessage("the signature line is malformed", body)
    return key_id, mac, body[end + 1 :]


def _mac(secret: bytes, queue: str, envelope: bytes) -> bytes:
    name = queue.encode("utf-8", "surrogatepass")
    mac = hmac.new(secret, _DOMAIN, hashlib.sha256)
    mac.update(len(name).to_bytes(4, "big"))
    mac.update(name)
    mac.update(envelope)
    return mac.digest()
