"""Replaying dead letters puts their original bytes back on the posts topic, once per stage filter."""

from __future__ import annotations

import json
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from postlens.io.deadletter import RawMessage, dead_letter
from postlens.io.kafka import ConsumedMessage, ensure_topics
from postlens.schemas import DEAD_LETTER_SCHEMA_VERSION, VERSION_HEADER, DeadLetter
from postlens.settings import Settings
from stream.commands.replay import ReplayReport, _replayable, replay_dead_letters
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


async def test_replay_reads_letters_of_every_schema_version_and_refuses_newer_ones(
    settings: Settings, kafka_admin: AIOKafkaAdminClient
) -> None:
    run = uuid.uuid4().hex[:8]
    unique = settings.model_copy(
        update={
            "topic_posts": f"test.replay.{run}",
            "topic_dlq": f"test.replay.{run}.dlq",
            "consumer_group": f"t-{run}",
        }
    )
    await ensure_topics(unique)
    new = dead_letter(RawMessage(b'{"id": "new", "text": "x"}', b"new", unique.topic_posts, 0, 5), "infer", "m", "m")
    # Written before dead letters had a schema version, with an Elasticsearch error type as the kind.
    old = {
        "original": '{"id": "old", "text": "x"}',
        "key": "old",
        "source_topic": unique.topic_posts,
        "source_partition": 0,
        "source_offset": 3,
        "error": {"stage": "index", "kind": "mapper_parsing_exception", "message": "m"},
        "failed_at": "2026-11-22T10:00:00Z",
    }
    future = {**new.model_dump(mode="json"), "schema_version": DEAD_LETTER_SCHEMA_VERSION + 1, "key": "future"}
    producer = AIOKafkaProducer(bootstrap_servers=unique.kafka_bootstrap)
    await producer.start()
    for value in (json.dumps(old).encode(), new.model_dump_json().encode(), json.dumps(future).encode()):
        await producer.send_and_wait(unique.topic_dlq, value)
    await producer.stop()

    report = await replay_dead_letters(unique)
    assert (report.replayed, report.unreadable) == (2, 1)
    replayed = await read_topic(unique.kafka_bootstrap, unique.topic_posts)
    assert sorted(key for key, _ in replayed) == [b"new", b"old"]
    await kafka_admin.delete_topics([unique.topic_posts, unique.topic_dlq])


def test_a_letter_is_replayed_with_its_original_version(settings: Settings) -> None:
    """So a replay never overwrites a version of the post that came after it (stream.stages.index)."""
    raw = RawMessage(b'{"id": "a", "text": "x"}', b"a", settings.topic_posts, 2, 17)
    new = dead_letter(raw, "index", "document_refused", "m")
    replayed = dead_letter(
        RawMessage(raw.value, b"a", raw.topic, 0, 900, ((VERSION_HEADER, b"17"),)), "infer", "m", "m"
    )
    old = DeadLetter.model_validate(
        {**new.model_dump(exclude={"schema_version", "source_version"}), "source_offset": 5}
    )

    def header(letter: DeadLetter) -> tuple[tuple[str, bytes], ...]:
        message = ConsumedMessage(RawMessage(letter.model_dump_json().encode(), None, settings.topic_dlq), 0)
        record = _replayable(message, settings, None, ReplayReport())
        assert record is not None
        return record.headers

    assert header(new) == ((VERSION_HEADER, b"17"),)
    assert header(replayed) == ((VERSION_HEADER, b"17"),)  # replayed twice: still the first version
    assert header(old) == ((VERSION_HEADER, b"5"),)  # schema 1: its source offset
