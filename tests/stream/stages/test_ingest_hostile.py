"""Property-based: whatever bytes arrive as a post — any structure, nesting, types, sizes, encodings, ids of every
length and character — ingest either accepts a post whose Elasticsearch documents can be written, or refuses it with
a reason; no other exception escapes."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from elasticsearch.serializer import JsonSerializer
from hypothesis import HealthCheck, example, given, settings

from postlens.io.deadletter import RawMessage
from postlens.schemas import ModelRef, PostPrediction
from postlens.settings import Settings
from stream.results import ProcessedPost
from stream.stages.index import post_document
from stream.stages.ingest import InvalidPost, parse_post
from tests.support.hostile_posts import payloads

SETTINGS = Settings()
REASONS = {"empty", "oversize", "invalid_utf8", "invalid_json", "invalid_unicode", "too_deep", "schema", "empty_text"}


def indexable(value: bytes | None) -> None:
    """The property: refused with a reason, or accepted with documents Elasticsearch's client can serialize."""
    try:
        post = parse_post(value, SETTINGS)
    except InvalidPost as refusal:
        assert refusal.kind in REASONS and str(refusal)
        return
    item = ProcessedPost(
        RawMessage(value=value, key=None, topic="posts"),
        post,
        PostPrediction(model=ModelRef(name="postlens", version="1")),
        [],
    )
    JsonSerializer().dumps(post_document(item, datetime.now(UTC)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(payloads)
@example(b'{"id": "n", "text": "t", "meta": {"x": NaN}}')
@example(b'{"id": "n", "text": "t", "meta": {"x": 1e400}}')
@example(b'{"id": "\\ud800", "text": "t"}')
@example(json.dumps({"id": "\U0001f600" * 200, "text": "t"}).encode())
@example(b"[" * 100_000)
def test_any_payload_is_accepted_or_refused_with_a_reason(value: bytes | None) -> None:
    indexable(value)
