"""``python -m stream publish``: put posts (or labels, with ``--topic``) from a JSONL file on a topic, keyed by id.

Lines are sent as they are (the worker validates them, so a bad line becomes a dead letter, as it would from any
producer); only ``--image-base`` rewrites a line, turning relative image paths into URLs under that base.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from aiokafka import AIOKafkaProducer
from tqdm import tqdm

from postlens.io.connections import kafka_client_options
from postlens.io.kafka import ensure_topics
from postlens.settings import Settings


def post_key(line: bytes) -> bytes | None:
    try:
        document = json.loads(line)
    except ValueError:
        return None
    post_id = document.get("id") if isinstance(document, dict) else None
    return str(post_id).encode("utf-8") if isinstance(post_id, str | int) and not isinstance(post_id, bool) else None


def with_image_base(line: bytes, image_base: str) -> bytes:
    document = json.loads(line)
    document["images"] = [
        url if urlsplit(url).scheme else urljoin(image_base, url) for url in document.get("images", [])
    ]
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


async def publish_file(
    settings: Settings, path: Path, rate: float | None = None, image_base: str | None = None, topic: str | None = None
) -> int:
    """Publish every non-blank line of ``path`` to ``topic`` (default: the posts topic); ``rate`` caps messages per
    second. Returns the number published."""
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    await ensure_topics(settings)
    producer = AIOKafkaProducer(**kafka_client_options(settings), acks="all", linger_ms=5)
    await producer.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        deliveries = []
        for count, line in enumerate(tqdm(lines, desc="publishing", unit="post")):
            if rate:
                await asyncio.sleep(max(0.0, started + count / rate - loop.time()))
            value = with_image_base(line, image_base) if image_base and post_key(line) else line
            deliveries.append(await producer.send(topic or settings.topic_posts, value=value, key=post_key(line)))
        await asyncio.gather(*deliveries)
    finally:
        await producer.stop()
    return len(lines)
