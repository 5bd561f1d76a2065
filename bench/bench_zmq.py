"""zmq:// throughput: raw pyzmq PUSH/PULL against queuekit, in one run, on one machine.

    .venv/bin/python bench/bench_zmq.py [--messages 200000] [--runs 3] [--prefetch 256]
                                        [--profile]
    .venv/bin/python bench/bench_zmq.py --quick       # smoke run: 5000 messages, one run

Every case runs a producer process and a consumer process (the queuekit cases also run the
routing device, a third process, as `worker zmq-proxy` would). End-to-end rate = messages /
(time the consumer finished the last one - time the producer started). CPU columns are
per-message CPU microseconds of each process (user + system), which is where queuekit's
own cost shows: compare "transport" (bytes only) with "Queue" (envelope + dispatch loop).

The table shows the median of --runs runs per case. The "pre-filled" cases fill the device
first and time the consumer alone (its own capacity). Then: the in-process cost of creating,
encoding and decoding an envelope, and the core's overhead per message taken from this run's
CPU columns (Queue row minus the transport row below it). --profile then prints the cProfile
top functions of one `dispatch()` consumer.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing as mp
import os
import pstats
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import report  # noqa: E402
import zmq  # noqa: E402

from queuekit import Message, Metadata, connect  # noqa: E402
from queuekit.features.envelope import decode, encode  # noqa: E402
from queuekit.spi import Outgoing  # noqa: E402
from queuekit.spi.urls import TransportURL  # noqa: E402

CHUNK = 1000
PROFILES: list[str] = []


def payload(i: int) -> dict[str, Any]:
    return {"n": i, "to": "user@example.org", "subject": "hello"}


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def free_base_port() -> int:
    """A port P with P, P+1, P+2 bindable, below the kernel's ephemeral (client) range."""
    while True:
        base = random.randrange(20_000, 30_000)
        try:
            with socket.socket() as a, socket.socket() as b, socket.socket() as c:
                for offset, sock in enumerate((a, b, c)):
                    sock.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base


@dataclass(frozen=True)
class Spec:
    """What one case's producer and consumer need (passed to the child processes)."""

    n: int
    body: bytes
    url: str = ""
    address: str = ""
    batch: bool = False
    prefetch: int = 16
    store: str = ""
    profile: bool = False
    prefill: bool = False  # fill the queue first, then time the consumer alone


@dataclass
class Result:
    case: str
    rate: float  # end-to-end messages/s
    producer_rate: float
    producer_us: float  # CPU µs per message
    consumer_us: float
    device_us: float


# -- producer and consumer bodies (run in child processes) ----------------------------------


def raw_producer(spec: Spec, ready: Event, out: Any) -> None:
    address, n, body = spec.address, spec.n, spec.body
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 10_000)
    push.connect(address)
    ready.wait()
    c0, t0 = cpu(), time.monotonic()
    for _ in range(n):
        push.send(body)
    out.put(("producer", t0, time.monotonic(), cpu() - c0))
    push.close(linger=-1)
    ctx.term()


def raw_consumer(spec: Spec, ready: Event, out: Any) -> None:
    address, n = spec.address, spec.n
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 10_000)
    pull.bind(address)
    ready.set()
    c0 = cpu()
    for _ in range(n):
        pull.recv()
    out.put(("consumer", 0.0, time.monotonic(), cpu() - c0))
    pull.close(linger=0)
    ctx.term()


def prefill_producer(spec: Spec, ready: Event, out: Any) -> None:
    """Distinct envelopes, encoded before the clock starts, sent in batches."""
    from queuekit.adapters.zmq import ZeroMQTransport

    t = ZeroMQTransport(TransportURL.parse(spec.url))
    bodies = [Outgoing(encode(Message(payload(i)))) for i in range(spec.n)]
    c0, t0 = cpu(), time.monotonic()
    for start in range(0, spec.n, CHUNK):
        t.send_many("bench", bodies[start : start + CHUNK])
    out.put(("producer", t0, time.monotonic(), cpu() - c0))
    t.close()


def transport_producer(spec: Spec, ready: Event, out: Any) -> None:
    url, n, body, batch = spec.url, spec.n, spec.body, spec.batch
    from queuekit.adapters.zmq import ZeroMQTransport

    t = ZeroMQTransport(TransportURL.parse(url))
    ready.wait()
    c0, t0 = cpu(), time.monotonic()
    if batch:
        chunk = [Outgoing(body)] * CHUNK
        for start in range(0, n, CHUNK):
            t.send_many("bench", chunk[: min(CHUNK, n - start)])
    else:
        for _ in range(n):
            t.send("bench", body, {})
    out.put(("producer", t0, time.monotonic(), cpu() - c0))
    t.close()


def transport_consumer(spec: Spec, ready: Event, out: Any) -> None:
    url, n, prefetch = spec.url, spec.n, spec.prefetch
    from queuekit.adapters.zmq import ZeroMQTransport

    t = ZeroMQTransport(TransportURL.parse(url), prefetch=prefetch)
    if not spec.prefill:
        assert t.receive("bench", 0.01) is None  # announces the window
    ready.set()
    t_start, c0, got = time.monotonic(), cpu(), 0
    while got < n:
        delivery = t.receive("bench", 5.0)
        if delivery is None:
            raise SystemExit(f"consumer starved after {got} messages")
        t.ack(delivery)
        got += 1
    out.put(("consumer", t_start, time.monotonic(), cpu() - c0))
    t.close()


def queue_producer(spec: Spec, ready: Event, out: Any) -> None:
    url, store, n, batch = spec.url, spec.store, spec.n, spec.batch
    conn = connect(url, jobstore=store)
    q = conn.queue("bench")
    ready.wait()
    c0, t0 = cpu(), time.monotonic()
    if batch:
        for start in range(0, n, CHUNK):
            q.publish_many(payload(i) for i in range(start, min(n, start + CHUNK)))
    else:
        for i in range(n):
            q.publish(payload(i))
    out.put(("producer", t0, time.monotonic(), cpu() - c0))
    conn.close()


def queue_consumer(spec: Spec, ready: Event, out: Any) -> None:
    url, store, n, prefetch, profile = spec.url, spec.store, spec.n, spec.prefetch, spec.profile
    conn = connect(url, jobstore=store, prefetch=prefetch)
    q = conn.queue("bench")
    if not spec.prefill:
        assert conn.transport.receive("bench", 0.01) is None  # announces the window
    ready.set()

    def work(message: Message) -> None:
        return None

    profiler = cProfile.Profile() if profile else None
    t_start, c0 = time.monotonic(), cpu()
    if profiler:
        profiler.enable()
    done = q.dispatch(work, max_messages=n, handle_signals=False)
    if profiler:
        profiler.disable()
    end, used = time.monotonic(), cpu() - c0
    if done != n:
        raise SystemExit(f"dispatch returned after {done} of {n}")
    text = ""
    if profiler:
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(14)
        text = buf.getvalue()
    out.put(("consumer", t_start, end, used, text))
    conn.close()


# -- orchestration ---------------------------------------------------------------------------


class Device:
    def __init__(self) -> None:
        self.port = free_base_port()
        self.url = f"zmq://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "queuekit.adapters.zmq.proxy", self.url],
            cwd=ROOT,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port + 2), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def cpu(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


Body = Callable[[Spec, Event, Any], None]


def wait_forwarded(device: Device | None, n: int) -> None:
    """Until the device has read all n from the producer: its CPU time stops moving."""
    assert device is not None
    last, quiet = -1.0, 0
    while quiet < 5:
        time.sleep(0.1)
        now = device.cpu()
        quiet = quiet + 1 if now == last else 0
        last = now


def run_case(name: str, spec: Spec, bodies: tuple[Body, Body], device: Device | None) -> Result:
    ctx = mp.get_context("fork")
    ready, out = ctx.Event(), ctx.Queue()
    d0 = device.cpu() if device else 0.0
    cons = ctx.Process(target=bodies[1], args=(spec, ready, out))
    prod = ctx.Process(target=bodies[0], args=(spec, ready, out))
    results = {}
    if spec.prefill:  # fill the device's queue first, then start the consumer
        prod.start()
        item = out.get(timeout=300)
        results[item[0]] = item
        wait_forwarded(device, spec.n)
    else:
        prod.start()
    cons.start()
    while len(results) < 2:
        item = out.get(timeout=300)
        results[item[0]] = item
    prod.join()
    cons.join()
    if cons.exitcode or prod.exitcode:
        raise SystemExit(f"{name}: a process failed")
    n = spec.n
    _, t0, sent, p_cpu = results["producer"][:4]
    _, c_start, finished, c_cpu = results["consumer"][:4]
    producer_rate = n / (sent - t0)
    if spec.prefill:
        t0 = c_start
    if len(results["consumer"]) > 4 and results["consumer"][4]:
        PROFILES.append(results["consumer"][4])
    d_cpu = (device.cpu() - d0) if device else 0.0
    return Result(
        name,
        n / (finished - t0),
        producer_rate,
        p_cpu / n * 1e6,
        c_cpu / n * 1e6,
        d_cpu / n * 1e6,
    )


def micro(n: int) -> list[tuple[str, float]]:
    """In-process µs per message of what the core adds around an adapter."""
    messages = [Message(payload(i), Metadata()) for i in range(n)]
    t = time.perf_counter()
    for i in range(n):
        Message(payload(i), Metadata())
    build = time.perf_counter() - t
    t = time.perf_counter()
    bodies = [encode(m) for m in messages]
    enc = time.perf_counter() - t
    t = time.perf_counter()
    for body in bodies:
        decode(body)
    dec = time.perf_counter() - t
    return [
        ("Message + Metadata (uuid4, time)", build / n * 1e6),
        ("envelope encode", enc / n * 1e6),
        ("envelope decode", dec / n * 1e6),
    ]


def print_overhead(rows: dict[str, Result], decode_us: float) -> None:
    """What queuekit's core adds per message, from the CPU columns of this run: the same
    transport below, with and without the envelope and the dispatch loop on top."""
    pairs = [
        ("producer: Message + envelope + publish_many", "Queue.publish_many -> dispatch(no-op)",
         "transport send_many -> receive/ack", "producer_us"),
        ("consumer: decode + dispatch loop", "pre-filled queue -> dispatch(no-op)",
         "pre-filled queue -> transport receive/ack", "consumer_us"),
    ]  # fmt: skip
    found = [(label, rows[a], rows[b], f) for label, a, b, f in pairs if a in rows and b in rows]
    if not found:
        return
    print("\ncore overhead per message (CPU µs, Queue row minus transport row of this run):")
    for label, with_core, bare, column in found:
        extra = getattr(with_core, column) - getattr(bare, column)
        print(f"  {label:48} {extra:6.2f} µs")
        if column == "consumer_us":
            loop = extra - decode_us
            print(f"  {'  of which the loop (minus envelope decode)':48} {loop:6.2f} µs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prefetch", type=int, default=256)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--only", nargs="*", default=None, help="case name prefixes")
    args = report.parse_args(parser, {"messages": 5000, "runs": 1})
    n, prefetch = args.messages, args.prefetch
    body = encode(Message(payload(0)))
    tmp = tempfile.mkdtemp(prefix="bench-zmq-")
    store = f"sqlite:///{tmp}/jobs.db"

    base = Spec(n=n, body=body, prefetch=prefetch, store=store)
    cases: list[tuple[str, bool, tuple[Body, Body], Spec]] = [
        ("raw pyzmq PUSH->PULL", False, (raw_producer, raw_consumer), base),
        ("transport send -> receive/ack", True, (transport_producer, transport_consumer), base),
        ("transport send_many -> receive/ack", True, (transport_producer, transport_consumer),
         replace(base, batch=True)),
        ("Queue.publish -> dispatch(no-op)", True, (queue_producer, queue_consumer), base),
        ("Queue.publish_many -> dispatch(no-op)", True, (queue_producer, queue_consumer),
         replace(base, batch=True)),
        ("pre-filled queue -> transport receive/ack", True,
         (prefill_producer, transport_consumer), replace(base, prefill=True)),
        ("pre-filled queue -> dispatch(no-op)", True, (prefill_producer, queue_consumer),
         replace(base, prefill=True)),
    ]  # fmt: skip
    if args.only:
        cases = [c for c in cases if any(c[0].startswith(p) for p in args.only)]

    rows = []
    for name, needs_device, bodies, spec in cases:
        runs = []
        for _ in range(args.runs):
            device = Device() if needs_device else None
            try:
                address = f"tcp://127.0.0.1:{free_base_port()}"
                run_spec = replace(spec, url=device.url if device else "", address=address)
                runs.append(run_case(name, run_spec, bodies, device))
            finally:
                if device:
                    device.stop()
        rows.append(
            Result(
                name,
                statistics.median(r.rate for r in runs),
                statistics.median(r.producer_rate for r in runs),
                statistics.median(r.producer_us for r in runs),
                statistics.median(r.consumer_us for r in runs),
                statistics.median(r.device_us for r in runs),
            )
        )
    samples = [micro(min(n, 50_000)) for _ in range(3)]
    costs = {label: statistics.median(s[i][1] for s in samples)
             for i, (label, _) in enumerate(samples[0])}  # fmt: skip
    report.heading(
        "ZeroMQ benchmark",
        f"{n:,} messages of {len(body)} bytes, prefetch {prefetch}, median of {args.runs} "
        f"runs, pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()}).",
    )
    raw = next((r.rate for r in rows if r.case.startswith("raw")), None)
    report.table(
        ["case", "end-to-end msg/s", "/ raw pyzmq", "send msg/s", "prod µs/msg", "cons µs/msg",
         "device µs/msg"],
        [[r.case, r.rate, report.ratio(r.rate, raw) if raw else "", r.producer_rate,
          f"{r.producer_us:.2f}", f"{r.consumer_us:.2f}", f"{r.device_us:.2f}"] for r in rows],
    )  # fmt: skip
    print("In-process cost per message (median of 3):\n")
    for label, value in costs.items():
        print(f"- {label}: {value:.2f} µs")
    print_overhead({r.case: r for r in rows}, costs["envelope decode"])
    if args.profile:
        device = Device()
        try:
            spec = replace(base, prefill=True, profile=True, url=device.url)
            run_case("profile", spec, (prefill_producer, queue_consumer), device)
        finally:
            device.stop()
    for text in PROFILES[:1]:
        print("\ncProfile of one dispatch() consumer draining a pre-filled queue:")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
