"""Replaying dead letters puts their original bytes back on the posts topic, once per stage filter."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from postlens.io.deadletter import RawMessage, dead_letter
from postlens.io.kafka import ensure_topics
from postlens.settings import Settings
from stream.commands.replay import replay_dead_letters
from tests.support.kafka_io import read_topic

pytestmark = pytest.mark.integration


async def test_replay_republishes_original_bytes_and_remembers_progress(
    settings: Settings, kafka_admin: AIOKafkaAdminClient
) -> None:
    run = uuid.uuid4().hex[:8]
    unique = settings.model_copy(
        update={
            "topic_posts": f"test.replay.{run}",
            "topic_dlq": f"test.replay.{run}.dlq",
            "consumer_group": f"test-{run}",
        }
    )
    await ensure_topics(unique)
    letters = [
        dead_letter(RawMessage(b'{"id": "a", "text": "x"}', b"a", unique.topic_posts, 0, 1), "index", "mapping", "m"),
        dead_letter(RawMessage(b"{broken", None, unique.topic_posts, 0, 2), "ingest", "invalid_json", "j"),
        dead_letter(RawMessage(b"\xff\xfe", b"c", unique.topic_posts, 1, 3), "ingest", "invalid_utf8", "u"),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=unique.kafka_bootstrap)
    await producer.start()
    for letter in letters:
        await producer.send_and_wait(unique.topic_dlq, letter.model_dump_json().encode(), key=None)
    await producer.send_and_wait(unique.topic_dlq, b"not a dead letter")
    await producer.stop()

    only_index = await replay_dead_letters(unique, stage="index")
    assert (only_index.replayed, only_index.skipped, only_index.unreadable) == (1, 2, 1)
    assert await read_topic(unique.kafka_bootstrap, unique.topic_posts) == [(b"a", b'{"id": "a", "text": "x"}')]

    everything = await replay_dead_letters(unique)  # its own progress: starts from the first letter
    assert everything.replayed == 3
    replayed = await read_topic(unique.kafka_bootstrap, unique.topic_posts)
    assert sorted(value for _, value in replayed) == sorted(
        [b'{"id": "a", "text": "x"}', b'{"id": "a", "text": "x"}', b"{broken", b"\xff\xfe"]
    )
    assert (await replay_dead_letters(unique)).replayed == 0  # already replayed: offsets were committed
    await kafka_admin.delete_topics([unique.topic_posts, unique.topic_dlq])
