"""Topic patterns shared by every adapter that matches topics itself.

Topics are dot-separated words. In a pattern ``*`` matches exactly one word and ``#``
matches zero or more words, as in AMQP topic exchanges.
"""

from __future__ import annotations

from functools import lru_cache


def topic_matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` matches ``pattern`` (``*`` one word, ``#`` any number of words)."""
    return _match(tuple(pattern.split(".")), tuple(topic.split(".")))


@lru_cache(maxsize=1024)
def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head in ("*", words[0])) and _match(rest, words[1:])
