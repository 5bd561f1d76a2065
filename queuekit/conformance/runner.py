"""Run cases against a URL and collect one :class:`CaseResult` per case.

A case whose capability the adapter does not declare is not run: it is reported "not
supported" with the adapter's own reason when it gives one. Each case gets a fresh
:class:`Context` (fresh names, its own connections) that is cleaned up afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from ..spi.capabilities import Capabilities
from ..spi.registry import open_transport
from ..spi.urls import TransportURL, redact
from .cases import Case
from .context import CaseFailure, Context, NotApplicable, Settings

PASS, FAIL, NOT_SUPPORTED, SKIPPED = "pass", "FAIL", "not supported", "skipped"


@dataclass
class CaseResult:
    case: str
    needs: str | None
    declared: bool | None  # None: the case holds for every adapter
    status: str
    detail: str = ""
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def as_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class Probe:
    """What the suite learned from connecting once: the adapter and its declarations."""

    adapter: str
    capabilities: Capabilities
    process_local: bool


def probe(url: str | TransportURL) -> Probe:
    transport = open_transport(url)
    try:
        return Probe(transport.name, transport.capabilities, bool(transport.process_local))
    finally:
        transport.close()


def run_case(
    url: str | TransportURL, case: Case, settings: Settings, caps: Capabilities
) -> CaseResult:
    """Run one case; never raises for what the adapter does (that is the result)."""
    declared = None if case.needs is None else bool(getattr(caps, case.needs))
    result = CaseResult(case.name, case.needs, declared, PASS)
    if declared is False:
        assert case.needs is not None
        result.status = NOT_SUPPORTED
        result.detail = caps.reasons.get(case.needs, "not declared by the adapter")
        return result
    started = time.monotonic()
    ctx: Context | None = None
    try:
        ctx = Context(url, settings)
        case.run(ctx)
    except NotApplicable as exc:
        result.status, result.detail = SKIPPED, str(exc)
    except BaseException as exc:  # anything the adapter raises is a finding
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        result.status, result.detail = FAIL, describe(exc)
    finally:
        if ctx is not None:
            ctx.cleanup()
            result.warnings = ctx.warnings
        result.seconds = time.monotonic() - started
    return result


def describe(exc: BaseException) -> str:
    """The first failure inside ``exc`` (hypothesis wraps them in exception groups)."""
    found = _first_failure(exc)
    if isinstance(found, CaseFailure):
        return str(found)
    return f"{type(found).__name__}: {redact(str(found))}"


def _first_failure(exc: BaseException) -> BaseException:
    if isinstance(exc, BaseExceptionGroup):
        inner = [_first_failure(e) for e in exc.exceptions]
        for candidate in inner:
            if isinstance(candidate, CaseFailure):
                return candidate
        return inner[0] if inner else exc
    return exc


def run_suite(
    url: str | TransportURL,
    cases: Iterable[Case],
    settings: Settings,
    *,
    caps: Capabilities,
    on_result: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    results = []
    for case in cases:
        result = run_case(url, case, settings, caps)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results
