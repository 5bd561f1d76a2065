"""pytest plugin (entry point ``pytest11``): ``--queuekit-url URL`` runs the conformance cases.

Loaded by every pytest run, so importing it must stay cheap and it does nothing unless
``--queuekit-url`` is given.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("queuekit", "queuekit conformance suite")
    group.addoption(
        "--queuekit-url",
        action="append",
        default=[],
        metavar="URL",
        help="run the queuekit conformance cases against this transport URL (repeatable)",
    )
