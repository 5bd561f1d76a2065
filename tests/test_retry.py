"""Retry strategies: the wait before the next attempt, and when to give up."""

from __future__ import annotations

import pytest

from queuekit import Exponential, Intervals, NoRetry, Repeat, RetryStrategy
from queuekit.features.retry import DEFAULT_RETRY, strategy_from_json


def test_the_default_is_one_more_attempt_a_minute_later() -> None:
    assert Repeat(times=1, every=60) == DEFAULT_RETRY
    assert DEFAULT_RETRY.delay_for(1) == 60
    assert DEFAULT_RETRY.delay_for(2) is None


def test_no_retry_gives_up_at_once() -> None:
    assert NoRetry().delay_for(1) is None


def test_repeat() -> None:
    strategy = Repeat(times=3, every=5)
    assert [strategy.delay_for(n) for n in range(1, 5)] == [5, 5, 5, None]


def test_intervals() -> None:
    strategy = Intervals((15, 30, 60))
    assert [strategy.delay_for(n) for n in range(0, 5)] == [None, 15, 30, 60, None]


def test_exponential_doubles_up_to_the_cap_and_stops_at_max_attempts() -> None:
    strategy = Exponential(base=1, cap=10, max_attempts=7)
    assert [strategy.delay_for(n) for n in range(1, 8)] == [1, 2, 4, 8, 10, 10, None]


def test_exponential_jitter_stays_within_half_and_full_wait() -> None:
    strategy = Exponential(base=4, cap=1000, max_attempts=50, jitter=True)
    for attempts in range(1, 8):
        wait = 4 * 2 ** (attempts - 1)
        for _ in range(50):
            got = strategy.delay_for(attempts)
            assert got is not None
            assert wait / 2 <= got <= wait


@pytest.mark.parametrize(
    "strategy",
    [NoRetry(), Repeat(2, 0.5), Intervals((1, 2.5)), Exponential(2, 30, 4, jitter=True)],
    ids=lambda s: type(s).__name__,
)
def test_strategies_travel_as_json(strategy: RetryStrategy) -> None:
    import json

    carried = json.loads(json.dumps(strategy.to_json()))
    assert strategy_from_json(carried) == strategy


@pytest.mark.parametrize("data", [{"kind": "fibonacci"}, {}, {"times": 1}])
def test_an_unknown_strategy_is_a_value_error(data: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="unknown retry strategy"):
        strategy_from_json(data)
