"""``python -m stream replay-dlq``: publish dead letters' original bytes to the posts topic again (after a fix).

Progress is kept as the committed offsets of a consumer group per stage filter (``…-dlq-replay-index``,
``…-dlq-replay-all``), so a replay resumes where the last one stopped and replaying one stage does not use up the
dead letters of another. Replayed posts are indexed idempotently, so replaying a letter twice is harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from postlens.schemas import DeadLetter
from postlens.settings import Settings
from postlens.io.deadletter import original_bytes
from postlens.io.kafka import ensure_topics

log = logging.getLogger(__name__)


@dataclass
class ReplayReport:
    replayed: int = 0
    skipped: int = 0  # another stage, or nothing to replay
    unreadable: int = 0  # not a dead letter at all


async def replay_dead_letters(settings: Settings, stage: str | None = None) -> ReplayReport:
    """Replay every dead letter (of ``stage``) written before the call; returns what was done."""
    await ensure_topics(settings)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.consumer_group}-dlq-replay-{stage or 'all'}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    report = ReplayReport()
    try:
        partitions = [TopicPartition(settings.topic_dlq, p) for p in await producer.partitions_for(settings.topic_dlq)]
        consumer.assign(partitions)
        end = await consumer.end_offsets(partitions)
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:  # until caught up
            deliveries = []
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    try:
                        letter = DeadLetter.model_validate_json(record.value)
                    except ValidationError:
                        log.warning("offset %d of %s is not a dead letter; skipped", record.offset, record.topic)
                        report.unreadable += 1
                        continue
                    value = original_bytes(letter)
                    if (stage and letter.error.stage != stage) or value is None:
                        report.skipped += 1
                        continue
                    key = letter.key.encode("utf-8") if letter.key is not None else None
                    deliveries.append(await producer.send(settings.topic_posts, value=value, key=key))
                    report.replayed += 1
            for delivery in deliveries:
                await delivery
            await consumer.commit()  # only after the re-published posts are on the posts topic
    finally:
        await producer.stop()
        await consumer.stop()
    return report
