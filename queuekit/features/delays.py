"""Turn what a user writes for "later" into an absolute Unix time.

Accepted: seconds (``int``/``float``), ``timedelta``, ``datetime`` (naive ones are read in
the local zone, or ``QUEUEKIT_TIMEZONE`` when set), human strings (``"10 minutes"``,
``"1 day + 6 hours"``, ``"2h30m"``) and ISO 8601 durations (``"P1M4DT30M10S"``; a month
counts 30 days and a year 365, as calendar-free durations must).
"""

from __future__ import annotations

import os
import re
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

Delay = int | float | str | timedelta | datetime

_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
    "month": 2592000, "months": 2592000,
    "y": 31536000, "year": 31536000, "years": 31536000,
}  # fmt: skip
_HUMAN_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)")
_ISO = re.compile(
    r"^P(?:(?P<years>\d+(?:\.\d+)?)Y)?(?:(?P<months>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<weeks>\d+(?:\.\d+)?)W)?(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)
_ISO_SECONDS = {
    "years": 31536000, "months": 2592000, "weeks": 604800, "days": 86400,
    "hours": 3600, "minutes": 60, "seconds": 1,
}  # fmt: skip


def parse_duration(text: str) -> float:
    """Seconds in a human or ISO 8601 duration; ``ValueError`` says what was not understood."""
    stripped = text.strip()
    if stripped.upper().startswith("P"):
        match = _ISO.match(stripped.upper())
        if not match or stripped.upper() in {"P", "PT"} or stripped.upper().endswith("T"):
            raise ValueError(f"not an ISO 8601 duration: {text!r}")
        return sum(float(v) * _ISO_SECONDS[k] for k, v in match.groupdict().items() if v)
    lowered = stripped.lower()
    try:
        return float(lowered)
    except ValueError:
        pass
    total, consumed = 0.0, 0
    for match in _HUMAN_PART.finditer(lowered):
        gap = lowered[consumed : match.start()].replace("+", "").replace(",", "")
        gap = gap.replace("and", "")
        if gap.strip():
            raise ValueError(f"cannot read {gap.strip()!r} in delay {text!r}")
        amount, unit = match.groups()
        if unit not in _UNITS:
            raise ValueError(f"unknown unit {unit!r} in delay {text!r}")
        total += float(amount) * _UNITS[unit]
        consumed = match.end()
    if consumed == 0 or lowered[consumed:].strip():
        raise ValueError(f"cannot read delay {text!r} (e.g. '10 minutes', 'P1DT6H', 90)")
    return total


def due_time(delay: Delay, *, now: float | None = None) -> float:
    """The Unix time at which a message published ``now`` with ``delay`` falls due."""
    now = time.time() if now is None else now
    if isinstance(delay, datetime):
        moment = delay
        if moment.tzinfo is None:
            zone = os.environ.get("QUEUEKIT_TIMEZONE")
            moment = moment.replace(tzinfo=ZoneInfo(zone)) if zone else moment.astimezone()
        return moment.timestamp()
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, str):
        seconds = parse_duration(delay)
    elif isinstance(delay, int | float) and not isinstance(delay, bool):
        seconds = float(delay)
    else:
        raise TypeError(f"delay must be seconds, a duration string or a datetime, not {delay!r}")
    if seconds < 0:
        raise ValueError(f"delay must not be negative: {delay!r}")
    return now + seconds
