"""Reading a topic back in tests: everything on it now, with keys."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer


async def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of every record currently on ``topic``."""
    # Without a group the consumer assigns itself every partition of the topic at start.
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = sorted(consumer.assignment())
        end = await consumer.end_offsets(partitions)
        records: list[tuple[bytes | None, bytes]] = []
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                records.extend((record.key, record.value) for record in batch)
        return records
    finally:
        await consumer.stop()
