"""Prometheus metrics, scraped from real ``worker run --metrics-port`` processes on SQLite.

Given messages a worker accepts and messages its ``validate()`` rejects, ``/metrics`` counts
each outcome exactly, times every attempt and shows none in progress; the failed-store gauge
follows. Given two workers sharing ``PROMETHEUS_MULTIPROC_DIR`` (what a supervisor sets for
``--processes``), the one serving sums both. A producer counts what it published.
The test process never enables metrics itself: they are process-wide.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families

from queuekit import connect
from queuekit.jobstore import open_jobstore
from tests.support import wait_until
from tests.workers.harness import child_env, lines, sqlite_url, start_worker, stop


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on ``/metrics``, by name and sorted labels; empty while not serving."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return {}
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:  # fmt: skip
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_every_outcome_of_a_real_run(tmp_path: Path) -> None:
    url, jobstore, port = sqlite_url(tmp_path / "q.db"), sqlite_url(tmp_path / "j.db"), free_port()
    env = {"QUEUEKIT_JOBSTORE": jobstore, "QK_OUT": str(tmp_path / "out.txt")}
    labels = {"queue": "picky", "handler": "PickyQueue"}
    # Given five messages PickyQueue accepts and two it rejects
    with connect(url, jobstore=jobstore) as conn:
        conn.queue("picky").publish_many([{"to": f"u{n}"} for n in range(5)])
        conn.queue("picky").publish_many([{"n": 1}, {"n": 2}])
    # When a worker serving metrics works them off
    worker = start_worker("run", "tests.workers.queues.PickyQueue", "--url", url,
                          "--metrics-port", str(port), cwd=tmp_path, env=env)  # fmt: skip
    try:
        wait_until(lambda: len(lines(tmp_path / "out.txt")) == 5, 30, "five done")

        def settled() -> bool:
            samples = scrape(port)
            done = value(samples, "queuekit_messages_processed_total", outcome="done", **labels)
            return done + value(samples, "queuekit_messages_processed_total",
                                outcome="rejected", **labels) == 7  # fmt: skip

        wait_until(settled, 30, "seven messages counted")
        samples = scrape(port)
        # Then each outcome is counted exactly, every attempt timed, none in progress
        processed = "queuekit_messages_processed_total"
        assert value(samples, processed, outcome="done", **labels) == 5
        assert value(samples, processed, outcome="rejected", **labels) == 2
        assert value(samples, processed, outcome="failed", **labels) == 0
        assert value(samples, "queuekit_message_processing_seconds_count", **labels) == 7
        assert value(samples, "queuekit_message_queue_wait_seconds_count", **labels) == 7
        assert value(samples, "queuekit_messages_in_progress", **labels) == 0
        # And the failed-store gauge follows the two rejected ones
        wait_until(lambda: value(scrape(port), "queuekit_jobstore_failed_messages",
                                 queue="picky") == 2, 30, "the failed gauge")  # fmt: skip
    finally:
        worker.send_signal(signal.SIGTERM)
        stop(worker)


def test_two_processes_sharing_a_multiprocess_dir_add_up(tmp_path: Path) -> None:
    url, jobstore, port = sqlite_url(tmp_path / "q.db"), sqlite_url(tmp_path / "j.db"), free_port()
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {"QUEUEKIT_JOBSTORE": jobstore, "QK_OUT": str(tmp_path / "out.txt"),
           "PROMETHEUS_MULTIPROC_DIR": str(shared)}  # fmt: skip
    args = ("run", "tests.workers.queues.RecordingQueue", "--url", url, "--prefetch", "1")
    # Given two workers writing to one multiprocess directory, one of them serving it
    serving = start_worker(*args, "--metrics-port", str(port), cwd=tmp_path, env=env)
    other = start_worker(*args, cwd=tmp_path, env=env)
    try:
        with closing(open_jobstore(jobstore)) as store:
            wait_until(lambda: len(store.workers("records")) == 2, 30, "both registered")
        # When they work off forty messages between them
        with connect(url, jobstore=jobstore) as conn:
            conn.queue("records").publish_many([{"n": n} for n in range(40)])
        wait_until(lambda: len(lines(tmp_path / "out.txt")) == 40, 30, "forty done")
        # Then the served total is both processes' sum
        labels = {"queue": "records", "handler": "RecordingQueue", "outcome": "done"}
        wait_until(lambda: value(scrape(port), "queuekit_messages_processed_total",
                                 **labels) == 40, 30, "forty counted")  # fmt: skip
        assert {p.name for p in shared.glob("counter_*.db")} == {
            f"counter_{serving.pid}.db", f"counter_{other.pid}.db"}  # fmt: skip
    finally:
        for worker in (serving, other):
            worker.send_signal(signal.SIGTERM)
            stop(worker)


PRODUCER = """
from prometheus_client import generate_latest
from queuekit import connect
from queuekit.jobstore import open_jobstore
from queuekit.worker.metrics import enable_metrics
enable_metrics()
with connect({url!r}, jobstore={jobstore!r}) as conn:
    conn.queue("mail").publish({{"n": 0}})
    conn.queue("mail").publish_many([{{"n": 1}}, {{"n": 2}}])
print(generate_latest().decode())
"""


def test_a_producer_counts_what_it_published(tmp_path: Path) -> None:
    url, jobstore = sqlite_url(tmp_path / "q.db"), sqlite_url(tmp_path / "j.db")
    done = subprocess.run([sys.executable, "-c", PRODUCER.format(url=url, jobstore=jobstore)],
                          env=child_env(), capture_output=True, text=True, check=True,
                          timeout=60)  # fmt: skip
    assert 'queuekit_messages_published_total{queue="mail"} 3.0' in done.stdout
