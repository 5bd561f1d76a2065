"""Cases one process can check through the Transport contract (issue cases 1-3, 5, 7-14, 17)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from ..spi.errors import MessageTooLarge, Unsupported
from ..spi.priorities import PriorityRange
from ..spi.topics import topic_matches
from ..spi.transport import Outgoing, SendOptions, Transport
from .cases import case
from .context import CaseFailure, Context, NotApplicable, check, drain, expect, expect_nothing
from .context import ids_report as _ids_report
from .strategies import envelope_examples, raw_examples, same_value


def _bodies(prefix: str, count: int) -> list[bytes]:
    tag = uuid.uuid4().hex[:8]
    return [f"{prefix}-{tag}-{i:05d}".encode() for i in range(count)]


def _send_batched(transport: Transport, queue: str, bodies: list[bytes], batch: int = 100) -> None:
    for start in range(0, len(bodies), batch):
        transport.send_many(queue, [Outgoing(b) for b in bodies[start : start + batch]])


@case(1, "round_trip")
def round_trip(ctx: Context) -> None:
    """Raw bytes, headers and envelopes (nested JSON, unicode, big ints, bytes) come back equal."""
    producer, consumer = ctx.open(), ctx.open()
    queue = ctx.queue("roundtrip")
    timeout = ctx.settings.receive_timeout

    def raw(body: bytes, headers: dict[str, str]) -> None:
        producer.send(queue, body, headers)
        delivery = expect(consumer, queue, timeout, "raw message")
        consumer.ack(delivery)
        check(
            delivery.body == body, f"body changed: sent {body[:40]!r}, got {delivery.body[:40]!r}"
        )
        check(
            delivery.headers == headers,
            f"headers changed: sent {headers!r}, got {delivery.headers!r}",
        )

    def envelope(payload: Any, headers: dict[str, str]) -> None:
        from ..features.envelope import Message, Metadata, decode, encode

        producer.send(queue, encode(Message(payload, Metadata(headers=headers))), {})
        delivery = expect(consumer, queue, timeout, "envelope")
        consumer.ack(delivery)
        back = decode(delivery.body)
        check(same_value(back.payload, payload), f"payload changed: sent {payload!r:.80}")
        check(back.headers == headers, f"envelope headers changed: sent {headers!r}")

    raw_examples(ctx.settings.examples, raw)
    envelope_examples(ctx.settings.examples, envelope)


@case(2, "no_loss")
def no_loss(ctx: Context) -> None:
    """N messages, one consumer: every one received exactly once."""
    queue = ctx.queue("noloss")
    bodies = _bodies("m", ctx.settings.messages)
    _send_batched(ctx.open(), queue, bodies)
    consumer = ctx.open()
    got = drain(consumer, queue, len(bodies), ctx.settings.receive_timeout)
    got += drain(consumer, queue, len(bodies), ctx.settings.quiet)  # late duplicates
    problem = _ids_report([b.decode() for b in bodies], [d.body.decode() for d in got])
    check(not problem, f"of {len(bodies)} messages: {problem}")


@case(2, "poll")
def poll(ctx: Context) -> None:
    """``receive(queue, 0)`` takes a message that is there, or returns None at once; none lost."""
    queue = ctx.queue("poll")
    bodies = _bodies("p", 100)
    _send_batched(ctx.open(), queue, bodies)
    consumer = ctx.open()
    got: list[str] = []
    longest = 0.0  # the longest receive(queue, 0) once messages were arriving
    deadline = time.monotonic() + ctx.settings.receive_timeout
    while len(got) < len(bodies) and time.monotonic() < deadline:
        started = time.monotonic()
        delivery = consumer.receive(queue, 0)
        if got:
            longest = max(longest, time.monotonic() - started)
        if delivery is None:
            time.sleep(0.01)
            continue
        consumer.ack(delivery)
        got.append(delivery.body.decode())
    got += [d.body.decode() for d in drain(consumer, queue, len(bodies), ctx.settings.quiet)]
    problem = _ids_report([b.decode() for b in bodies], got)
    check(not problem, f"of {len(bodies)} messages polled with receive(queue, 0): {problem}")
    check(
        longest < ctx.settings.quiet,
        f"receive(queue, 0) blocked for {longest:.2f} s (it must return at once when nothing"
        " is there: the worker takes messages that are there already with it)",
    )


@case(3, "fifo", needs="fifo")
def fifo(ctx: Context) -> None:
    """One producer, one consumer: received in the order sent (single sends and batches)."""
    queue = ctx.queue("fifo")
    count = min(ctx.settings.messages, 200)
    bodies = _bodies("f", count)
    producer = ctx.open()
    for body in bodies[: count // 2]:
        producer.send(queue, body, {})
    _send_batched(producer, queue, bodies[count // 2 :], batch=25)
    got = [d.body for d in drain(ctx.open(), queue, count, ctx.settings.receive_timeout)]
    check(len(got) == count, f"received {len(got)} of {count} messages")
    for position, (sent, received) in enumerate(zip(bodies, got, strict=True)):
        check(
            sent == received,
            f"order broken at position {position}: expected {sent!r}, got {received!r}",
        )


@case(5, "ack")
def ack(ctx: Context) -> None:
    """Acked messages never come back, on the same connection or after reconnecting."""
    queue = ctx.queue("ack")
    bodies = _bodies("a", 20)
    _send_batched(ctx.open(), queue, bodies)
    consumer = ctx.open()
    got = drain(consumer, queue, len(bodies), ctx.settings.receive_timeout)
    check(len(got) == len(bodies), f"received {len(got)} of {len(bodies)} messages")
    expect_nothing(consumer, queue, ctx.settings.quiet, "an acked message came back")
    consumer.close()
    expect_nothing(
        ctx.open(), queue, ctx.settings.quiet, "an acked message came back after reconnecting"
    )


@case(7, "nack_requeue", needs="nack_requeue")
def nack_requeue(ctx: Context) -> None:
    """nack(requeue=True) comes back; nack(requeue=False) does not."""
    queue = ctx.queue("nack")
    ctx.open().send(queue, b"nack-me", {})
    consumer = ctx.open()
    first = expect(consumer, queue, ctx.settings.receive_timeout, "message to nack")
    consumer.nack(first, requeue=True)
    again = expect(consumer, queue, ctx.settings.receive_timeout, "after nack(requeue=True)")
    check(again.body == b"nack-me", f"requeued message changed: {again.body[:40]!r}")
    consumer.nack(again, requeue=False)
    expect_nothing(consumer, queue, ctx.settings.quiet, "after nack(requeue=False) it came back")
    expect_nothing(
        ctx.open(), queue, ctx.settings.quiet, "after nack(requeue=False), a new connection"
    )


@case(8, "durable", needs="durable")
def durable(ctx: Context) -> None:
    """Published, every connection closed, a new connection receives it."""
    queue = ctx.queue("durable")
    bodies = _bodies("d", 5)
    _send_batched(ctx.open(), queue, bodies)
    ctx.close_all()
    got = drain(ctx.open(), queue, len(bodies), ctx.settings.receive_timeout)
    problem = _ids_report([b.decode() for b in bodies], [d.body.decode() for d in got])
    check(not problem, f"after closing every connection: {problem}")


@case(9, "delay", needs="delay")
def delay(ctx: Context) -> None:
    """Not received before ``not_before``; received within the delay plus the tolerance."""
    queue = ctx.queue("delay")
    wait, tolerance = ctx.settings.delay, ctx.settings.delay_tolerance
    producer = ctx.open()
    due = time.time() + wait
    producer.send(queue, b"later", {}, options=SendOptions(not_before=due))
    producer.send(queue, b"now", {})
    consumer = ctx.open()
    first = expect(consumer, queue, ctx.settings.receive_timeout, "an undelayed message")
    received_at = time.time()
    check(
        first.body == b"now",
        f"the delayed message arrived {due - received_at:.2f}s before its not_before",
    )
    consumer.ack(first)
    later = expect(consumer, queue, max(due - time.time(), 0) + tolerance, "the delayed message")
    received_at = time.time()
    consumer.ack(later)
    check(received_at >= due - 0.01, f"received {due - received_at:.3f}s before its not_before")
    check(
        received_at <= due + tolerance,
        f"received {received_at - due:.2f}s late (tolerance {tolerance:g}s)",
    )


@case(10, "priority", needs="priority")
def priority(ctx: Context) -> None:
    """With all waiting, higher priorities are received first."""
    queue = ctx.queue("priority")
    levels = [10, 200, 0, 255, 100, 50]
    producer = ctx.open()
    for level in levels:
        producer.send(queue, str(level).encode(), {}, options=SendOptions(priority=level))
    if ctx.declares("inspect"):
        _wait_depth(producer, queue, len(levels), ctx.settings.receive_timeout)
    consumer = ctx.open(prefetch=1)  # opened after every send returned: all are waiting
    got = drain(consumer, queue, len(levels), ctx.settings.receive_timeout)
    order = [int(d.body) for d in got]
    check(len(order) == len(levels), f"received {len(order)} of {len(levels)} messages: {order}")
    check(order == sorted(levels, reverse=True), f"received priorities in order {order}")


@case(10, "priority_range", needs="priority_range")
def priority_range(ctx: Context) -> None:
    """A consumer restricted to a priority range takes only those; the rest stay waiting."""
    queue = ctx.queue("priority-range")
    only, levels = _range_and_levels(ctx.capabilities.priority_bands)
    producer = ctx.open()
    for level in levels:
        producer.send(queue, str(level).encode(), {}, options=SendOptions(priority=level))
    restricted = ctx.open(prefetch=4)
    taken: list[int] = []
    while (delivery := restricted.receive_priorities(
        queue, ctx.settings.quiet, only
    )) is not None:  # fmt: skip
        taken.append(int(delivery.body))
        restricted.ack(delivery)
    inside = sorted(level for level in levels if level in only)
    check(sorted(taken) == inside, f"a {only} consumer took priorities {taken}")
    outside = sorted(level for level in levels if level not in only)
    rest = [int(d.body) for d in drain(producer, queue, len(outside), ctx.settings.receive_timeout)]
    check(sorted(rest) == outside, f"an unrestricted consumer then got {rest}")


def _range_and_levels(bands: tuple[int, ...] | None) -> tuple[PriorityRange, list[int]]:
    """10-40, or the second band where an adapter serves ranges on band boundaries; levels on
    and next to both ends of it, and the extremes."""
    if bands is None:
        return PriorityRange(10, 40), [0, 9, 10, 25, 40, 41, 255]
    if not bands:  # a single band: only the whole scale is a range
        return PriorityRange(0, 255), [0, 128, 255]
    low, high = bands[0], (bands[1] - 1 if len(bands) > 1 else 255)
    levels = [0, low - 1, low, (low + high) // 2, high, high + 1, 255]
    return PriorityRange(low, high), sorted({level for level in levels if 0 <= level <= 255})


@case(11, "dedup", needs="dedup")
def dedup(ctx: Context) -> None:
    """The same key published twice while pending is delivered once."""
    queue = ctx.queue("dedup")
    producer = ctx.open()
    key, other = f"k-{uuid.uuid4().hex}", f"k-{uuid.uuid4().hex}"
    producer.send(queue, b"first", {}, options=SendOptions(dedup_key=key))
    producer.send(queue, b"second", {}, options=SendOptions(dedup_key=key))
    producer.send(queue, b"other", {}, options=SendOptions(dedup_key=other))
    consumer = ctx.open()
    got = drain(consumer, queue, 2, ctx.settings.receive_timeout)
    got += drain(consumer, queue, 3, ctx.settings.quiet)
    bodies = sorted(d.body for d in got)
    check(bodies == [b"first", b"other"], f"expected first and other once each, got {bodies}")


@case(12, "fanout", needs="fanout")
def fanout(ctx: Context) -> None:
    """Two subscribers each receive every broadcast; another topic's subscriber nothing."""
    topic, elsewhere = ctx.topic_root(), ctx.topic_root()
    subscribers = [ctx.open(), ctx.open(), ctx.open()]
    names = [
        ctx.subscribe(s, p) for s, p in zip(subscribers, [topic, topic, elsewhere], strict=True)
    ]
    bodies = _bodies("b", 10)
    publisher = ctx.open()
    for body in bodies:
        publisher.broadcast(topic, body, {})
    received = [
        drain(subscribers[i], names[i], len(bodies), ctx.settings.receive_timeout) for i in (0, 1)
    ]
    time.sleep(ctx.settings.quiet)  # a listening window for duplicates
    for index in (0, 1):
        got = received[index] + drain(subscribers[index], names[index], len(bodies), 0.01)
        problem = _ids_report([b.decode() for b in bodies], [d.body.decode() for d in got])
        check(not problem, f"subscriber {index + 1}: {problem}")
    expect_nothing(subscribers[2], names[2], ctx.settings.quiet, "a subscriber of another topic")


#: pattern suffix -> topic suffixes it must match (``*`` one word, ``#`` zero or more).
_PATTERNS: dict[str, set[str]] = {
    "*": {"a"},
    "#": {"", "a", "a.b", "x.b", "a.b.c"},
    "*.b": {"a.b", "x.b"},
    "a.#": {"a", "a.b", "a.b.c"},
    "a.*.c": {"a.b.c"},
    "z.*": set(),
}
_TOPICS = ["", "a", "a.b", "x.b", "a.b.c"]


@case(12, "topics", needs="topics")
def topics(ctx: Context) -> None:
    """Patterns: ``*`` one word, ``#`` zero or more; a non-matching subscriber gets nothing."""
    root = ctx.topic_root()
    full = {suffix: f"{root}.{suffix}" if suffix else root for suffix in _TOPICS}
    subscriptions: dict[str, tuple[Transport, str]] = {}
    for suffix in _PATTERNS:
        transport = ctx.open()
        subscriptions[suffix] = (transport, ctx.subscribe(transport, f"{root}.{suffix}"))
    publisher = ctx.open()
    for suffix, topic in full.items():
        publisher.broadcast(topic, (suffix or "<root>").encode(), {})
    received_by: dict[str, list[bytes]] = {}
    for pattern, expected in _PATTERNS.items():
        assert all(topic_matches(f"{root}.{pattern}", full[t]) for t in expected)
        transport, name = subscriptions[pattern]
        got = drain(transport, name, len(expected), ctx.settings.receive_timeout)
        received_by[pattern] = [d.body for d in got]
    time.sleep(ctx.settings.quiet)  # a listening window for deliveries that must not come
    for pattern, expected in _PATTERNS.items():
        transport, name = subscriptions[pattern]
        late = drain(transport, name, len(_TOPICS), 0.01)
        received = sorted(b.decode() for b in received_by[pattern] + [d.body for d in late])
        wanted = sorted(t or "<root>" for t in expected)
        check(received == wanted, f"pattern ROOT.{pattern} received {received}, expected {wanted}")


@case(13, "size")
def size(ctx: Context) -> None:
    """A message of max_message_size (or 1 MiB) round-trips; a larger one is refused."""
    limit = ctx.capabilities.max_message_size
    length = limit or 1024 * 1024
    body = (bytes(range(256)) * (length // 256 + 1))[:length]
    queue = ctx.queue("size")
    producer, consumer = ctx.open(), ctx.open()
    producer.send(queue, body, {})
    delivery = expect(consumer, queue, ctx.settings.receive_timeout, f"a {length}-byte message")
    consumer.ack(delivery)
    check(
        len(delivery.body) == length, f"{length}-byte body came back as {len(delivery.body)} bytes"
    )
    check(delivery.body == body, f"{length}-byte body came back changed")
    if limit is None:
        return
    try:
        producer.send(queue, body + b"!", {})
    except MessageTooLarge:
        pass
    else:
        back = consumer.receive(queue, ctx.settings.quiet)
        shown = "nothing arrived" if back is None else f"{len(back.body)} bytes arrived"
        raise CaseFailure(f"a {length + 1}-byte body (limit {limit}) was not refused; {shown}")
    expect_nothing(consumer, queue, ctx.settings.quiet, "a refused message")


@case(14, "isolation")
def isolation(ctx: Context) -> None:
    """Messages on one queue never appear on another."""
    first, second, third = ctx.queue("iso1"), ctx.queue("iso2"), ctx.queue("iso3")
    producer, consumer = ctx.open(), ctx.open()
    _send_batched(producer, first, _bodies("one", 20))
    _send_batched(producer, second, _bodies("two", 20))
    for queue, prefix in ((first, b"one-"), (second, b"two-")):
        got = drain(consumer, queue, 20, ctx.settings.receive_timeout)
        got += drain(consumer, queue, 20, ctx.settings.quiet)
        strays = [d.body for d in got if not d.body.startswith(prefix)]
        check(not strays, f"{len(strays)} messages of another queue arrived: {strays[:3]}")
        check(len(got) == 20, f"received {len(got)} of 20 messages")
    expect_nothing(consumer, third, ctx.settings.quiet, "a queue nobody published to")


@case(14, "inspect", needs="inspect")
def inspect(ctx: Context) -> None:
    """depth() counts waiting messages (not un-acked ones); purge() drops and counts them."""
    queue = ctx.queue("inspect")
    producer = ctx.open()
    _send_batched(producer, queue, _bodies("i", 5))
    _wait_depth(producer, queue, 5, ctx.settings.receive_timeout)
    consumer = ctx.open(prefetch=1)
    held = expect(consumer, queue, ctx.settings.receive_timeout, "a message")
    _wait_depth(producer, queue, 4, ctx.settings.receive_timeout)
    consumer.ack(held)
    dropped = producer.purge(queue)
    check(dropped == 4, f"purge() reported {dropped} dropped, expected 4")
    _wait_depth(producer, queue, 0, ctx.settings.receive_timeout)
    expect_nothing(consumer, queue, ctx.settings.quiet, "after purge()")


def _wait_depth(transport: Transport, queue: str, wanted: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (depth := transport.depth(queue)) != wanted:
        check(time.monotonic() < deadline, f"depth() is {depth}, expected {wanted}")
        time.sleep(0.02)


@case(17, "unsupported")
def unsupported(ctx: Context) -> None:
    """Asking for an undeclared capability raises Unsupported, never a silent no-op."""
    queue = ctx.queue("unsupported")
    transport = ctx.open()
    probes: list[tuple[str, Callable[[], object]]] = []
    options = {
        "delay": SendOptions(not_before=time.time() + 60),
        "priority": SendOptions(priority=9),
        "dedup": SendOptions(dedup_key="k"),
    }
    takes_priority = ctx.capabilities.takes_priority
    for flag, option in options.items():
        if not ctx.declares(flag) and not (flag == "priority" and takes_priority):
            probes.append(
                (f"send with {flag}", partial(transport.send, queue, b"x", {}, options=option))
            )
    root = ctx.topic_root()
    if not ctx.declares("fanout"):
        probes.append(("broadcast", lambda: transport.broadcast(root, b"x", {})))
        probes.append(("subscribe", lambda: ctx.subscribe(transport, root)))
    elif not ctx.declares("topics"):
        probes.append(("subscribe with a pattern", lambda: ctx.subscribe(transport, f"{root}.*")))
    if not ctx.declares("priority_range"):
        only = PriorityRange(10, 40)
        probes.append(("receive_priorities", lambda: transport.receive_priorities(queue, 0, only)))
    if not ctx.declares("inspect"):
        probes.append(("depth", lambda: transport.depth(queue)))
        probes.append(("purge", lambda: transport.purge(queue)))
    if not probes:
        raise NotApplicable("every capability is declared")
    for what, probe in probes:
        try:
            probe()
        except Unsupported:
            continue
        raise CaseFailure(f"{what} did not raise Unsupported")
    expect_nothing(transport, queue, ctx.settings.quiet, "a refused send was delivered")
