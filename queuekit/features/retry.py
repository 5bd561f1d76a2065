"""Retry strategies: after a failed attempt, how long until the next one, or none at all.

A strategy is a small frozen object with ``delay_for(attempts) -> float | None``: the wait
before the next attempt after ``attempts`` failed ones, ``None`` when the message is spent.
It travels in the envelope (``metadata.retry``) as JSON, so a per-message strategy survives
the broker and a redelivery to another worker.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class RetryStrategy:
    kind: ClassVar[str] = ""

    def delay_for(self, attempts: int) -> float | None:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class NoRetry(RetryStrategy):
    """Fail at the first error."""

    kind: ClassVar[str] = "none"

    def delay_for(self, attempts: int) -> float | None:
        return None


@dataclass(frozen=True)
class Repeat(RetryStrategy):
    """Up to ``times`` more attempts, each ``every`` seconds after the last failure."""

    kind: ClassVar[str] = "repeat"
    times: int = 1
    every: float = 60.0

    def delay_for(self, attempts: int) -> float | None:
        return self.every if attempts <= self.times else None


@dataclass(frozen=True)
class Intervals(RetryStrategy):
    """One more attempt per listed wait, e.g. ``Intervals((15, 30, 60, 300, 86400))``."""

    kind: ClassVar[str] = "intervals"
    waits: tuple[float, ...] = (15, 30, 60, 300, 86400)

    def delay_for(self, attempts: int) -> float | None:
        return self.waits[attempts - 1] if 1 <= attempts <= len(self.waits) else None


@dataclass(frozen=True)
class Exponential(RetryStrategy):
    """Waits of ``base * 2**(n-1)`` capped at ``cap`` seconds, for ``max_attempts`` in all.

    With ``jitter`` each wait is drawn uniformly from [wait/2, wait], so a burst of failures
    does not come back as a burst.
    """

    kind: ClassVar[str] = "exponential"
    base: float = 1.0
    cap: float = 960.0  # 16 minutes
    max_attempts: int = 20
    jitter: bool = False

    def delay_for(self, attempts: int) -> float | None:
        if attempts >= self.max_attempts:
            return None
        wait = min(self.cap, self.base * 2 ** max(attempts - 1, 0))
        return random.uniform(wait / 2, wait) if self.jitter else wait


_KINDS: dict[str, type[RetryStrategy]] = {
    cls.kind: cls for cls in (NoRetry, Repeat, Intervals, Exponential)
}

#: Issue a failed job one more attempt a minute later (the core's default).
DEFAULT_RETRY: RetryStrategy = Repeat(times=1, every=60.0)


def strategy_from_json(data: dict[str, Any]) -> RetryStrategy:
    """Rebuild a strategy carried in an envelope; ``ValueError`` for an unknown one."""
    fields = dict(data)
    cls = _KINDS.get(str(fields.pop("kind", "")))
    if cls is None:
        raise ValueError(f"unknown retry strategy {data!r}")
    if "waits" in fields:
        fields["waits"] = tuple(fields["waits"])
    return cls(**fields)
