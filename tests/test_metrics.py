"""Prometheus metrics, scraped from real ``worker run --metrics-port`` processes on SQLite.

Given messages a worker accepts and messages its ``validate()`` rejects, ``/metrics`` counts
each outcome exactly, times every attempt and shows none in progress; the failed-store gauge
follows. Given two workers sharing ``PROMETHEUS_MULTIPROC_DIR``, the one serving sums both;
given ``worker run --processes 2 --metrics-port``, the supervisor serves its children's sum,
keeps a SIGKILLed child's counts and drops its in-progress gauge. A producer counts what it
published.
The test process never enables metrics itself: they are process-wide.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from contextlib import closing
from pathlib import Path

import psutil
import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families

from queuekit import connect
from queuekit.jobstore import open_jobstore
from tests.support import wait_until
from tests.workers.harness import child_env, lines, run_worker, sqlite_url, start_worker, stop


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


def test_a_supervisor_serves_its_childrens_sum_and_forgets_a_killed_childs_gauges(
    tmp_path: Path,
) -> None:
    url, jobstore, port = (
        sqlite_url(tmp_path / "q.db", lease="2"),
        sqlite_url(tmp_path / "j.db"),
        free_port(),
    )
    out, events, release = tmp_path / "out.txt", tmp_path / "events.txt", tmp_path / "release"
    env = {"QUEUEKIT_JOBSTORE": jobstore, "QK_OUT": str(out), "QK_EVENTS": str(events),
           "QK_RELEASE": str(release), "TMPDIR": str(tmp_path)}  # fmt: skip
    labels = {"queue": "gated", "handler": "GatedQueue"}

    def metric(name: str, **more: str) -> float:
        return value(scrape(port), name, **labels, **more)

    def children() -> list[int]:
        return sorted(c.pid for c in psutil.Process(supervisor.pid).children())

    def hold_two(first: int) -> None:
        """Publish two gated messages and wait until each child holds one."""
        with connect(url, jobstore=jobstore) as conn:
            conn.queue("gated").publish_many([{"n": first}, {"n": first + 1}])
        wait_until(lambda: {f"started {first}", f"started {first + 1}"} <= set(lines(events)),
                   30, f"messages {first} and {first + 1} in hand")  # fmt: skip

    # Given a supervisor of two workers (one message each at a time) serving metrics
    supervisor = start_worker("run", "tests.workers.queues.GatedQueue", "--url", url,
                              "--processes", "2", "--prefetch", "1", "--metrics-port", str(port),
                              cwd=tmp_path, env=env, log=tmp_path / "supervisor.log")  # fmt: skip
    try:
        wait_until(lambda: len(children()) == 2, 30, "two children")
        directory = Path(psutil.Process(children()[0]).environ()["PROMETHEUS_MULTIPROC_DIR"])
        assert directory.parent == tmp_path and directory.name.startswith("queuekit-metrics-")
        # When each child has done one message
        hold_two(1)
        release.touch()
        wait_until(lambda: metric("queuekit_messages_processed_total", outcome="done") == 2,
                   30, "two done")  # fmt: skip
        # And each holds another when one of them is killed
        release.unlink()
        hold_two(3)
        wait_until(lambda: metric("queuekit_messages_in_progress") == 2, 30, "two in progress")
        killed = children()[0]
        os.kill(killed, signal.SIGKILL)
        wait_until(lambda: len(children()) == 2 and killed not in children(), 30,
                   "the killed child replaced")  # fmt: skip
        release.touch()
        # Then the total is every message processed: the killed child's one done is still
        # counted, and its message in hand, redelivered, is done once more by another child
        wait_until(lambda: sorted(lines(out)) == ["1", "2", "3", "4"], 30, "four done")
        wait_until(lambda: metric("queuekit_messages_processed_total", outcome="done") == 4,
                   30, "four counted")  # fmt: skip
        # And its in-progress gauge left the sum; its counter file stayed
        assert metric("queuekit_messages_in_progress") == 0
        assert (directory / f"counter_{killed}.db").exists()
        assert not (directory / f"gauge_livesum_{killed}.db").exists()
    finally:
        supervisor.send_signal(signal.SIGTERM)
        status = supervisor.wait(timeout=60)
        stop(supervisor)
    # And the supervisor leaves no directory behind
    assert status == 0, (tmp_path / "supervisor.log").read_text()
    assert not directory.exists()
    assert scrape(port) == {}


def test_a_supervisor_whose_port_is_taken_stops_and_leaves_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = run_worker("run", "tests.workers.queues.RecordingQueue", "--processes", "2",
                          "--metrics-port", port, "--url", sqlite_url(tmp_path / "q.db"),
                          cwd=tmp_path, env={"TMPDIR": str(tmp_path)})  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith(f"worker: --metrics-port {port}: ")
    assert not list(tmp_path.glob("queuekit-metrics-*"))


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
