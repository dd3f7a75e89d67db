"""Documents the indexer writes: deterministic ids, and every field declared in the strict templates."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from elasticsearch import SerializationError
from elasticsearch.helpers import expand_action

from postlens.io.deadletter import RawMessage
from postlens.io.fetch import FetchOutcome
from postlens.schemas import ModelRef, Post, PostPrediction, PredictedEntity, Region
from stream.results import ProcessedPost
from stream.stages.index import bulk_body, entity_document, entity_id, post_document
from stream.stages.index_templates import ENTITIES_MAPPINGS, POSTS_MAPPINGS

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def processed() -> ProcessedPost:
    post = Post.model_validate(
        {
            "id": "42",
            "text": "Jordan visited Paris",
            "images": ["http://img/a.png", "http://img/b.png"],
            "created_at": "2026-11-22T09:00:00Z",
            "author": "ann",
            "lang": "en",
            "source": "kcat",
        }
    )
    prediction = PostPrediction(
        entities=[
            PredictedEntity(
                text="Jordan",
                type="PER",
                start=0,
                end=6,
                confidence=0.91,
                regions=[Region(image_index=1, box=(0.1, 0.2, 0.5, 0.6), score=0.8, image_url="http://img/b.png")],
            ),
            PredictedEntity(text="Paris", type="LOC", start=15, end=20, confidence=0.77),
        ],
        image_relevance=0.6,
        model=ModelRef(name="postlens", version="3"),
    )
    outcomes = [
        FetchOutcome(url="http://img/a.png", status="http_404", message="HTTP 404"),
        FetchOutcome(url="http://img/b.png", status="ok", cached=True),
    ]
    return ProcessedPost(RawMessage(b"{}", b"42", "posts", 0, 7), post, prediction, outcomes)


def assert_declared(document: dict[str, Any], mappings: dict[str, Any], path: str = "") -> None:
    """Every field of ``document`` is declared (the templates are strict: undeclared fields are refused)."""
    properties = mappings["properties"]
    for name, value in document.items():
        assert name in properties, f"{path}{name} is not in the template"
        field = properties[name]
        if field.get("enabled") is False:
            continue
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, dict):
                assert "properties" in field, f"{path}{name} is an object but mapped as {field}"
                assert_declared(item, field, f"{path}{name}.")


def test_entity_ids_are_deterministic_per_span() -> None:
    item = processed()
    assert [entity_id("42", entity) for entity in item.prediction.entities] == ["42:0-6", "42:15-20"]


def test_entity_document_fields() -> None:
    item = processed()
    document = entity_document(item, item.prediction.entities[0], NOW)
    assert document["post_id"] == "42" and document["type"] == "PER" and document["confidence"] == 0.91
    assert document["regions"] == [
        {"image_index": 1, "image_url": "http://img/b.png", "box": [0.1, 0.2, 0.5, 0.6], "score": 0.8}
    ]
    assert document["model"] == {"name": "postlens", "version": "3"}
    assert document["post"]["author"] == "ann" and document["post"]["images"] == item.post.images
    assert_declared(document, ENTITIES_MAPPINGS)


def test_post_document_records_entities_and_every_image_outcome() -> None:
    document = post_document(processed(), NOW)
    assert document["id"] == "42" and document["entity_count"] == 2
    assert [(e["text"], e["type"]) for e in document["entities"]] == [("Jordan", "PER"), ("Paris", "LOC")]
    assert document["entity_ids"] == ["42:0-6", "42:15-20"]
    assert [(o["url"], o["status"]) for o in document["image_fetch"]] == [
        ("http://img/a.png", "http_404"),
        ("http://img/b.png", "ok"),
    ]
    assert document["meta"] == {"source": "kcat"}
    assert_declared(document, POSTS_MAPPINGS)


def test_bulk_body_is_the_request_the_client_would_send() -> None:
    item = processed()
    actions: list[dict[str, Any]] = [
        {"_op_type": "create", "_index": "posts", "_id": "42", "_source": post_document(item, NOW)},
        {"_op_type": "index", "_index": "posts", "_id": "42", "if_seq_no": 3, "if_primary_term": 1, "_source": {}},
        {
            "_op_type": "index",
            "_index": "entities",
            "_id": "42:0-6",
            "version": 7,
            "version_type": "external_gte",
            "_source": entity_document(item, item.prediction.entities[0], NOW),
        },
        {"_op_type": "delete", "_index": "entities", "_id": "42:1-2", "version": 7, "version_type": "external_gte"},
    ]
    expected = []
    for action in actions:
        meta, source = expand_action(action)
        expected += [meta] if source is None else [meta, source]
    body = bulk_body(actions)
    assert body.endswith(b"\n")
    assert [json.loads(line) for line in body.decode("utf-8").splitlines()] == expected


def test_a_document_that_cannot_be_serialized_raises_the_clients_error() -> None:
    with pytest.raises(SerializationError):
        bulk_body([{"_op_type": "index", "_index": "posts", "_id": "1", "_source": {"x": object()}}])
