"""CPU-bound jobs: ``worker run --processes 2`` against one ``worker run`` process.

The same ``--jobs`` jobs (each a pure-Python loop of ``--work`` iterations, holding the GIL
all the time, so threads could not help) on a fresh SQLite file per run; rows alternate
round-robin, ``--runs`` times, and report the median. A job writes when it started and ended;
a row's rate is jobs over first start to last end (start-up not counted), and its wall time
runs from launching the command to the last job done (start-up counted). The issue asks for
2 processes to do at least 1.8x one on a 2-core machine; other work on the machine takes
from that.

Run: ``.venv/bin/python bench/bench_processes.py`` (about a minute; ``--quick`` for a smoke
run). Needs nothing but a local disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import report

from queuekit import AbstractQueue, Message, connect

HERE = Path(__file__).resolve().parent


class CpuJobs(AbstractQueue):
    """Counts to the payload, then appends ``START END`` (wall clock) to ``$BENCH_OUT``."""

    queue = "cpu"

    def work(self, message: Message) -> None:
        started = time.time()
        total = 0
        for i in range(message.payload):
            total += i * i
        with open(os.environ["BENCH_OUT"], "a", encoding="ascii") as out:
            out.write(f"{started} {time.time()}\n")


def run(processes: int, jobs: int, work: int) -> tuple[float, float]:
    """One row's run: (jobs/s from first start to last end, wall seconds from launch)."""
    directory = Path(tempfile.mkdtemp(prefix="qk-bench-processes-"))
    try:
        url, out = f"sqlite:///{directory}/bench.db", directory / "done.txt"
        with connect(url) as conn:
            conn.queue("cpu").publish_many([work] * jobs)
        worker = Path(sys.executable).parent / "worker"
        extra = ["--processes", str(processes)] if processes > 1 else []
        launched = time.time()
        process = subprocess.Popen(
            [str(worker), "run", "bench_processes:CpuJobs", "--url", url, *extra],
            cwd=HERE, env={**os.environ, "BENCH_OUT": str(out)}, stdin=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            while not out.exists() or out.read_text().count("\n") < jobs:
                if process.poll() is not None:
                    raise RuntimeError(f"worker exited with {process.returncode} before the end")
                time.sleep(0.05)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        spans = [tuple(map(float, line.split())) for line in out.read_text().splitlines()]
        first, last = min(s for s, _ in spans), max(e for _, e in spans)
        return jobs / (last - first), last - launched
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--work", type=int, default=400_000, help="loop iterations per job")
    parser.add_argument("--runs", type=int, default=3)
    args = report.parse_args(parser, {"jobs": 20, "work": 100_000, "runs": 1})
    rows = {"one `worker run` process": 1, "`worker run --processes 2`": 2}
    rates: dict[str, list[float]] = {name: [] for name in rows}
    walls: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.runs):  # round-robin: a noisy moment hits both rows alike
        for name, processes in rows.items():
            rate, wall = run(processes, args.jobs, args.work)
            rates[name].append(rate)
            walls[name].append(wall)
    one = statistics.median(rates["one `worker run` process"])
    report.heading(
        "CPU-bound jobs, one process vs a supervisor with two (SQLite)",
        f"{args.jobs} jobs of {args.work:,} loop iterations each, median of {args.runs} "
        "run(s); rate over first job started to last job done, wall time from launch.",
    )
    report.table(
        ["worker", "jobs/s", "wall s", "vs one process"],
        [[name, statistics.median(rates[name]), f"{statistics.median(walls[name]):.2f}",
          report.ratio(statistics.median(rates[name]), one)] for name in rows],
    )  # fmt: skip


if __name__ == "__main__":
    main()
