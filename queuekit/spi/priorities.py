"""Priority ranges: a worker that takes only messages with priorities in a range.

So urgent mail never waits behind a long import: run one worker with ``-p 200-`` for the
urgent band and others unrestricted (or ``-p -199``). Priorities are 0 (lowest) to 255.
A range is honoured by the broker's own selection where the adapter declares
``priority_range`` (SQLite selects by an indexed column; memory:// scans); other brokers
hand out a queue's head only, so asking them raises ``Unsupported``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_PRIORITY = 255
_RANGE = re.compile(r"^\s*(\d*)\s*(-?)\s*(\d*)\s*$")


@dataclass(frozen=True, slots=True)
class PriorityRange:
    """``lowest`` to ``highest``, both included."""

    lowest: int = 0
    highest: int = MAX_PRIORITY

    def __post_init__(self) -> None:
        if not 0 <= self.lowest <= self.highest <= MAX_PRIORITY:
            raise ValueError(
                f"a priority range runs from 0 to {MAX_PRIORITY}, lowest first,"
                f" not {self.lowest}-{self.highest}"
            )

    @classmethod
    def parse(cls, text: str) -> PriorityRange:
        """``"10"`` (just 10), ``"20-40"``, ``"25-"`` (25 and up), ``"-20"`` (up to 20)."""
        match = _RANGE.match(text)
        if match is None or not (match[1] or match[3]):
            raise ValueError(f"not a priority range: {text!r} (e.g. 10, 20-40, 25-, -20)")
        low, dash, high = match.groups()
        if not dash:
            return cls(int(low), int(low))
        return cls(int(low) if low else 0, int(high) if high else MAX_PRIORITY)

    def __contains__(self, priority: object) -> bool:
        return isinstance(priority, int) and self.lowest <= priority <= self.highest

    def __str__(self) -> str:
        return f"{self.lowest}-{self.highest}"
