"""The case registry: each case is a function of a :class:`Context`, gated by a capability.

A case with ``needs=None`` is part of the contract every adapter keeps; one with a flag runs
only where the adapter declares it and is otherwise reported "not supported". A case raises
:class:`~queuekit.conformance.context.CaseFailure` on the first broken promise, and never
passes vacuously: it first checks that what it tests really happened (both messages were
waiting, the consumer did receive, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .context import Context

CaseFunction = Callable[[Context], None]


@dataclass(frozen=True)
class Case:
    number: int
    name: str
    needs: str | None
    summary: str
    run: CaseFunction


_CASES: dict[str, Case] = {}


def case(
    number: int, name: str, needs: str | None = None
) -> Callable[[CaseFunction], CaseFunction]:
    """Register a case; its docstring's first line is the summary shown in docs."""

    def register(function: CaseFunction) -> CaseFunction:
        summary = (function.__doc__ or name).strip().splitlines()[0]
        _CASES[name] = Case(number, name, needs, summary, function)
        return function

    return register


def all_cases() -> list[Case]:
    """Every case, in the order of the issue (the modules register on import)."""
    from . import basic, distributed, model, public  # noqa: F401 - registration

    return sorted(_CASES.values(), key=lambda c: (c.number, c.name))


def select(cases: list[Case], only: list[str]) -> list[Case]:
    """Cases whose name or capability is in ``only`` (all when empty)."""
    if not only:
        return cases
    wanted = set(only)
    known = {c.name for c in cases} | {c.needs for c in cases if c.needs}
    unknown = wanted - known
    if unknown:
        raise ValueError(f"unknown case or capability: {', '.join(sorted(unknown))}")
    return [c for c in cases if c.name in wanted or c.needs in wanted]
