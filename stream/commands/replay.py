"""``python -m stream replay-dlq``: publish dead letters' original bytes to the posts topic again (after a fix).

Progress is kept as the committed offsets of a consumer group per stage filter (``…-dlq-replay-index``,
``…-dlq-replay-all``), so a replay resumes where the last one stopped and replaying one stage does not use up the
dead letters of another. Letters are handled in chunks, each committed only once its posts are on the posts topic.
Replayed posts are indexed idempotently, so replaying a letter twice is harmless; each is re-published with its
original version (header ``postlens-version``), so it never overwrites a newer version of its post. Letters of every
schema version up to :data:`postlens.schemas.DEAD_LETTER_SCHEMA_VERSION` are read (1: those written before the field
existed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import ValidationError

from postlens.io.deadletter import original_bytes, original_key
from postlens.io.kafka import BacklogReader, ConsumedMessage, OutgoingRecord, deliver_then_commit, ensure_topics
from postlens.schemas import DEAD_LETTER_SCHEMA_VERSION, VERSION_HEADER, DeadLetter
from postlens.settings import Settings

log = logging.getLogger(__name__)

# Dead letters held in memory at once: a large DLQ is replayed chunk by chunk.
REPLAY_CHUNK = 1000


@dataclass
class ReplayReport:
    replayed: int = 0
    skipped: int = 0  # another stage, or nothing to replay
    unreadable: int = 0  # not a dead letter, or one of a newer schema than this PostLens reads


async def replay_dead_letters(settings: Settings, stage: str | None = None) -> ReplayReport:
    """Replay every dead letter (of ``stage``) written before the call; returns what was done."""
    await ensure_topics(settings)
    group = f"{settings.consumer_group}-dlq-replay-{stage or 'all'}"
    report = ReplayReport()
    async with BacklogReader(settings, settings.topic_dlq, group, progress="replaying dead letters") as reader:
        while not reader.done:
            chunk = await reader.read(REPLAY_CHUNK)
            posts = [post for message in chunk.messages if (post := _replayable(message, settings, stage, report))]
            await deliver_then_commit(settings, posts, group, chunk.offsets)
    return report


def _replayable(
    message: ConsumedMessage, settings: Settings, stage: str | None, report: ReplayReport
) -> OutgoingRecord | None:
    """The post a dead letter holds, to publish again; ``None`` (counted in ``report``) when there is none."""
    try:
        letter = DeadLetter.model_validate_json(message.raw.value or b"")
    except ValidationError:
        log.warning("offset %d of %s is not a dead letter; skipped", message.raw.offset, message.raw.topic)
        report.unreadable += 1
        return None
    if letter.schema_version > DEAD_LETTER_SCHEMA_VERSION:  # written by a newer PostLens: its shape is unknown here
        log.warning("offset %d is a dead letter of schema %d; skipped", message.raw.offset, letter.schema_version)
        report.unreadable += 1
        return None
    value = original_bytes(letter)
    if (stage and letter.error.stage != stage) or value is None:
        report.skipped += 1
        return None
    report.replayed += 1
    # The original version, so the replayed post never overwrites one that came after it.
    version = letter.source_version if letter.source_version is not None else letter.source_offset
    headers = ((VERSION_HEADER, str(version).encode("ascii")),) if version is not None else ()
    return OutgoingRecord(settings.topic_posts, original_key(letter), value, headers)
