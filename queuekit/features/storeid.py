"""Which job store a message belongs to: stamped when it is published, checked by the worker.

A dedup key held in the job store, a serial group and a job record live in the store the
publisher used. A worker that settled such a message in another store would, silently,
leave the key held for ever (the next publish with it dropped), the group stalled behind
its head, the record ``queued``. Two stores happen when a producer and a worker were
configured differently, or run on two hosts with per-host default stores.

So such a message carries the identity of its store (``metadata.store``, see
:meth:`queuekit.jobstore.base.JobStore.identity`); plain messages carry nothing and cost
nothing. A worker whose store is another refuses it to its own failed store, with a reason
that names the setting to fix. Nothing is lost: retried from that failed store once the
setting is fixed, a message belongs to the retrying store (:func:`adopt`).

Where the job store is a per-host default while the broker is on another machine, other
hosts have stores of their own: :func:`host_warning` says so, for the worker's log at start
and for a schedule that only this host's workers would ever fire.
"""

from __future__ import annotations

import ipaddress
import socket

from ..jobstore.base import JobStore
from ..spi.urls import TransportURL
from .envelope import Metadata

#: Where the job store is set, as a refusal names it.
SETTING = (
    "QUEUEKIT_JOBSTORE (or jobstore = in queuekit.toml, or connect(jobstore=...)): one store"
    " for every producer and worker of the broker, a shared PostgreSQL or MariaDB database"
    " when they run on several hosts"
)


def needs_store(meta: Metadata, *, keyed: bool) -> bool:
    """Whether a fresh message depends on the job store it is published through: its key
    is held there (``keyed``), it lines up in a serial group, or it has a job record."""
    return keyed or meta.group is not None or meta.record


def stamp(meta: Metadata, jobs: JobStore) -> None:
    """Mark ``meta`` as registered in ``jobs`` (one cached read per store)."""
    meta.store = jobs.identity()


def adopt(meta: Metadata, jobs: JobStore) -> None:
    """A stamped message put back to work from ``jobs`` (its failed store) belongs to
    ``jobs`` from now on: its record is written there, and its key and group slot, if the
    other store still has them, are not in play any more."""
    if meta.store is not None:
        stamp(meta, jobs)


def refusal(meta: Metadata, jobs: JobStore) -> str | None:
    """Why a worker on ``jobs`` must refuse this message, or ``None`` when it may run it
    (it needs no store, or it was registered in this one). The worker's one check."""
    if meta.store is None or meta.store == jobs.identity():
        return None
    depends = [
        what
        for what, used in (
            (f"key {meta.key!r}", meta.key is not None),
            (f"serial group {meta.group!r}", meta.group is not None),
            ("job record", meta.record),
        )
        if used
    ]
    return (
        f"registered in job store {meta.store}, but this worker uses job store"
        f" {jobs.identity()} ({jobs.url.redacted()}): its {' and '.join(depends)} live in the"
        f" other store. Set {SETTING}; then retry it with `worker failed retry`"
    )


def host_warning(url: TransportURL, jobs: JobStore, *, per_host: bool) -> str | None:
    """Why ``jobs`` cannot serve the producers and workers of ``url`` on other hosts, or
    ``None``: it is this host's default store (``per_host``) while the broker is not on
    this host, so every host keeps keys, groups, records, schedules and delayed messages
    of its own."""
    if not per_host or on_this_host(url):
        return None
    return (
        f"the job store {jobs.url.redacted()} is this host's default for {url.redacted()}:"
        " producers and workers on other hosts use their own, and a worker refuses messages"
        " registered in another store. For many hosts set QUEUEKIT_JOBSTORE (or jobstore ="
        " in queuekit.toml) to one shared PostgreSQL or MariaDB database on every host"
    )


def on_this_host(url: TransportURL) -> bool:
    """Whether every host of ``url`` is this machine (loopback, or none: a file, memory)."""
    return all(_is_this_host(host.name) for host in url.hosts)


def _is_this_host(name: str) -> bool:
    if name.lower() in {"localhost", socket.gethostname().lower()}:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
