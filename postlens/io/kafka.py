"""Kafka for PostLens: creating its topics, reading a consumer group's backlog, and "deliver, then commit".

- :func:`ensure_topics` creates topics with the configured partitions before anything produces to them: a producer
  writing to a missing topic would have the broker auto-create it with its default (often one) partition, and one
  partition cannot be split between workers.
- :class:`BacklogReader` reads what a group has not consumed yet, bounded by the end offsets when reading starts,
  so a run ends even while producers keep writing; at once or in chunks.
- :func:`deliver_then_commit` publishes what came of the messages and commits them only once Kafka has it all, so a
  crash in between reads them again instead of losing them (at-least-once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code
from tqdm import tqdm

from postlens.io.connections import kafka_client_options
from postlens.io.deadletter import RawMessage
from postlens.settings import Settings

log = logging.getLogger(__name__)

# One partition keeps dead letters in the order they failed; their volume is small.
DLQ_PARTITIONS = 1

Offsets = dict[TopicPartition, int]  # per partition, the offset of the next message not yet consumed


class OutgoingRecord(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class ConsumedMessage:
    raw: RawMessage
    timestamp: int  # milliseconds since the epoch, as Kafka recorded it


@dataclass
class Backlog:
    """Messages read, in partition order, and the offsets to commit once they have been dealt with."""

    messages: list[ConsumedMessage] = field(default_factory=list)
    offsets: Offsets = field(default_factory=dict)


async def ensure_topics(settings: Settings, wanted: dict[str, int] | None = None) -> None:
    """Create the ``wanted`` topics (name → partitions; default: the posts topic and its DLQ) that do not exist."""
    if wanted is None:
        wanted = {settings.topic_posts: settings.topic_partitions, settings.topic_dlq: DLQ_PARTITIONS}
    admin = AIOKafkaAdminClient(**kafka_client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=partitions, replication_factor=settings.topic_replication)
            for name, partitions in wanted.items()
            if name not in existing
        ]
        if missing:
            response = await admin.create_topics(missing)
            for name, code, *detail in response.topic_errors:
                error = for_code(code)
                # Another worker starting at the same moment may have created it first.
                if code != 0 and error is not TopicAlreadyExistsError:
                    raise error(f"cannot create topic {name}: {detail[0] if detail else ''}")
            log.info("created topics %s", ", ".join(topic.name for topic in missing))
    finally:
        await admin.close()


async def topic_partitions(settings: Settings, topic: str) -> list[int]:
    """The partitions of ``topic`` (none when it does not exist). Asks for all topics' metadata: asking for one by
    name would have the broker create it."""
    admin = AIOKafkaAdminClient(**kafka_client_options(settings))
    await admin.start()
    try:
        described = [entry for entry in await admin.describe_topics() if entry["topic"] == topic]
    finally:
        await admin.close()
    return sorted(partition["partition"] for entry in described for partition in entry["partitions"])


class BacklogReader:
    """Reads ``topic`` after ``group``'s committed offsets (or from the beginning) up to the end offsets at the time
    it is opened, at most ``max_messages`` in all, in as many :meth:`read` calls as the caller likes.

    It never commits: the caller commits each :class:`Backlog`'s offsets when it is done with it
    (:func:`deliver_then_commit`). ``progress`` names a tqdm bar over the whole backlog (none when ``None``).
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        group: str,
        from_beginning: bool = False,
        max_messages: int | None = None,
        progress: str | None = None,
    ) -> None:
        self._settings, self._topic, self._group = settings, topic, group
        self._from_beginning, self._max_messages, self._progress_name = from_beginning, max_messages, progress
        self._consumer: AIOKafkaConsumer | None = None
        self._end: Offsets = {}
        self._consumed: Offsets = {}  # what the backlogs handed out so far mark consumed
        self._remaining = 0
        self._progress: tqdm | None = None

    async def __aenter__(self) -> BacklogReader:
        partitions = [TopicPartition(self._topic, p) for p in await topic_partitions(self._settings, self._topic)]
        if not partitions:
            return self
        consumer = AIOKafkaConsumer(
            **kafka_client_options(self._settings),
            group_id=self._group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        self._consumer = consumer
        consumer.assign(partitions)  # a bounded reader needs every partition, not a share of a group's
        for tp in partitions:
            committed = None if self._from_beginning else await consumer.committed(tp)
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
        self._consumed = {tp: await consumer.position(tp) for tp in partitions}
        self._end = await consumer.end_offsets(partitions)
        backlog = sum(max(0, self._end[tp] - self._consumed[tp]) for tp in partitions)
        self._remaining = backlog if self._max_messages is None else min(backlog, self._max_messages)
        if self._progress_name is not None:
            self._progress = tqdm(
                total=self._remaining, desc=self._progress_name, unit="message", disable=not self._remaining
            )
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._progress is not None:
            self._progress.close()
        if self._consumer is not None:
            await self._consumer.stop()

    @property
    def remaining(self) -> int:
        """Messages left to read: up to the end offsets at opening, at most ``max_messages`` in all."""
        return self._remaining

    @property
    def done(self) -> bool:
        """Nothing is left to read: every partition is at its end offset, or ``max_messages`` were read."""
        return self._remaining == 0

    async def read(self, max_messages: int | None = None) -> Backlog:
        """The next messages of the backlog (all that are left, or at most ``max_messages``) and the offsets that mark
        them consumed."""
        backlog = Backlog()
        consumer = self._consumer
        if consumer is None or self.done:
            return backlog
        wanted = self._remaining if max_messages is None else min(self._remaining, max_messages)
        consumed = dict(self._consumed)
        pending = [tp for tp in self._end if await consumer.position(tp) < self._end[tp]]
        while pending and len(backlog.messages) < wanted:
            # max_records: everything fetched is used, so a partition's position is exactly what was consumed.
            batches = await consumer.getmany(*pending, timeout_ms=1000, max_records=wanted - len(backlog.messages))
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= self._end[tp]:  # published after reading started: the next reader's
                        break
                    raw = RawMessage(record.value, record.key, record.topic, record.partition, record.offset)
                    backlog.messages.append(ConsumedMessage(raw, record.timestamp))
                    consumed[tp] = record.offset + 1
            pending = [tp for tp in pending if await consumer.position(tp) < self._end[tp]]
        self._remaining -= len(backlog.messages)
        for tp, end in self._end.items():  # read to the end: mark it so (skips offsets without a record, like markers)
            if await consumer.position(tp) >= end:
                consumed[tp] = max(consumed[tp], end)
        if not pending:  # the backlog is shorter than its offsets said (markers, compaction)
            self._remaining = 0
        backlog.offsets = {tp: offset for tp, offset in consumed.items() if offset > self._consumed[tp]}
        self._consumed = consumed
        if self._progress is not None:
            self._progress.update(len(backlog.messages))
        return backlog


async def deliver_then_commit(
    settings: Settings, records: Sequence[OutgoingRecord], group: str, offsets: Offsets
) -> None:
    """Publish ``records`` with ``acks=all``, wait until Kafka has every one, and only then commit ``offsets`` for
    ``group``. A failed delivery raises, and nothing is committed."""
    if records:
        producer = AIOKafkaProducer(**kafka_client_options(settings), acks="all")
        await producer.start()
        try:
            deliveries = [
                await producer.send(record.topic, value=record.value, key=record.key, headers=list(record.headers))
                for record in records
            ]
            await asyncio.gather(*deliveries)
        finally:
            await producer.stop()
    if offsets:
        consumer = AIOKafkaConsumer(**kafka_client_options(settings), group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign(list(offsets))
            await consumer.commit(offsets)
        finally:
            await consumer.stop()
