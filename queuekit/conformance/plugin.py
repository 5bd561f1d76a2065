"""pytest plugin (entry point ``pytest11``): run the conformance cases from an adapter's CI.

    pytest --pyargs queuekit.conformance --queuekit-url amqp://guest:guest@localhost/

Every pytest run loads this module, so it stays cheap: it only adds options, and the cases
(and hypothesis) are imported only when ``--queuekit-url`` is given. Each (URL, case) pair is
one test; a capability the adapter does not declare is a skip with the adapter's reason.
"""

from __future__ import annotations

import pytest

FIXTURE = "queuekit_conformance_case"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("queuekit", "queuekit conformance suite")
    group.addoption(
        "--queuekit-url",
        action="append",
        default=[],
        metavar="URL",
        help="run the queuekit conformance cases against this transport URL (repeatable)",
    )
    group.addoption(
        "--queuekit-short", action="store_true", help="smaller counts for a quick check"
    )
    group.addoption(
        "--queuekit-restart-command",
        metavar="CMD",
        help="shell command that restarts the broker (runs the restart case)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if FIXTURE not in metafunc.fixturenames:
        return
    urls: list[str] = metafunc.config.getoption("queuekit_url")
    if not urls:
        skip = pytest.mark.skip(reason="no --queuekit-url given")
        metafunc.parametrize(FIXTURE, [pytest.param(None, marks=skip)], ids=["no-url"])
        return
    from ..spi.urls import redact
    from .cases import all_cases

    params = [
        pytest.param((url, case), id=f"{redact(url)}::{case.name}")
        for url in urls
        for case in all_cases()
    ]
    metafunc.parametrize(FIXTURE, params)
