"""The conformance cases as pytest tests (collected by ``pytest --pyargs queuekit.conformance``).

Parametrised by :mod:`queuekit.conformance.plugin` from ``--queuekit-url``.
"""

from __future__ import annotations

import functools

import pytest

from ..spi.capabilities import Capabilities
from .cases import Case
from .context import Settings
from .runner import FAIL, NOT_SUPPORTED, SKIPPED, probe, run_case


@functools.cache
def _capabilities(url: str) -> Capabilities:
    return probe(url).capabilities


def test_conformance(
    queuekit_conformance_case: tuple[str, Case], request: pytest.FixtureRequest
) -> None:
    url, case = queuekit_conformance_case
    settings = Settings(restart_command=request.config.getoption("queuekit_restart_command"))
    if request.config.getoption("queuekit_short"):
        settings = settings.shortened()
    result = run_case(url, case, settings, _capabilities(url))
    if result.status in (NOT_SUPPORTED, SKIPPED):
        pytest.skip(f"{result.status}: {result.detail}")
    if result.status == FAIL:
        pytest.fail(f"{case.name}: {result.detail}", pytrace=False)
