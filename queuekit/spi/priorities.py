"""Priority ranges: a worker that takes only messages with priorities in a range.

So urgent mail never waits behind a long import: run one worker with ``-p 200-`` for the
urgent band and others unrestricted (or ``-p -199``). Priorities are 0 (lowest) to 255.
A range is honoured where the adapter declares ``priority_range``: SQLite selects by an
indexed column and memory:// scans, so any range works there. Brokers that hand out a
queue's head only (RabbitMQ, STOMP servers, gearmand) serve ranges through
:class:`PriorityBands`: each band of priorities has its own broker queue, and a worker
consumes the bands of its range; a range must then fall on band boundaries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ConfigurationError, Unsupported
from .urls import TransportURL

MAX_PRIORITY = 255
#: The URL option that sets the band boundaries, shared by producers and workers through
#: the URL they already share.
BANDS_OPTION = "priority_bands"
#: Where the default bands start (besides 0): 0-49, 50-99, 100-149, 150-199, 200-255.
DEFAULT_BAND_STARTS = (50, 100, 150, 200)
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


@dataclass(frozen=True, slots=True)
class PriorityBands:
    """A fixed partition of 0-255 into bands, for adapters whose broker cannot select by
    priority: a message goes to the broker queue of its priority's band, and a worker with
    a range consumes the queues of the bands inside it, highest first.

    ``starts`` are the lowest priority of every band but the first (which starts at 0), in
    increasing order. Producers and workers must agree on them, so they come from the URL
    (``?priority_bands=50,100``) or the default, never from anything a process holds alone.
    The lowest band keeps the plain queue name: a queue that never sees a priority of
    another band needs no other broker queue, and consumers that predate bands still get
    every message without a priority.
    """

    starts: tuple[int, ...] = DEFAULT_BAND_STARTS

    def __post_init__(self) -> None:
        if list(self.starts) != sorted(set(self.starts)) or not all(
            0 < start <= MAX_PRIORITY for start in self.starts
        ):
            raise ValueError(
                f"band starts must increase within 1-{MAX_PRIORITY}, not {self.starts}"
            )

    @classmethod
    def from_url(cls, url: TransportURL) -> PriorityBands:
        """The bands ``?priority_bands=`` sets (``""`` or ``0`` for a single band), or the
        default."""
        text = url.option(BANDS_OPTION)
        if text is None:
            return cls()
        try:
            starts = tuple(int(part) for part in text.split(",") if part.strip() not in ("", "0"))
            return cls(starts)
        except ValueError as exc:
            raise ConfigurationError(
                f"{url.redacted()}: {BANDS_OPTION}={text!r} is not a list of increasing"
                f" priorities 1-{MAX_PRIORITY}, e.g. {BANDS_OPTION}=100,200 ({exc})"
            ) from None

    @property
    def ranges(self) -> tuple[PriorityRange, ...]:
        """Every band, lowest first."""
        lows = (0, *self.starts)
        highs = (*(start - 1 for start in self.starts), MAX_PRIORITY)
        return tuple(PriorityRange(low, high) for low, high in zip(lows, highs, strict=True))

    def start_of(self, priority: int | None) -> int:
        """The lowest priority of ``priority``'s band (``None`` is 0: the plain queue)."""
        start = 0
        for boundary in self.starts:
            if priority is None or priority < boundary:
                break
            start = boundary
        return start

    def starts_within(self, priorities: PriorityRange, adapter: str) -> list[int]:
        """The starts of the bands ``priorities`` covers, highest first.

        Raises :class:`Unsupported` when the range cuts a band: taking the whole band would
        hand this worker priorities it did not ask for, and taking none would starve some.
        """
        inside = [b for b in self.ranges if priorities.lowest <= b.lowest <= b.highest
                  <= priorities.highest]  # fmt: skip
        # bands are contiguous, so those inside cover the range exactly when its ends match
        if not inside or (inside[0].lowest, inside[-1].highest) != (
            priorities.lowest,
            priorities.highest,
        ):
            shown = ", ".join(str(b) for b in self.ranges)
            raise Unsupported(
                f"the priority range {priorities}",
                adapter,
                f"its priority bands are {shown}; set ?{BANDS_OPTION}="
                f"{_suggested(self.starts, priorities)} on the URL every producer and worker"
                " of the queue shares",
            )
        return [b.lowest for b in reversed(inside)]

    def queue_for(self, queue: str, start: int) -> str:
        """The broker queue of the band starting at ``start``: ``queue`` itself for the
        lowest band, else ``queue#start`` (``emails#200``)."""
        return queue if start == 0 else f"{queue}#{start}"

    def queues(self, queue: str) -> list[str]:
        """Every band's broker queue, highest band first."""
        return [self.queue_for(queue, b.lowest) for b in reversed(self.ranges)]


def _suggested(starts: tuple[int, ...], priorities: PriorityRange) -> str:
    """The current band starts plus the ones ``priorities`` needs."""
    needed = {priorities.lowest, priorities.highest + 1} - {0, MAX_PRIORITY + 1}
    return ",".join(str(start) for start in sorted(set(starts) | needed))
