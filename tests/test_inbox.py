"""The inbox in the job store (SQLite, PostgreSQL, MariaDB): a message id is processed
once per consumer; a failed attempt or a dead claim lets it run again."""

from __future__ import annotations

import threading

import pytest

from queuekit import Inbox, RetryLater
from queuekit.jobstore import open_jobstore
from queuekit.jobstore.base import INBOX_BUSY, INBOX_DONE, INBOX_NEW, JobStore


def test_a_claim_is_new_then_busy_then_done(store: JobStore) -> None:
    assert store.inbox_claim("billing", "m1", lease=60) == INBOX_NEW
    assert store.inbox_claim("billing", "m1", lease=60) == INBOX_BUSY
    assert store.inbox_claim("shipping", "m1", lease=60) == INBOX_NEW  # per consumer
    store.inbox_done("billing", "m1")
    assert store.inbox_claim("billing", "m1", lease=60) == INBOX_DONE
    assert store.inbox_claim("billing", "m1", lease=0) == INBOX_DONE  # done stays done


def test_a_released_or_dead_claim_can_be_taken_again(store: JobStore) -> None:
    assert store.inbox_claim("c", "released", lease=60) == INBOX_NEW
    store.inbox_release("c", "released")
    assert store.inbox_claim("c", "released", lease=60) == INBOX_NEW
    assert store.inbox_claim("c", "dead", lease=60) == INBOX_NEW
    assert store.inbox_claim("c", "dead", lease=-1) == INBOX_NEW  # its lease ran out: died


def test_racing_claimers_get_one_new(store_url: str) -> None:
    stores = [open_jobstore(store_url) for _ in range(4)]
    answers: list[str] = []
    barrier = threading.Barrier(len(stores))

    def claim(own: JobStore) -> None:
        barrier.wait()
        answers.extend(own.inbox_claim("c", f"m{n}", lease=60) for n in range(20))

    threads = [threading.Thread(target=claim, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for own in stores:
        own.close()
    assert answers.count(INBOX_NEW) == 20 and answers.count(INBOX_BUSY) == 60


def test_once_runs_the_first_copy_and_retries_after_a_failure(store: JobStore) -> None:
    inbox = Inbox(store, "billing")
    with pytest.raises(ValueError), inbox.once("m") as first:
        assert first
        raise ValueError("the charge failed")  # the claim is forgotten: a retry runs it
    with inbox.once("m") as first:
        assert first
    with inbox.once("m") as first:
        assert not first  # a duplicate
    assert store.inbox_claim("other", "busy", lease=60) == INBOX_NEW
    with pytest.raises(RetryLater), Inbox(store, "other").once("busy"):
        pass
    assert inbox.prune(-1) == 1  # processed "more than -1 s ago": now
    with inbox.once("m") as first:
        assert first  # forgotten
