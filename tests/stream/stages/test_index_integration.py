"""Indexing against the real Elasticsearch: re-processing leaves exactly the latest entities, refused documents are
reported for dead-lettering, and an outage is waited out."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from elasticsearch import AsyncElasticsearch
from pydantic import SecretStr

from postlens.io.connections import es_client
from postlens.io.deadletter import RawMessage
from postlens.io.fetch import FetchOutcome
from postlens.schemas import ModelRef, Post, PostPrediction, PredictedEntity
from postlens.settings import Settings
from stream.metrics import Metrics
from stream.results import ProcessedPost
from stream.stages.index import ElasticsearchSink
from stream.stages.index_templates import ENTITIES_MAPPINGS, POSTS_MAPPINGS
from tests.support.auth_proxy import AuthProxy
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


@pytest.fixture
async def index_settings(settings: Settings, es: AsyncElasticsearch) -> AsyncIterator[Settings]:
    prefix = f"postlens-test-{uuid.uuid4().hex[:8]}"
    unique = settings.model_copy(
        update={
            "es_index_entities": f"{prefix}-entities",
            "es_index_posts": f"{prefix}-posts",
            "retry_backoff_max_s": 1.0,
        }
    )
    yield unique
    await es.indices.delete(index=f"{prefix}-*", allow_no_indices=True)
    await es.indices.delete_index_template(name=f"{prefix}-*")


@pytest.fixture
async def indexer(index_settings: Settings) -> AsyncIterator[ElasticsearchSink]:
    async with es_client(index_settings) as client:
        indexer = ElasticsearchSink(client, index_settings, Metrics())
        await indexer.prepare()
        yield indexer


def processed(post_id: str, *names: str, text: str = "Jordan and Paris and Acme", version: int = 0) -> ProcessedPost:
    entities = [
        PredictedEntity(text=name, type="PER", start=text.index(name), end=text.index(name) + len(name), confidence=0.8)
        for name in names
    ]
    return ProcessedPost(
        raw=RawMessage(value=b"{}", key=post_id.encode(), topic="posts", partition=0, offset=0),
        post=Post(id=post_id, text=text),
        prediction=PostPrediction(entities=entities, model=ModelRef(name="postlens", version="1")),
        images=[FetchOutcome(url="http://img/x.png", status="timeout")],
        version=version,
    )


async def entity_ids(es: AsyncElasticsearch, settings: Settings, post_id: str) -> list[str]:
    await es.indices.refresh(index=settings.es_index_entities)
    response = await es.search(index=settings.es_index_entities, query={"term": {"post_id": post_id}}, size=100)
    return sorted(hit["_id"] for hit in response["hits"]["hits"])


async def test_reprocessing_leaves_exactly_the_latest_entities(
    indexer: ElasticsearchSink, es: AsyncElasticsearch, index_settings: Settings
) -> None:
    assert await indexer.write([processed("p1", "Jordan", "Paris", "Acme")]) == []
    assert await entity_ids(es, index_settings, "p1") == ["p1:0-6", "p1:11-16", "p1:21-25"]

    # Immediately (no refresh in between): the stale ids come from the post document, read in real time.
    assert await indexer.write([processed("p1", "Paris")]) == []
    assert await entity_ids(es, index_settings, "p1") == ["p1:11-16"]
    post = await es.get(index=index_settings.es_index_posts, id="p1")
    assert post["_source"]["entity_count"] == 1
    assert post["_source"]["image_fetch"] == [
        {"url": "http://img/x.png", "status": "timeout", "message": None, "cached": False}
    ]


async def test_same_post_twice_in_a_batch_keeps_the_later(
    indexer: ElasticsearchSink, es: AsyncElasticsearch, index_settings: Settings
) -> None:
    assert await indexer.write([processed("p2", "Jordan"), processed("p2", "Acme")]) == []
    assert await entity_ids(es, index_settings, "p2") == ["p2:21-25"]


async def test_documents_elasticsearch_refuses_are_returned_for_the_dead_letter_topic(
    index_settings: Settings, es: AsyncElasticsearch
) -> None:
    # An entities index created by someone else with a conflicting field type: retrying can never fix that.
    await es.indices.create(
        index=index_settings.es_index_entities, mappings={"properties": {"confidence": {"type": "boolean"}}}
    )
    async with es_client(index_settings) as client:
        indexer = ElasticsearchSink(client, index_settings, Metrics())
        await indexer.prepare()
        failures = await indexer.write([processed("bad", "Jordan"), processed("fine")])
    assert [(failure.item.post.id, failure.kind) for failure in failures] == [("bad", "document_refused")]
    assert "document_parsing_exception" in failures[0].message and "confidence" in failures[0].message
    await es.indices.refresh(index=index_settings.es_index_posts)
    assert (await es.get(index=index_settings.es_index_posts, id="fine"))["found"]
    # Whole or nothing: the refused post's document, written in the same request, was taken back.
    assert not await es.exists(index=index_settings.es_index_posts, id="bad")


async def test_a_post_that_fails_the_whole_request_is_isolated(
    indexer: ElasticsearchSink, es: AsyncElasticsearch, index_settings: Settings
) -> None:
    # An _id over 512 bytes makes Elasticsearch refuse the whole bulk request. Ingest refuses such ids; should one
    # get past it, only its post may pay.
    broken = processed("\U0001f600" * 200, "Jordan")
    batch = [processed("a", "Jordan"), processed("b", "Paris"), broken, processed("c", "Acme")]
    failures = await indexer.write(batch)
    assert [failure.item.post.id for failure in failures] == [broken.post.id]
    await es.indices.refresh(index=index_settings.es_index_posts)
    for post_id in ("a", "b", "c"):
        assert await es.exists(index=index_settings.es_index_posts, id=post_id)
    assert failures[0].kind == "request_refused" and "HTTP 400" in failures[0].message


async def test_outage_is_waited_out(index_settings: Settings, es: AsyncElasticsearch) -> None:
    target = urlsplit(index_settings.es_url)
    with TcpProxy(target.hostname or "localhost", target.port or 9200) as proxy:
        via_proxy = index_settings.model_copy(update={"es_url": proxy.url})
        async with es_client(via_proxy) as client:
            indexer = ElasticsearchSink(client, via_proxy, Metrics())
            await indexer.prepare()
            proxy.close()
            indexing = asyncio.create_task(indexer.write([processed("p3", "Jordan")]))
            await asyncio.sleep(3)
            assert not indexing.done()  # still holding the batch, not giving up
            proxy.open()
            assert await asyncio.wait_for(indexing, timeout=30) == []
    assert await entity_ids(es, index_settings, "p3") == ["p3:0-6"]


async def assert_no_orphans(es: AsyncElasticsearch, settings: Settings) -> None:
    """Every entity document is listed by its post's document, and every listed one exists."""
    await es.indices.refresh(index=f"{settings.es_index_entities},{settings.es_index_posts}")
    entities = await es.search(index=settings.es_index_entities, size=1000, query={"match_all": {}})
    posts = await es.search(index=settings.es_index_posts, size=1000, query={"match_all": {}})
    listed = {entity for hit in posts["hits"]["hits"] for entity in hit["_source"]["entity_ids"]}
    assert sorted(hit["_id"] for hit in entities["hits"]["hits"]) == sorted(listed)


async def test_an_older_version_never_overwrites_a_newer_one(
    indexer: ElasticsearchSink, es: AsyncElasticsearch, index_settings: Settings
) -> None:
    assert await indexer.write([processed("p4", "Paris", version=5)]) == []
    assert (
        await indexer.write([processed("p4", "Jordan", "Acme", version=3)]) == []
    )  # a late replay: settled, unwritten
    assert await entity_ids(es, index_settings, "p4") == ["p4:11-16"]
    post = await es.get(index=index_settings.es_index_posts, id="p4")
    assert post["_source"]["post_version"] == 5 and post["_source"]["entity_ids"] == ["p4:11-16"]
    assert await indexer.write([processed("p4", "Acme", version=5)]) == []  # the same version again: it overwrites
    assert await entity_ids(es, index_settings, "p4") == ["p4:21-25"]


async def test_versions_written_at_once_end_with_the_newest_and_no_orphans(
    indexer: ElasticsearchSink, es: AsyncElasticsearch, index_settings: Settings
) -> None:
    """Batches of one post's versions in flight together (a replay, a revoked batch still writing, other workers)."""
    spans = [("Jordan",), ("Paris", "Acme"), ("Jordan", "Acme"), ("Paris",)]
    rng = random.Random(7)
    writes = [
        indexer.write([processed(f"c{post}", *spans[version % len(spans)], version=version)])
        for post in range(6)
        for version in range(8)
    ]
    rng.shuffle(writes)
    assert await asyncio.gather(*writes) == [[]] * len(writes)
    for post in range(6):
        document = (await es.get(index=index_settings.es_index_posts, id=f"c{post}"))["_source"]
        assert document["post_version"] == 7
        assert await entity_ids(es, index_settings, f"c{post}") == sorted(document["entity_ids"])
    await assert_no_orphans(es, index_settings)


async def test_an_interrupted_write_leaves_no_orphaned_entities(
    indexer: ElasticsearchSink, es: AsyncElasticsearch, index_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await indexer.write([processed("p5", "Jordan", "Paris", "Acme", version=1)]) == []

    async def crash(*_args: object) -> None:
        raise asyncio.CancelledError  # the worker stops between the post document and its entities

    with monkeypatch.context() as patched:
        patched.setattr(indexer, "_write_entities", crash)
        with pytest.raises(asyncio.CancelledError):
            await indexer.write([processed("p5", "Paris", version=2)])
    # The next processing is the same message again, or a newer version of the post: either finishes the cleanup.
    assert await indexer.write([processed("p5", "Acme", version=3)]) == []
    assert await entity_ids(es, index_settings, "p5") == ["p5:21-25"]
    await assert_no_orphans(es, index_settings)


async def test_a_write_block_is_an_outage_waited_out_not_dead_letters(
    indexer: ElasticsearchSink, es: AsyncElasticsearch, index_settings: Settings
) -> None:
    """403 on every document (a write block, like the flood-stage disk watermark's): no post is at fault."""
    await es.indices.add_block(index=index_settings.es_index_entities, block="write")
    try:
        writing = asyncio.create_task(indexer.write([processed("b1", "Jordan"), processed("b2", "Paris")]))
        await asyncio.sleep(3)
        assert not writing.done()  # waiting, not dead-lettering
    finally:
        await es.indices.put_settings(index=index_settings.es_index_entities, settings={"index.blocks.write": False})
    assert await asyncio.wait_for(writing, timeout=30) == []
    assert await entity_ids(es, index_settings, "b1") == ["b1:0-6"]


async def test_indices_written_through_aliases(index_settings: Settings, es: AsyncElasticsearch) -> None:
    """Bulk results name the concrete index; the write must not trip over it (they are matched by position)."""
    for alias, mappings in (
        (index_settings.es_index_entities, ENTITIES_MAPPINGS),
        (index_settings.es_index_posts, POSTS_MAPPINGS),
    ):
        await es.indices.create(index=f"{alias}-000001", mappings=mappings, aliases={alias: {"is_write_index": True}})
    async with es_client(index_settings) as client:
        sink = ElasticsearchSink(client, index_settings, Metrics())
        await sink.prepare()
        assert await sink.write([processed("a1", "Jordan", "Paris")]) == []
        assert await sink.write([processed("a1", "Paris", version=1)]) == []
    assert await entity_ids(es, index_settings, "a1") == ["a1:11-16"]


async def test_a_revoked_key_is_an_outage_waited_out_not_dead_letters(
    index_settings: Settings, es: AsyncElasticsearch
) -> None:
    """401 on every request (the worker's API key revoked): no post is at fault; once the key works again, the batch
    is written."""
    async with AuthProxy(index_settings.es_url, "test-key") as secured:
        keyed = index_settings.model_copy(update={"es_url": secured.url, "es_api_key": SecretStr("test-key")})
        async with es_client(keyed) as client:
            indexer = ElasticsearchSink(client, keyed, Metrics())
            await indexer.prepare()
            secured.revoked = True
            writing = asyncio.create_task(indexer.write([processed("k1", "Jordan"), processed("k2", "Paris")]))
            await asyncio.sleep(3)
            assert not writing.done()  # waiting, not dead-lettering
            secured.revoked = False
            assert await asyncio.wait_for(writing, timeout=30) == []
    assert await entity_ids(es, index_settings, "k1") == ["k1:0-6"]
