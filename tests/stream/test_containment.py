"""One micro-batch through the real pipeline (Kafka for dead letters, Elasticsearch, a real Triton serving a model
that some posts break): each post that breaks something is dead-lettered with the stage and kind, the others are
indexed — including a fault nobody foresaw (an answer grounded in an image the post lacks), which is narrowed to its
post by splitting the batch."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest
from aiokafka import AIOKafkaProducer
from elasticsearch import AsyncElasticsearch

from postlens.io.connections import es_client
from postlens.io.deadletter import RawMessage
from postlens.io.kafka import ensure_topics
from postlens.schemas import DeadLetter
from postlens.settings import Settings
from stream.metrics import Metrics
from stream.pipeline import Pipeline
from stream.stages.index import ElasticsearchSink
from stream.stages.infer import TritonInferer
from tests.support.kafka_io import read_topic

if TYPE_CHECKING:
    from tests.fixtures_model import ServedModel

pytestmark = pytest.mark.integration


@pytest.fixture
async def world(settings: Settings, faulty_model: ServedModel, es: AsyncElasticsearch) -> AsyncIterator[Settings]:
    run = uuid.uuid4().hex[:8]
    unique = settings.model_copy(
        update={
            "triton_url": faulty_model.url,
            "topic_dlq": f"test.containment.{run}.dlq",
            "es_index_entities": f"postlens-test-{run}-entities",
            "es_index_posts": f"postlens-test-{run}-posts",
        }
    )
    await ensure_topics(unique, {unique.topic_dlq: 1})
    yield unique
    await es.indices.delete(index=f"postlens-test-{run}-*", allow_no_indices=True)
    await es.indices.delete_index_template(name=f"postlens-test-{run}-*")


async def test_each_fault_costs_only_its_post(world: Settings, es: AsyncElasticsearch) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=world.kafka_bootstrap, acks="all")
    await producer.start()

    async def send(key: bytes | None, value: bytes) -> object:
        return await producer.send_and_wait(world.topic_dlq, key=key, value=value)

    texts = {
        "fine-1": "Lyon is a city",
        "poison": "POISON pill",
        "garble": "GARBLE me",
        "region": "REGION here",
        "fine-2": "Paris in spring",
    }
    messages = [
        RawMessage(
            value=json.dumps({"id": key, "text": text}).encode(), key=key.encode(), topic="posts", partition=0, offset=n
        )
        for n, (key, text) in enumerate(texts.items())
    ]
    messages.append(RawMessage(value=b'{"id": "cut', key=b"cut", topic="posts", partition=0, offset=len(messages)))
    metrics = Metrics()
    pipeline = await Pipeline.start(
        world,
        metrics,
        send,
        connect=lambda: TritonInferer.connect(world),
        sink=ElasticsearchSink(es_client(world), world, metrics),
    )
    try:
        await pipeline.process(messages)
    finally:
        await pipeline.close()
        await producer.stop()

    letters = [
        DeadLetter.model_validate_json(value) for _, value in await read_topic(world.kafka_bootstrap, world.topic_dlq)
    ]
    assert sorted((letter.key, letter.error.stage, letter.error.kind) for letter in letters) == [
        ("cut", "ingest", "invalid_json"),
        ("garble", "infer", "bad_answer"),
        ("poison", "infer", "model_error"),
        ("region", "infer", "internal_error"),
    ]
    await es.indices.refresh(index=world.es_index_posts)
    indexed = (await es.search(index=world.es_index_posts, query={"match_all": {}}))["hits"]["hits"]
    assert sorted(hit["_id"] for hit in indexed) == ["fine-1", "fine-2"]
    assert metrics.batch_splits._value.get() >= 1  # noqa: SLF001 — the counter's value
