"""The worker image (`make images` builds it with podman) indexes posts from Kafka into Elasticsearch.

The container runs on the host's network against the local stack's Kafka, Redis and Elasticsearch and a Triton of
this session serving the tiny model; topic, group and indices are this test's own. Needs root and podman (marker
`images`; `make images` builds the image).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from elasticsearch import AsyncElasticsearch

from deploy.process import free_port
from postlens.settings import Settings
from tests.deploy.containers import built_image, logs, running
from tests.fixtures_model import ServedModel

pytestmark = [pytest.mark.images, pytest.mark.integration]

POSTS = 5
TIMEOUT_S = 180.0


async def test_the_worker_image_indexes_posts_from_kafka(
    served_model: ServedModel, settings: Settings, es: AsyncElasticsearch, tmp_path: Path
) -> None:
    image = built_image("worker")
    run = uuid.uuid4().hex[:10]
    env = {
        "POSTLENS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "POSTLENS_TOPIC_POSTS": f"test.image.{run}",
        "POSTLENS_TOPIC_DLQ": f"test.image.{run}.dlq",
        "POSTLENS_CONSUMER_GROUP": f"test-image-{run}",
        "POSTLENS_ES_URL": settings.es_url,
        "POSTLENS_ES_INDEX_ENTITIES": f"postlens-test-image-{run}-entities",
        "POSTLENS_ES_INDEX_POSTS": f"postlens-test-image-{run}-posts",
        "POSTLENS_REDIS_URL": settings.redis_url,
        "POSTLENS_TRITON_URL": served_model.url,
        "POSTLENS_WORKER_WEB_PORT": str(free_port()),
        "POSTLENS_TOPIC_PARTITIONS": "1",
    }
    posts = tmp_path / "posts.jsonl"
    posts.write_text("".join(json.dumps({"id": f"image-{run}-{i}", "text": f"Ada Lovelace in London {i}"}) + "\n"
                             for i in range(POSTS)))  # fmt: skip
    try:
        with running(image, env=env) as name:
            publish = subprocess.run(
                [sys.executable, "-m", "stream", "publish", str(posts), "--topic", env["POSTLENS_TOPIC_POSTS"]],
                capture_output=True, text=True, env={**os.environ, **env}, timeout=120,
            )  # fmt: skip
            assert publish.returncode == 0, publish.stderr
            deadline = time.monotonic() + TIMEOUT_S
            indexed = 0
            while time.monotonic() < deadline and indexed < POSTS:
                if await es.indices.exists(index=env["POSTLENS_ES_INDEX_POSTS"]):
                    await es.indices.refresh(index=env["POSTLENS_ES_INDEX_POSTS"])
                    indexed = (await es.count(index=env["POSTLENS_ES_INDEX_POSTS"]))["count"]
                await asyncio.sleep(2.0)
            assert indexed == POSTS, f"{indexed}/{POSTS} indexed in {TIMEOUT_S:.0f}s; worker log:\n{logs(name)}"
            document = await es.get(index=env["POSTLENS_ES_INDEX_POSTS"], id=f"image-{run}-0")
            assert document["_source"]["model"]["name"] == "postlens"
    finally:
        for index in (env["POSTLENS_ES_INDEX_ENTITIES"], env["POSTLENS_ES_INDEX_POSTS"]):
            await es.options(ignore_status=404).indices.delete(index=index)
