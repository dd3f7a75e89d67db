"""Publishing: keys are post ids, relative image paths can be put under a base URL, topics get their partitions."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from postlens.settings import Settings
from stream.commands.publish import post_key, publish_file, with_image_base
from tests.support.kafka_io import read_topic


def test_key_is_the_post_id_in_string_form() -> None:
    assert post_key(b'{"id": "a1", "text": "x"}') == b"a1"
    assert post_key(b'{"id": 17, "text": "x"}') == b"17"


def test_lines_without_an_id_get_no_key() -> None:
    assert post_key(b"{broken") is None
    assert post_key(b'{"id": true}') is None
    assert post_key(b"[1, 2]") is None


def test_relative_images_are_put_under_the_base_url() -> None:
    line = json.dumps({"id": "1", "text": "x", "images": ["images/a.png", "https://cdn.example/b.png"]}).encode()
    assert json.loads(with_image_base(line, "http://127.0.0.1:8000/data/"))["images"] == [
        "http://127.0.0.1:8000/data/images/a.png",
        "https://cdn.example/b.png",
    ]


@pytest.mark.integration
async def test_publish_puts_every_line_on_the_topic_keyed_by_id(
    settings: Settings, kafka_admin: AIOKafkaAdminClient, tmp_path: Path
) -> None:
    topic = f"test.publish.{uuid.uuid4().hex[:8]}"
    unique = settings.model_copy(update={"topic_posts": topic, "topic_dlq": f"{topic}.dlq", "topic_partitions": 3})
    lines = [json.dumps({"id": i, "text": f"post {i}", "images": ["img/a.png"]}) for i in range(20)] + ["{broken"]
    path = tmp_path / "posts.jsonl"
    path.write_text("\n".join(lines) + "\n\n")

    assert await publish_file(unique, path, image_base="http://127.0.0.1:9/") == 21
    records = await read_topic(unique.kafka_bootstrap, unique.topic_posts)
    assert sorted(key for key, _ in records if key) == sorted(str(i).encode() for i in range(20))
    assert (None, b"{broken") in records  # sent as it is: the worker dead-letters it
    assert json.loads(dict(records)[b"7"])["images"] == ["http://127.0.0.1:9/img/a.png"]
    (description,) = await kafka_admin.describe_topics([unique.topic_posts])
    assert len(description["partitions"]) == 3
    await kafka_admin.delete_topics([unique.topic_posts, unique.topic_dlq])
