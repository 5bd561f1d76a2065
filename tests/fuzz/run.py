"""Fuzz the parsers of tests/fuzz/targets.py for longer than CI does.

    .venv/bin/python -m tests.fuzz.run                      # every target, 20000 examples each
    .venv/bin/python -m tests.fuzz.run gearman_job -n 1000000
    .venv/bin/python -m tests.fuzz.run envelope --atheris -- -max_total_time=600

The default engine is hypothesis (installed with queuekit): random bytes and each target's
seeds (well-formed inputs) with bytes spliced in. ``--atheris`` hands one target to
libFuzzer through atheris (``pip install 'queuekit[fuzz]'``), coverage-guided over
queuekit's and stomp.py's code, with libFuzzer's own options after ``--``
(``-max_total_time``, ``-max_len``, a corpus directory; without one, the target's seeds
start the corpus). A failure prints the input that broke the contract; add it to
tests/test_hostile_input.py as a regression test when you fix it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

TARGETS_MODULE = "tests.fuzz.targets"


def run_hypothesis(targets: ModuleType, names: list[str], examples: int, max_size: int) -> int:
    from hypothesis import HealthCheck, given, settings

    failed = 0
    for name in names:

        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(targets.inputs(name, max_size))
        def check(data: bytes, name: str = name) -> None:
            targets.TARGETS[name](data)

        started = time.monotonic()
        try:
            check()
        except Exception as exc:  # report every target, then fail
            failed += 1
            print(f"| {name} | FAILED: {type(exc).__name__}: {exc} |")
            continue
        print(f"| {name} | {examples} examples ok in {time.monotonic() - started:.1f}s |")
    return 1 if failed else 0


def run_atheris(atheris: ModuleType, targets: ModuleType, name: str, args: list[str]) -> int:
    """libFuzzer on one target; with no corpus directory given, one made of its seeds."""
    if not any(not a.startswith("-") for a in args):
        corpus = Path(tempfile.mkdtemp(prefix=f"queuekit-fuzz-{name}-"))
        for number, seed in enumerate(targets.SEEDS[name]):
            (corpus / f"seed-{number}").write_bytes(seed)
        args = [*args, str(corpus)]
    atheris.Setup([sys.argv[0], *args], targets.TARGETS[name])
    atheris.Fuzz()
    return 0


def load_targets(atheris: ModuleType | None) -> ModuleType:
    """The targets module; under atheris, with queuekit and stomp.py instrumented as they
    are imported (instrumenting everything loaded takes minutes)."""
    if atheris is None:
        return importlib.import_module(TARGETS_MODULE)
    with atheris.instrument_imports(include=["queuekit", "stomp"]):
        return importlib.import_module(TARGETS_MODULE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET", help="default: all")
    parser.add_argument("-n", "--examples", type=int, default=20000)
    parser.add_argument("--max-size", type=int, default=8192, help="largest input, bytes")
    parser.add_argument("--atheris", action="store_true", help="coverage-guided, one target")
    args, rest = parser.parse_known_args(argv)
    atheris = None
    if args.atheris:
        try:
            atheris = importlib.import_module("atheris")
        except ImportError:
            parser.error("atheris is not installed: pip install 'queuekit[fuzz]'")
    targets = load_targets(atheris)
    names = args.targets or sorted(targets.TARGETS)
    unknown = set(names) - targets.TARGETS.keys()
    if unknown:
        parser.error(f"unknown target(s) {', '.join(sorted(unknown))}; "
                     f"known: {', '.join(sorted(targets.TARGETS))}")  # fmt: skip
    logging.disable(logging.WARNING)  # parsers log what they drop; the contract is checked
    if atheris is not None:
        if len(names) != 1:
            parser.error("--atheris fuzzes one target: name it")
        return run_atheris(atheris, targets, names[0], [a for a in rest if a != "--"])
    print("| target | result |\n| --- | --- |")
    with contextlib.suppress(KeyboardInterrupt):
        return run_hypothesis(targets, names, args.examples, args.max_size)
    return 130


if __name__ == "__main__":
    sys.exit(main())
