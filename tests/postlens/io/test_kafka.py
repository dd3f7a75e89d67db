"""postlens.io.kafka against the real Kafka: the bounded backlog reader and "deliver, then commit"."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from postlens.io.kafka import Backlog, BacklogReader, OutgoingRecord, deliver_then_commit, topic_partitions
from postlens.settings import Settings
from tests.support.kafka_io import read_topic

pytestmark = pytest.mark.integration

PARTITIONS = 2
PUBLISHED = 10


@pytest.fixture
async def topics(kafka_admin: AIOKafkaAdminClient) -> AsyncIterator[list[str]]:
    """Collects the test's topics and deletes them afterwards."""
    created: list[str] = []
    yield created
    await kafka_admin.delete_topics(created)


async def new_topic(admin: AIOKafkaAdminClient, topics: list[str], partitions: int = PARTITIONS, **config: str) -> str:
    name = f"test-kafka-{uuid.uuid4().hex[:8]}"
    await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1, topic_configs=config)])
    topics.append(name)
    return name


async def publish(settings: Settings, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for index, value in enumerate(values):  # spread over the partitions
            await producer.send_and_wait(topic, value, key=value, partition=index % PARTITIONS)
    finally:
        await producer.stop()


async def committed(settings: Settings, group: str, topic: str, partitions: int = PARTITIONS) -> list[int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        return [await consumer.committed(tp) for tp in tps]
    finally:
        await consumer.stop()


def values(count: int, first: int = 0) -> list[bytes]:
    return [f"m{index:02d}".encode() for index in range(first, first + count)]


def group() -> str:
    return f"test-kafka-{uuid.uuid4().hex[:8]}"


async def read_backlog(settings: Settings, topic: str, readers: str, **options: object) -> Backlog:
    """The whole backlog in one read."""
    async with BacklogReader(settings, topic, readers, **options) as reader:
        return await reader.read()


async def test_the_reader_stops_at_the_end_offsets_when_it_opened(
    settings: Settings, kafka_admin: AIOKafkaAdminClient, topics: list[str]
) -> None:
    topic = await new_topic(kafka_admin, topics)
    await publish(settings, topic, values(PUBLISHED))
    async with BacklogReader(settings, topic, group()) as reader:
        await publish(settings, topic, values(5, first=PUBLISHED))  # too late for this reader
        backlog = await reader.read()
        assert reader.done and (await reader.read()).messages == []
    assert sorted(message.raw.value for message in backlog.messages) == values(PUBLISHED)
    assert all(message.raw.topic == topic and message.raw.key == message.raw.value for message in backlog.messages)
    assert all(message.timestamp > 0 for message in backlog.messages)
    assert backlog.offsets == {TopicPartition(topic, p): PUBLISHED // PARTITIONS for p in range(PARTITIONS)}


async def test_the_reader_reads_at_most_max_messages_and_offsets_mark_only_those(
    settings: Settings, kafka_admin: AIOKafkaAdminClient, topics: list[str]
) -> None:
    topic = await new_topic(kafka_admin, topics)
    await publish(settings, topic, values(PUBLISHED))
    backlog = await read_backlog(settings, topic, group(), max_messages=3)
    assert len(backlog.messages) == 3
    read = {(m.raw.partition, m.raw.offset) for m in backlog.messages}
    # Each partition's offset is one past the last message read from it: no message is skipped or marked twice.
    for tp, offset in backlog.offsets.items():
        assert {o for p, o in read if p == tp.partition} == set(range(offset))


async def test_chunked_reads_hand_out_every_message_once(
    settings: Settings, kafka_admin: AIOKafkaAdminClient, topics: list[str]
) -> None:
    topic = await new_topic(kafka_admin, topics)
    await publish(settings, topic, values(PUBLISHED))
    seen: list[bytes] = []
    async with BacklogReader(settings, topic, group()) as reader:
        while not reader.done:
            chunk = await reader.read(3)
            assert 0 < len(chunk.messages) <= 3 and chunk.offsets
            seen += [message.raw.value for message in chunk.messages]
    assert sorted(seen) == values(PUBLISHED)


async def test_reading_resumes_after_the_committed_offsets(
    settings: Settings, kafka_admin: AIOKafkaAdminClient, topics: list[str]
) -> None:
    topic, readers = await new_topic(kafka_admin, topics), group()
    await publish(settings, topic, values(PUBLISHED))
    first = await read_backlog(settings, topic, readers, max_messages=4)
    assert await committed(settings, readers, topic) == [None, None]  # reading alone commits nothing
    await deliver_then_commit(settings, [], readers, first.offsets)
    rest = await read_backlog(settings, topic, readers)
    assert sorted(m.raw.value for m in first.messages + rest.messages) == values(PUBLISHED)
    await deliver_then_commit(settings, [], readers, rest.offsets)
    assert (await read_backlog(settings, topic, readers)).messages == []
    again = await read_backlog(settings, topic, readers, from_beginning=True)
    assert len(again.messages) == PUBLISHED


async def test_a_missing_topic_is_an_empty_backlog_and_is_not_created(settings: Settings) -> None:
    topic = f"test-kafka-missing-{uuid.uuid4().hex[:8]}"
    backlog = await read_backlog(settings, topic, group())
    assert backlog.messages == [] and backlog.offsets == {}
    assert await topic_partitions(settings, topic) == []


async def test_offsets_are_committed_only_after_every_record_is_delivered(
    settings: Settings, kafka_admin: AIOKafkaAdminClient, topics: list[str]
) -> None:
    source, target = await new_topic(kafka_admin, topics), await new_topic(kafka_admin, topics, partitions=1)
    # The broker refuses records over 1 kB on this topic: a delivery that fails after the producer accepted it.
    strict = await new_topic(kafka_admin, topics, partitions=1, **{"max.message.bytes": "1024"})
    await publish(settings, source, values(PUBLISHED))
    readers = group()
    backlog = await read_backlog(settings, source, readers)
    delivered = [OutgoingRecord(target, b"k", b"fine"), OutgoingRecord(target, None, b"also fine")]

    with pytest.raises(KafkaError):
        await deliver_then_commit(
            settings, [*delivered, OutgoingRecord(strict, None, b"x" * 4096)], readers, backlog.offsets
        )
    assert await committed(settings, readers, source) == [None, None]

    await deliver_then_commit(settings, delivered, readers, backlog.offsets)
    assert await committed(settings, readers, source) == [PUBLISHED // PARTITIONS] * PARTITIONS
    # The failed attempt's good records were delivered too: at-least-once, never fewer.
    assert await read_topic(settings.kafka_bootstrap, target) == [(b"k", b"fine"), (None, b"also fine")] * 2
