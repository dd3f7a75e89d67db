"""Dead letters against the real Kafka: a letter the topic refuses for good never wedges the writer, and a topic
that refuses every letter is waited out as an outage — nothing skipped, the whole letter written once it is back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from postlens.io.deadletter import DeadLetterWriter, RawMessage, dead_letter, original_bytes
from postlens.schemas import DeadLetter
from postlens.settings import Settings
from tests.support.kafka_io import read_topic

pytestmark = pytest.mark.integration


@pytest.fixture
async def small_topic(kafka_admin: AIOKafkaAdminClient) -> AsyncIterator[str]:
    """A dead-letter topic that takes messages of at most 2 KiB (a topic's ``max.message.bytes``)."""
    name = f"test-dlq-{uuid.uuid4().hex[:8]}"
    await kafka_admin.create_topics(
        [NewTopic(name, num_partitions=1, replication_factor=1, topic_configs={"max.message.bytes": "2048"})]
    )
    yield name
    await kafka_admin.delete_topics([name])


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    client = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await client.start()
    yield client
    await client.stop()


def letter_of(value: bytes, key: bytes) -> tuple[RawMessage, DeadLetter]:
    raw = RawMessage(value=value, key=key, topic="posts", partition=0, offset=len(value))
    return raw, dead_letter(raw, "ingest", "schema", "refused")


async def test_a_letter_too_large_for_the_topic_is_written_minimal_and_the_others_whole(
    settings: Settings, small_topic: str, producer: AIOKafkaProducer
) -> None:
    letters = [letter_of(b'{"id": "big", "text": "' + b"x" * 20_000 + b'"}', b"big"), letter_of(b"{}", b"small")]
    writer = DeadLetterWriter(
        lambda key, value: producer.send_and_wait(small_topic, value, key=key), max_bytes=900_000, max_delay_s=1.0
    )
    await asyncio.wait_for(writer.write(letters), timeout=60)
    written = {
        (key, DeadLetter.model_validate_json(value).source_offset): value
        for key, value in await read_topic(settings.kafka_bootstrap, small_topic)
    }
    big = DeadLetter.model_validate_json(written[(None, letters[0][0].offset)])
    assert big.original_truncated and big.original_size == len(letters[0][0].value) and big.original_sha256
    small = DeadLetter.model_validate_json(written[(b"small", letters[1][0].offset)])
    assert original_bytes(small) == b"{}"  # a letter that fits is not cut


async def test_a_topic_refusing_every_letter_is_an_outage_until_it_takes_them(
    settings: Settings, small_topic: str, producer: AIOKafkaProducer, kafka_admin: AIOKafkaAdminClient
) -> None:
    await kafka_admin.alter_configs(
        [ConfigResource(ConfigResourceType.TOPIC, small_topic, configs={"max.message.bytes": "64"})]
    )
    outages: list[BaseException] = []
    writer = DeadLetterWriter(
        lambda key, value: producer.send_and_wait(small_topic, value, key=key),
        max_bytes=900_000,
        max_delay_s=0.5,
        on_outage=outages.append,
    )
    raw, letter = letter_of(b'{"id": "p", "text": "held"}', b"p")
    writing = asyncio.ensure_future(writer.write([(raw, letter)]))
    await asyncio.sleep(5)
    assert not writing.done() and outages  # held, not skipped, and said so
    await kafka_admin.alter_configs(
        [ConfigResource(ConfigResourceType.TOPIC, small_topic, configs={"max.message.bytes": "1048588"})]
    )
    await asyncio.wait_for(writing, timeout=60)
    [(_key, value)] = await read_topic(settings.kafka_bootstrap, small_topic)
    assert original_bytes(DeadLetter.model_validate_json(value)) == raw.value  # whole once it fits
