"""Creating PostLens' Kafka topics with the configured partitions before anything produces to them.

A producer writing to a missing topic would have the broker auto-create it with its default (often one) partition,
and one partition cannot be split between workers.
"""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from postlens.settings import Settings

log = logging.getLogger(__name__)

# One partition keeps dead letters in the order they failed; their volume is small.
DLQ_PARTITIONS = 1


async def ensure_topics(settings: Settings, wanted: dict[str, int] | None = None) -> None:
    """Create the ``wanted`` topics (name → partitions; default: the posts topic and its DLQ) that do not exist."""
    if wanted is None:
        wanted = {settings.topic_posts: settings.topic_partitions, settings.topic_dlq: DLQ_PARTITIONS}
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
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
