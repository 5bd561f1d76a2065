"""The conformance table (text, printed row by row) and the JSON report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TextIO

from .runner import FAIL, NOT_SUPPORTED, SKIPPED, CaseResult, Probe

_WIDTHS = (20, 20, 9)
_DETAIL = 110


def header(url: str, found: Probe, out: TextIO) -> None:
    declared = ", ".join(found.capabilities.declared()) or "nothing"
    size = found.capabilities.max_message_size
    out.write(f"queuekit conformance: {url} (adapter {found.adapter})\n")
    out.write(f"declares: {declared}; max_message_size: {size or 'no limit'}\n\n")
    out.write(_line("case", "capability", "declared", "result") + "\n")
    out.write(_line("-" * 4, "-" * 10, "-" * 8, "-" * 6) + "\n")
    out.flush()


def row(result: CaseResult, out: TextIO) -> None:
    capability = result.needs or "(every adapter)"
    declared = {None: "-", True: "yes", False: "no"}[result.declared]
    out.write(_line(result.case, capability, declared, outcome(result)) + "\n")
    for warning in result.warnings:
        out.write(f"{'':{sum(_WIDTHS) + 3}}warning: {warning}\n")
    out.flush()


def outcome(result: CaseResult) -> str:
    if result.status == FAIL:
        text = f"FAIL: {result.detail}"
    elif result.status in (NOT_SUPPORTED, SKIPPED):
        text = f"{result.status}: {result.detail}"
    else:
        text = f"pass ({result.seconds:.1f}s)"
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL else text[: _DETAIL - 3] + "..."


def footer(results: Sequence[CaseResult], seconds: float, out: TextIO) -> None:
    failed = [r.case for r in results if r.status == FAIL]
    ran = sum(1 for r in results if r.status not in (NOT_SUPPORTED, SKIPPED))
    verdict = f"FAILED: {', '.join(failed)}" if failed else "every declared capability passes"
    out.write(f"\n{ran} cases run in {seconds:.1f}s: {verdict}\n")
    out.flush()


def _line(*cells: str) -> str:
    *fixed, last = cells
    return " ".join(f"{c:<{w}}" for c, w in zip(fixed, _WIDTHS, strict=True)) + " " + last


def write_json(
    path: str, url: str, found: Probe, results: Sequence[CaseResult], seconds: float
) -> None:
    report = {
        "url": url,
        "adapter": found.adapter,
        "capabilities": found.capabilities.as_dict(),
        "declared": list(found.capabilities.declared()),
        "passed": not any(r.status == FAIL for r in results),
        "seconds": round(seconds, 3),
        "cases": [r.as_json() for r in results],
    }
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
