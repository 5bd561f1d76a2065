"""``worker conformance URL``: run the suite against a broker and print the table.

Exit status 0 only when every case the adapter's declarations call for passes; cases of
undeclared capabilities are listed as "not supported" and do not fail the run.
``--stress N`` runs N copies of the suite at once in separate processes against the same
broker (fresh names keep them apart) and fails a case if any copy failed it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from typing import Any, TextIO

from ..client.progress import Advance, progress
from ..spi.errors import QueuekitError
from ..spi.urls import TransportURL, redact
from .cases import Case, all_cases, select
from .consumers import factory_reference
from .context import Settings
from .report import footer, header, row, write_json
from .runner import FAIL, PASS, CaseResult, Probe, probe, run_suite

URL_ENV = "QUEUEKIT_CONFORMANCE_URL"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="worker conformance",
        description="Check what a broker really guarantees through its queuekit adapter.",
    )
    p.add_argument("url", help="transport URL, e.g. amqp://guest:guest@localhost:5672/")
    p.add_argument("--only", action="extend", nargs="+", default=[], metavar="CAP",
                   help="run only these capabilities or case names")  # fmt: skip
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--restart-command", metavar="CMD",
                   help="shell command restarting the broker (runs the restart case)")  # fmt: skip
    p.add_argument("--stress", type=int, default=0, metavar="N",
                   help="run N copies of the suite in parallel against the broker")  # fmt: skip
    p.add_argument("--short", action="store_true", help="smaller counts for a quick check")
    p.add_argument("--redelivery-timeout", type=float, metavar="S",
                   help="how long a dead consumer's message may take to return (60)")  # fmt: skip
    p.add_argument("--timeout", type=float, metavar="S",
                   help="how long a message that must arrive may take (default 10)")  # fmt: skip
    p.add_argument("--factory", help=argparse.SUPPRESS)  # module:attr, for stress copies
    return p


def command(argv: list[str], out: TextIO | None = None) -> int:
    """Run the suite as ``argv`` asks; the table goes to ``out`` (stdout), the progress
    through the cases to stderr (a bar on a terminal, see :mod:`queuekit.client.progress`)."""
    args = parser().parse_args(argv)
    raw_url = os.environ[URL_ENV] if args.url == "-" else args.url
    if args.factory:
        from ..spi.registry import register_transport
        from .child import _load

        register_transport(TransportURL.parse(raw_url).scheme, _load(args.factory))
    settings = Settings(restart_command=args.restart_command, factory=args.factory)
    if args.short:
        settings = settings.shortened()
    if args.redelivery_timeout:
        settings = replace(settings, redelivery_timeout=args.redelivery_timeout)
    if args.timeout:
        settings = replace(settings, receive_timeout=args.timeout)
    try:
        url = TransportURL.parse(raw_url)
        cases = select(all_cases(), args.only)
        found = probe(url)
    except (QueuekitError, ValueError) as exc:
        (out or sys.stdout).write(f"worker conformance: {redact(str(exc))}\n")
        return 2
    started = time.monotonic()
    stress = args.stress > 1
    with progress(f"conformance {url.redacted()}", args.stress if stress else len(cases)) as step:
        rows = out or sys.stdout  # looked up here: on a terminal, rows go above the bar
        header(url.redacted(), found, rows)
        if stress:
            results = _stress(raw_url, args, found, cases, rows, step=step)
        else:

            def done(result: CaseResult) -> None:
                row(result, rows)
                step(1)

            results = run_suite(url, cases, settings, caps=found.capabilities, on_result=done)
    seconds = time.monotonic() - started
    footer(results, seconds, out or sys.stdout)
    if args.json:
        write_json(args.json, url.redacted(), found, results, seconds)
    return 1 if any(r.status == FAIL for r in results) else 0


def _stress(
    raw_url: str,
    args: argparse.Namespace,
    found: Probe,
    cases: list[Case],
    out: TextIO,
    *,
    step: Advance,
) -> list[CaseResult]:
    """Run ``args.stress`` copies in child processes (``step`` as each ends); merge their
    results case by case."""
    scheme = TransportURL.parse(raw_url).scheme
    factory = args.factory or factory_reference(scheme)
    env = {**os.environ, URL_ENV: raw_url, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    with tempfile.TemporaryDirectory(prefix="qkconf-stress-") as directory:
        copies = []
        for index in range(args.stress):
            report = os.path.join(directory, f"{index}.json")
            cmd = [sys.executable, "-m", "queuekit.conformance.cli", "-", "--json", report]
            cmd += ["--only", *[c.name for c in cases if c.name != "restart"]]
            cmd += ["--short"] if args.short else []
            cmd += ["--factory", factory] if factory else []
            for option in ("redelivery_timeout", "timeout"):
                if getattr(args, option):
                    cmd += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
            process = subprocess.Popen(
                cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            copies.append((process, report))
        reports: list[dict[str, Any]] = []
        for index, (process, report) in enumerate(copies):
            _, err = process.communicate()
            step(1)
            if not os.path.exists(report):
                tail = redact(err.decode(errors="replace"))[-300:]
                reports.append({"cases": [], "error": f"copy {index} crashed: {tail}"})
            else:
                with open(report, encoding="utf-8") as handle:
                    reports.append(json.load(handle))
    merged = []
    for case in cases:
        if case.name == "restart":
            continue
        mine = [(i, c) for i, r in enumerate(reports) for c in r["cases"] if c["case"] == case.name]
        base = CaseResult(case.name, case.needs, None if case.needs is None else
                          bool(getattr(found.capabilities, case.needs)), PASS)  # fmt: skip
        failures = [f"copy {i}: {c['detail']}" for i, c in mine if c["status"] == FAIL]
        crashed = [r["error"] for r in reports if "error" in r]
        if failures or crashed:
            base.status, base.detail = FAIL, "; ".join((failures + crashed)[:2])
        elif mine:
            base.status, base.detail = mine[0][1]["status"], mine[0][1]["detail"]
            base.seconds = max(c["seconds"] for _, c in mine)
        row(base, out)
        merged.append(base)
    return merged


if __name__ == "__main__":
    sys.exit(command(sys.argv[1:]))
