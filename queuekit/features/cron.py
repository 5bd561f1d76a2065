"""Cron expressions for recurring jobs: ``cron="*/10 * * * *"`` beside ``every=``.

The expression is read by croniter (extra ``queuekit[cron]``): five fields (minute, hour,
day of month, month, day of week), or six with seconds last, plus croniter's ``@daily``,
``L``, ``#`` forms. Slots are wall-clock times in the schedule's time zone (an IANA name,
``"Europe/Paris"``; UTC when none is given), so ``0 9 * * *`` stays at 09:00 across
daylight-saving changes. A slot that falls in a skipped hour (spring) runs at the end of
the gap; slots in an hour that repeats (autumn) are two instants and each fires.

Only the next slot is ever computed here; firing it once across workers, and not replaying
missed slots, is the job store's (see :mod:`queuekit.features.schedules`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..spi.errors import ConfigurationError

if TYPE_CHECKING:
    from croniter import croniter


def _croniter() -> type[croniter]:
    try:
        from croniter import croniter
    except ImportError:
        raise ConfigurationError("cron schedules need croniter: install queuekit[cron]") from None
    return croniter


def zone(name: str | None) -> ZoneInfo:
    """The time zone ``name`` (UTC for ``None``); ``ValueError`` for an unknown one."""
    if name is None:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name, e.g. Europe/Paris)") from None


def check(expression: str, timezone: str | None) -> None:
    """Refuse an expression croniter cannot read, or an unknown time zone (``ValueError``)."""
    zone(timezone)
    if not isinstance(expression, str) or not _croniter().is_valid(expression):
        raise ValueError(f"{expression!r} is not a cron expression (e.g. '*/10 * * * *')")


def next_slot(expression: str, timezone: str | None, after: float) -> float:
    """The Unix time of the first slot of ``expression`` strictly after ``after``."""
    start = datetime.fromtimestamp(after, UTC).astimezone(zone(timezone))
    following: float = _croniter()(expression, start).get_next(float)
    return following
