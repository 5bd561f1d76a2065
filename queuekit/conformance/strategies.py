"""Hypothesis strategies and deterministic settings for the generated cases.

Runs are reproducible and bounded for CI: ``derandomize`` (the same examples every run), no
example database, no shrinking (each step talks to a broker; a broken adapter must fail fast,
with the example it failed on), quiet output (the table reports).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st

from .context import CaseFailure


def ci_settings(examples: int, **extra: Any) -> settings:
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=(Phase.explicit, Phase.generate),
        verbosity=Verbosity.quiet,
        suppress_health_check=list(HealthCheck),
        **extra,
    )


#: Header names: short lowercase words; values any printable unicode, also empty.
header_names = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)
header_values = st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=40)
headers = st.dictionaries(header_names, header_values, max_size=4)

#: JSON values as an envelope carries them: nested, unicode, big integers, empty values.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63, max_value=2**200)
    | st.integers(min_value=-(2**200), max_value=-(2**63))
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.just("")
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
payloads: st.SearchStrategy[Any] = json_values | st.binary(max_size=512) | st.just([]) | st.just({})


def _run(examples: int, strategy: Any, check: Callable[..., None]) -> None:
    """Run ``check`` on generated examples; re-raise the first CaseFailure with its example."""
    failures: list[CaseFailure] = []

    @ci_settings(examples)
    @given(strategy)
    def run(example: tuple[Any, ...]) -> None:
        if failures:
            return
        try:
            check(*example)
        except CaseFailure as exc:
            failures.append(CaseFailure(f"{exc} (example: {example!r:.200})"))

    run()
    if failures:
        raise failures[0]


def raw_examples(examples: int, check: Callable[[bytes, dict[str, str]], None]) -> None:
    _run(examples, st.tuples(st.binary(max_size=2048), headers), check)


def envelope_examples(examples: int, check: Callable[[Any, dict[str, str]], None]) -> None:
    _run(examples, st.tuples(payloads, headers), check)


def same_value(a: Any, b: Any) -> bool:
    """Equality that also compares types (``1 == 1.0 == True`` is not a round trip)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return bool(a == b)
