"""Where to connect: ``--url`` > ``QUEUEKIT_URL`` > ``queuekit.toml`` > the SQLite default.

**One routing rule everywhere.** The ``[queues]`` routes of ``queuekit.toml`` apply when the
URL comes from the configuration: no URL given (``--url``, ``connect(url)``, a class's
``url``) and no ``QUEUEKIT_URL``. Then a queue with a route lives on its routed broker, for
the CLI (``worker run``, ``publish``, ``failed``) and for ``connect().queue(name)`` alike; a
URL given or set in the environment means that broker for every queue. :func:`routes`
says which routes apply; :func:`resolve_url` is the URL of one queue by the same rule.

Defaults never depend on the working directory: a web app publishing from its directory and
a worker that supervisor starts in another must meet on one queue and one job store. So the
default queue file and the default job stores live in the per-user state directory
(:func:`state_dir`, ``$XDG_STATE_HOME/queuekit`` or ``~/.local/state/queuekit``), the
job store of a broker in a file named after the broker (:func:`broker_jobstore`).

``queuekit.toml`` (or the file ``QUEUEKIT_CONFIG`` names)::

    url = "sqlite:///var/jobs.db"          # every queue not routed below
    jobstore = "sqlite:///var/jobs.db"     # failed store, delayed store (optional)

    signing_keys = "k2:BASE64,k1:BASE64"   # sign every message (optional; see below)

    [queues]                               # per-queue routes
    reports = "amqp://guest:guest@localhost:5672/"

Signing keys (:mod:`queuekit.features.signing`) come from ``signing_keys=`` (``connect``) >
``QUEUEKIT_SIGNING_KEYS`` > ``signing_keys`` in the config file; :func:`resolve_signer`.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..features.signing import Signer, parse_keys
from ..spi.errors import ConfigurationError
from ..spi.urls import TransportURL

CONFIG_FILE = "queuekit.toml"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def state_dir() -> Path:
    """Where queuekit keeps its default files: ``$XDG_STATE_HOME/queuekit``, else
    ``~/.local/state/queuekit`` (a relative ``XDG_STATE_HOME`` is ignored, as the XDG
    spec asks: it would depend on the working directory)."""
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "queuekit"


def default_url() -> str:
    """The broker when nothing is configured: one SQLite file per user, whatever the cwd."""
    return f"sqlite:///{state_dir() / 'queuekit.db'}"


def broker_jobstore(url: TransportURL) -> str:
    """The default job store of the broker at ``url``: a file in :func:`state_dir` named by
    the broker's scheme, hosts, vhost and user (never the password, nor options such as
    a prefetch), so every process of one broker on this host opens the same file."""
    hosts = sorted(str(h).lower() for h in url.hosts)
    identity = "\n".join([url.scheme, *hosts, url.path.strip("/"), url.username or ""])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    label = _UNSAFE.sub("_", f"{url.scheme}-{hosts[0] if hosts else 'local'}")
    return f"sqlite:///{state_dir() / f'jobs-{label}-{digest}.db'}"


@dataclass(frozen=True)
class Config:
    url: str | None = None
    jobstore: str | None = None
    queues: dict[str, str] = field(default_factory=dict)
    signing_keys: str | None = field(default=None, repr=False)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the config file (``path``, ``QUEUEKIT_CONFIG`` or ``./queuekit.toml``), if any."""
    explicit = path or os.environ.get("QUEUEKIT_CONFIG")
    candidate = Path(explicit) if explicit else Path(CONFIG_FILE)
    if not candidate.exists():
        if explicit:
            raise ConfigurationError(f"config file {candidate} does not exist")
        return Config()
    try:
        data = tomllib.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"cannot read {candidate}: {exc}") from None
    queues = data.get("queues", {})
    if not isinstance(queues, dict) or not all(isinstance(v, str) for v in queues.values()):
        raise ConfigurationError(f"{candidate}: [queues] must map queue names to URLs")
    url, jobstore = data.get("url"), data.get("jobstore")
    signing_keys = data.get("signing_keys")
    for key, value in (("url", url), ("jobstore", jobstore), ("signing_keys", signing_keys)):
        if value is not None and not isinstance(value, str):
            raise ConfigurationError(f"{candidate}: {key} must be a string")
    return Config(url=url, jobstore=jobstore, queues=dict(queues), signing_keys=signing_keys)


def resolve_url(explicit: str | None = None, *, queue: str | None = None) -> str:
    """The transport URL for ``queue``, by the precedence in the module docstring."""
    url, queues = routes(explicit)
    return queues.get(queue, url) if queue is not None else url


def routes(explicit: str | None = None) -> tuple[str, dict[str, str]]:
    """The URL of every queue without a route, and the routes that apply (none when the
    URL is ``explicit`` or comes from ``QUEUEKIT_URL``)."""
    if explicit:
        return explicit, {}
    from_env = os.environ.get("QUEUEKIT_URL")
    if from_env:
        return from_env, {}
    config = load_config()
    return config.url or default_url(), dict(config.queues)


def resolve_outbox(explicit: str | None = None) -> str | None:
    """The application database whose outbox workers relay (``QUEUEKIT_OUTBOX``), if any."""
    return explicit or os.environ.get("QUEUEKIT_OUTBOX") or None


def resolve_jobstore(explicit: str | None = None) -> str | None:
    """The job store URL if one is configured (``QUEUEKIT_JOBSTORE`` or the config file)."""
    return explicit or os.environ.get("QUEUEKIT_JOBSTORE") or load_config().jobstore


def resolve_signer(explicit: str | None = None) -> Signer | None:
    """The signer of the configured keys (``explicit`` > ``QUEUEKIT_SIGNING_KEYS`` > the
    config file's ``signing_keys``), or ``None`` when none are set. Errors name where the
    keys came from, never a secret."""
    if explicit:
        return Signer(parse_keys(explicit, source="signing_keys"))
    from_env = os.environ.get("QUEUEKIT_SIGNING_KEYS")
    if from_env:
        return Signer(parse_keys(from_env))
    config = load_config()
    if config.signing_keys:
        where = os.environ.get("QUEUEKIT_CONFIG") or CONFIG_FILE
        return Signer(parse_keys(config.signing_keys, source=f"{where}: signing_keys"))
    return None
