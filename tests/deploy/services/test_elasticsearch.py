"""The local Elasticsearch, through the async ``elasticsearch`` client PostLens indexes with."""

from __future__ import annotations

import uuid

import pytest
from elasticsearch import AsyncElasticsearch
from elasticsearch import __versionstr__ as client_version

pytestmark = pytest.mark.integration


async def test_server_identity_matches_client_major(es: AsyncElasticsearch, settings) -> None:
    # The integ-test distribution has no `GET /` (rest-root module); the nodes API reports the version.
    nodes = (await es.nodes.info(node_id="_local"))["nodes"]
    (node,) = nodes.values()
    assert node["version"] == settings.elasticsearch_version
    assert node["version"].split(".")[0] == client_version.split(".")[0]
    assert (await es.cluster.health())["status"] in ("green", "yellow")


async def test_index_template_index_refresh_search(es: AsyncElasticsearch) -> None:
    prefix = f"test-deploy-{uuid.uuid4().hex[:8]}"
    index = f"{prefix}-entities"
    await es.indices.put_index_template(
        name=prefix,
        index_patterns=[f"{prefix}-*"],
        template={
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {
                "properties": {
                    "text": {"type": "text", "fields": {"keyword": {"type": "keyword"}}},
                    "type": {"type": "keyword"},
                    "confidence": {"type": "float"},
                }
            },
        },
    )
    try:
        docs = [
            ("1:0-6", {"text": "Jordan", "type": "PER", "confidence": 0.91}),
            ("1:20-24", {"text": "Lyon", "type": "LOC", "confidence": 0.77}),
            ("2:0-10", {"text": "Acme Corp", "type": "ORG", "confidence": 0.64}),
        ]
        for doc_id, doc in docs:
            await es.index(index=index, id=doc_id, document=doc)
        await es.indices.refresh(index=index)

        mapping = (await es.indices.get_mapping(index=index))[index]["mappings"]["properties"]
        assert mapping["type"]["type"] == "keyword", "the index template was not applied"

        people = await es.search(index=index, query={"term": {"type": "PER"}})
        assert [hit["_id"] for hit in people["hits"]["hits"]] == ["1:0-6"]
        by_text = await es.search(index=index, query={"match": {"text": "acme"}})
        assert [hit["_source"]["text"] for hit in by_text["hits"]["hits"]] == ["Acme Corp"]
        confident = await es.count(index=index, query={"range": {"confidence": {"gte": 0.7}}})
        assert confident["count"] == 2
    finally:
        await es.indices.delete(index=index, ignore_unavailable=True)
        await es.indices.delete_index_template(name=prefix)
