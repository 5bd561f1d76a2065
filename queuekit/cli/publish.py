"""``worker publish QUEUE JSON``: one message; ``worker publish QUEUE --file jobs.jsonl``: one
message per line of a JSON-lines file (``-``: stdin), sent in batches.

A file is read and checked whole before anything is sent: a line that is not JSON (or not
UTF-8) is reported with its number and nothing is published. Blank lines are skipped. The
id of each message is printed on stdout once the broker holds its batch, so after a failure
stdout lists exactly what was published, and stderr says which lines were published, which
were in the batch that failed (the broker may hold some of them) and which were never sent;
``--from-line`` resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from ..client.config import resolve_url
from ..client.connection import connect
from ..client.progress import progress
from ..client.queue import Queue
from ..features.bulk import DEFAULT_BULK_SIZE
from ..spi.errors import QueuekitError
from ..spi.urls import redact
from .common import UsageError

#: How many malformed lines one error message lists.
_SHOWN = 5


@dataclass(frozen=True)
class Line:
    """One message of a JSON-lines file: its line number and payload."""

    number: int
    payload: Any


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    publish = sub.add_parser(
        "publish", help="publish a JSON payload, or every line of a JSON-lines file, to a queue",
        epilog="With --file, message ids go to stdout as their batch reaches the broker; "
               "progress goes to stderr (a bar on a terminal with queuekit[progress]).",
    )  # fmt: skip
    publish.add_argument("queue", metavar="QUEUE")
    publish.add_argument("payload", metavar="JSON", nargs="?", help="the payload (not with --file)")
    publish.add_argument("--file", metavar="PATH",
                         help="publish one message per line of this JSON-lines file ('-': "
                              "stdin); blank lines are skipped")  # fmt: skip
    publish.add_argument("--batch-size", type=int, default=DEFAULT_BULK_SIZE, metavar="N",
                         help="--file: messages per round trip (default %(default)s)")  # fmt: skip
    publish.add_argument("--from-line", type=int, default=1, metavar="N",
                         help="--file: start at line N (to resume after a failure)")  # fmt: skip
    publish.add_argument("--url")
    publish.add_argument("--name", default="", help="handler name stored in the metadata")
    publish.add_argument("--delay", help="seconds, '10 minutes' or an ISO 8601 duration")
    publish.add_argument("--at", help="an ISO 8601 moment to deliver at")
    publish.add_argument("--priority", type=int, help="0-255, higher first")
    publish.add_argument("--key", help="dedup key: dropped while one with this key is pending")
    publish.add_argument("--ever", action="store_true", help="the key holds for ever")
    publish.add_argument("--group", help="serial group: runs after the group's earlier ones")
    publish.set_defaults(func=cmd_publish)


def cmd_publish(args: argparse.Namespace) -> int:
    if (args.file is None) == (args.payload is None):
        raise UsageError("publish takes a JSON payload or --file (one of the two)")
    if args.file is not None and args.key:
        raise UsageError("--key with --file would publish the first line only; give each "
                         "message its own key from code (Queue.publish)")  # fmt: skip
    if args.batch_size < 1 or args.from_line < 1:
        raise UsageError("--batch-size and --from-line must be at least 1")
    if args.file is not None:
        lines = read_lines(args.file, args.from_line)
    else:
        try:
            lines = [Line(0, json.loads(args.payload))]
        except json.JSONDecodeError as exc:
            raise UsageError(f"payload is not JSON: {exc}") from None
    options: dict[str, Any] = {"name": args.name, "delay": args.delay, "priority": args.priority,
                               "key": args.key, "dedup": "ever" if args.ever else "pending",
                               "group": args.group}  # fmt: skip
    with connect(resolve_url(args.url, queue=args.queue)) as conn:
        try:
            if args.at:
                options["delay"] = datetime.fromisoformat(args.at)
            queue = conn.queue(args.queue)
            if args.file is None:
                print(queue.publish(lines[0].payload, **options))
                return 0
            return publish_lines(queue, lines, options, args.batch_size, args.file)
        except (TypeError, ValueError) as exc:  # a bad --delay/--at/--priority
            raise UsageError(str(exc)) from None


def read_lines(path: str, first: int) -> list[Line]:
    """The payloads of ``path`` (``-``: stdin) from line ``first`` on; ``UsageError`` naming
    the malformed lines, before anything is sent."""
    try:
        if path == "-":
            return _parse(sys.stdin.buffer, first)
        with open(path, "rb") as handle:
            return _parse(handle, first)
    except OSError as exc:
        raise UsageError(f"--file {path}: {exc.strerror or exc}") from None


def _parse(handle: IO[bytes], first: int) -> list[Line]:
    found: list[Line] = []
    bad: list[str] = []
    for number, raw in enumerate(handle, start=1):
        if number < first or not raw.strip():
            continue
        try:
            found.append(Line(number, json.loads(raw.rstrip(b"\r\n").decode("utf-8"))))
        except UnicodeDecodeError as exc:
            bad.append(f"line {number}: not UTF-8 ({exc.reason} at byte {exc.start})")
        except json.JSONDecodeError as exc:
            bad.append(f"line {number}: not JSON ({exc.msg} at column {exc.colno})")
    if bad:
        more = f"; and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
        raise UsageError(f"{len(bad)} malformed line(s), nothing published: "
                         f"{'; '.join(bad[:_SHOWN])}{more}")  # fmt: skip
    return found


def publish_lines(
    queue: Queue, lines: Sequence[Line], options: dict[str, Any], size: int, source: str
) -> int:
    """Publish ``lines`` in batches of ``size``; print each id once its batch is sent.

    The batches are flushed here, not by the buffer filling up, so that a failure is either
    one line's (refused before sending: too large, an option the broker lacks) or one
    batch's (the broker failed while taking it: it may hold some of it)."""
    ids: list[str] = []
    printed = 0
    refused: tuple[Line, QueuekitError] | None = None
    failure: QueuekitError | None = None
    batch = queue.bulk(len(lines) + 1)
    with progress(f"publish {queue.name!r}", len(lines)) as advance:

        def report() -> None:  # the ids of every message the broker now holds
            nonlocal printed
            if batch.sent > printed:
                sys.stdout.write("".join(f"{i}\n" for i in ids[printed : batch.sent]))
                sys.stdout.flush()
                advance(batch.sent - printed)
                printed = batch.sent

        try:
            with batch:  # at its end, what is buffered goes out, after a refused line too
                for line in lines:
                    try:
                        ids.append(queue.publish(line.payload, **options))
                    except QueuekitError as exc:
                        refused = (line, exc)
                        break
                    if len(batch.pending) >= size:
                        batch.flush()
                        report()
        except QueuekitError as exc:
            failure = exc
        report()
    where = f"from {'stdin' if source == '-' else source} to {queue.name!r}"
    if refused is None and failure is None:
        print(f"published {printed} message(s) {where}{_span(lines)}", file=sys.stderr)
        return 0
    unsure = lines[printed : len(ids)]  # the batch that failed
    after = len(ids) + (refused is not None)
    text = (f"worker: published {printed} of {len(lines)} message(s) {where}"
            f"{_span(lines[:printed])}")  # fmt: skip
    if failure is not None:
        text += (f"; the batch of {_count(unsure)} failed ({redact(str(failure))}): the broker "
                 "may hold some of them")  # fmt: skip
    if refused is not None:
        text += f"; line {refused[0].number} was refused ({redact(str(refused[1]))})"
    if lines[after:]:
        text += f"; {_count(lines[after:])} were not sent"
    if unsure:
        text += (f". Resume with --from-line {unsure[0].number} (the failed batch again: some "
                 "may run twice)")  # fmt: skip
        resume = refused[0] if refused is not None else (lines[after] if lines[after:] else None)
        if resume is not None:
            text += f" or --from-line {resume.number} (after it)"
    elif refused is not None:
        text += f". Resume with --from-line {refused[0].number} once it is fixed"
    print(text, file=sys.stderr)
    return 1


def _span(lines: Sequence[Line]) -> str:
    if not lines:
        return ""
    first, last = lines[0].number, lines[-1].number
    return f" (line {first})" if first == last else f" (lines {first}-{last})"


def _count(lines: Sequence[Line]) -> str:
    return f"{len(lines)} message(s){_span(lines)}"
