"""The commit ledger: offsets become committable only across a finished prefix of each partition, whatever order
messages finish in; revoked partitions and re-delivered messages never commit anything."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from stream.commits import CommitLedger


def test_an_unfinished_message_holds_back_everything_after_it() -> None:
    ledger: CommitLedger[int] = CommitLedger()
    first, second, third = (ledger.received(0, offset) for offset in (10, 11, 12))
    ledger.finished(third)
    ledger.finished(second)
    assert ledger.committable() == {}  # 10 is still in flight
    ledger.finished(first)
    assert ledger.committable() == {0: 13}
    ledger.committed({0: 13})
    assert ledger.committable() == {} and ledger.in_flight == 0


def test_the_offset_right_after_the_last_commit_is_not_skipped() -> None:
    """faust-streaming#606: with offset C committed-up-to and C+1.. acked, Faust commits past C."""
    ledger: CommitLedger[int] = CommitLedger()
    waiting = ledger.received(0, 5)
    ledger.finished(ledger.received(0, 6))
    ledger.finished(ledger.received(0, 7))
    assert ledger.committable() == {}
    ledger.finished(waiting)
    assert ledger.committable() == {0: 8}


def test_partitions_are_independent() -> None:
    ledger: CommitLedger[str] = CommitLedger()
    slow = ledger.received("a", 0)
    ledger.finished(ledger.received("b", 0))
    assert ledger.committable() == {"b": 1}
    ledger.finished(slow)
    assert ledger.committable() == {"a": 1, "b": 1}


def test_a_revoked_partition_commits_nothing_even_when_its_batch_finishes_late() -> None:
    ledger: CommitLedger[int] = CommitLedger()
    late = ledger.received(0, 3)
    ledger.forget({0})
    again = ledger.received(0, 3)  # reassigned: the message comes again from the committed offset
    ledger.finished(late)
    assert ledger.committable() == {}
    ledger.finished(again)
    assert ledger.committable() == {0: 4}


def test_a_rewind_counts_only_the_new_deliveries() -> None:
    ledger: CommitLedger[int] = CommitLedger()
    old = [ledger.received(0, offset) for offset in (0, 1, 2)]
    ledger.finished(old[0])
    again = [ledger.received(0, offset) for offset in (1, 2)]  # the consumer went back to 1
    ledger.finished(old[1])
    ledger.finished(old[2])
    assert ledger.committable() == {0: 1}
    for message in again:
        ledger.finished(message)
    assert ledger.committable() == {0: 3}


@given(st.lists(st.integers(0, 3), min_size=1, max_size=60), st.randoms(use_true_random=False))
def test_any_finishing_order_never_commits_past_an_unfinished_message(
    partitions: list[int], rng: random.Random
) -> None:
    ledger: CommitLedger[int] = CommitLedger()
    next_offset = dict.fromkeys(range(4), 0)
    messages = []
    for partition in partitions:
        messages.append(ledger.received(partition, next_offset[partition]))
        next_offset[partition] += 1
    rng.shuffle(messages)
    finished: set[tuple[int, int]] = set()
    for message in messages:
        ledger.finished(message)
        finished.add((message.partition, message.offset))
        for partition, offset in ledger.committable().items():
            assert all((partition, earlier) in finished for earlier in range(offset))
    assert ledger.committable() == {p: n for p, n in next_offset.items() if n}
