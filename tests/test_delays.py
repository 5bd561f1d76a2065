"""What users write for "later" becomes an absolute due time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from queuekit.features.delays import due_time, parse_duration

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("1.5", 1.5),
        ("10 minutes", 600),
        ("10 MINUTES", 600),
        ("1 day + 6 hours", 86400 + 6 * 3600),
        ("2h30m", 2 * 3600 + 30 * 60),
        ("1 hour, 5 minutes and 10 seconds", 3600 + 300 + 10),
        ("1.5h", 5400),
        ("2 weeks", 14 * 86400),
        ("1 year", 365 * 86400),
        ("PT30S", 30),
        ("P1D", 86400),
        ("P1M4DT30M10S", 30 * 86400 + 4 * 86400 + 30 * 60 + 10),
        ("P1W", 7 * 86400),
        ("pt1.5h", 5400),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("soon", "cannot read delay"),
        ("", "cannot read delay"),
        ("5 fortnights", "unknown unit 'fortnights'"),
        ("5 minutes later", "cannot read delay"),
        ("5 minutes or 6 hours", "cannot read 'or'"),
        ("P", "not an ISO 8601 duration"),
        ("PT", "not an ISO 8601 duration"),
        ("P1DT", "not an ISO 8601 duration"),
        ("P1X", "not an ISO 8601 duration"),
    ],
)
def test_unreadable_durations_say_what_was_not_understood(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_duration(text)


def test_due_time_from_numbers_strings_and_timedeltas() -> None:
    assert due_time(30, now=NOW) == NOW + 30
    assert due_time(0.25, now=NOW) == NOW + 0.25
    assert due_time("2 minutes", now=NOW) == NOW + 120
    assert due_time(timedelta(hours=1), now=NOW) == NOW + 3600


def test_an_aware_datetime_is_an_absolute_moment() -> None:
    moment = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert due_time(moment, now=NOW) == moment.timestamp()
    plus_two = datetime(2030, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert due_time(plus_two) == moment.timestamp()


def test_a_naive_datetime_is_read_in_queuekit_timezone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUEKIT_TIMEZONE", "Asia/Tokyo")  # UTC+9, no daylight saving
    naive = datetime(2030, 1, 2, 12, 0, 0)
    assert due_time(naive) == datetime(2030, 1, 2, 3, 0, 0, tzinfo=UTC).timestamp()


def test_a_naive_datetime_defaults_to_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUEUEKIT_TIMEZONE", raising=False)
    naive = datetime(2030, 6, 1, 8, 30)
    assert due_time(naive) == naive.timestamp()


@pytest.mark.parametrize("bad", [-1, "-5", timedelta(seconds=-1)])
def test_negative_delays_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="negative"):
        due_time(bad, now=NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [True, None, [1], b"10"])
def test_other_types_are_refused(bad: object) -> None:
    with pytest.raises(TypeError, match="delay must be"):
        due_time(bad, now=NOW)  # type: ignore[arg-type]
