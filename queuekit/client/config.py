"""Where to connect: ``--url`` > ``QUEUEKIT_URL`` > ``queuekit.toml`` > the SQLite default.

``queuekit.toml`` (or the file ``QUEUEKIT_CONFIG`` names)::

    url = "sqlite:///var/jobs.db"          # every queue not routed below
    jobstore = "sqlite:///var/jobs.db"     # failed store, delayed store (optional)

    [queues]                               # per-queue routes
    reports = "amqp://guest:guest@localhost:5672/"
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..spi.errors import ConfigurationError

DEFAULT_URL = "sqlite:///queuekit.db"
CONFIG_FILE = "queuekit.toml"


@dataclass(frozen=True)
class Config:
    url: str | None = None
    jobstore: str | None = None
    queues: dict[str, str] = field(default_factory=dict)


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
    for key, value in (("url", url), ("jobstore", jobstore)):
        if value is not None and not isinstance(value, str):
            raise ConfigurationError(f"{candidate}: {key} must be a string")
    return Config(url=url, jobstore=jobstore, queues=dict(queues))


def resolve_url(explicit: str | None = None, *, queue: str | None = None) -> str:
    """The transport URL for ``queue``, by the precedence in the module docstring."""
    if explicit:
        return explicit
    from_env = os.environ.get("QUEUEKIT_URL")
    if from_env:
        return from_env
    config = load_config()
    if queue is not None and queue in config.queues:
        return config.queues[queue]
    return config.url or DEFAULT_URL


def resolve_jobstore(explicit: str | None = None) -> str | None:
    """The job store URL if one is configured (``QUEUEKIT_JOBSTORE`` or the config file)."""
    return explicit or os.environ.get("QUEUEKIT_JOBSTORE") or load_config().jobstore
