"""Order-safe offset commits: an offset is committed only once every message before it on its partition finished.

faust-streaming's own ack bookkeeping cannot be trusted with out-of-order completions: ``Consumer._new_offset``
commits past an un-acked offset when the acks after it start right behind the last commit (faust-streaming#606),
and a rebalance drops its acks uncommitted while late acks of revoked partitions are still recorded. So the posts
topic is consumed with Faust's acks off, and the worker keeps this ledger and commits what it says.

Per partition the ledger holds the messages received and not yet finished, in offset order; finishing one (indexed or
dead-lettered) moves the partition's safe offset only across the finished prefix. A process that dies mid-window
has committed nothing past its oldest unfinished message; after a rebalance the ledger forgets the partition, so a
batch of the old assignment finishing late commits nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Partition = TypeVar("Partition", bound=Hashable)


@dataclass(eq=False)
class Received(Generic[Partition]):
    """One message in the ledger; handed back to :meth:`CommitLedger.finished`."""

    partition: Partition
    offset: int
    done: bool = False


@dataclass
class _PartitionLog(Generic[Partition]):
    waiting: deque[Received[Partition]] = field(default_factory=deque)  # offset order
    safe: int | None = None  # every offset below it finished: the offset to commit
    committed: int | None = None


class CommitLedger(Generic[Partition]):
    def __init__(self) -> None:
        self._logs: dict[Partition, _PartitionLog[Partition]] = {}

    def received(self, partition: Partition, offset: int) -> Received[Partition]:
        log = self._logs.setdefault(partition, _PartitionLog())
        # An offset at or before one still waiting: the consumer went back (a seek); the messages from there on come
        # again, and only their new deliveries count.
        while log.waiting and log.waiting[-1].offset >= offset:
            log.waiting.pop()
        message = Received(partition, offset)
        log.waiting.append(message)
        return message

    def finished(self, message: Received[Partition]) -> None:
        """Mark the message indexed or dead-lettered; a message the ledger forgot (revoked, re-delivered) is ignored."""
        log = self._logs.get(message.partition)
        if log is None or message.done:
            return
        message.done = True
        while log.waiting and log.waiting[0].done:
            log.safe = log.waiting.popleft().offset + 1

    def committable(self) -> dict[Partition, int]:
        """Per partition, the offset that may be committed now (only where it moved since the last commit)."""
        return {
            partition: log.safe
            for partition, log in self._logs.items()
            if log.safe is not None and (log.committed is None or log.safe > log.committed)
        }

    def committed(self, offsets: dict[Partition, int]) -> None:
        for partition, offset in offsets.items():
            if (log := self._logs.get(partition)) is not None:
                log.committed = max(offset, log.committed or 0)

    def forget(self, partitions: set[Partition]) -> None:
        """The partitions were revoked: their messages still in flight must never be committed by this process."""
        for partition in partitions:
            self._logs.pop(partition, None)

    @property
    def in_flight(self) -> int:
        return sum(len(log.waiting) for log in self._logs.values())
