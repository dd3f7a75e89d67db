"""Property-based: whatever bytes arrive as a post — any structure, nesting, types, sizes, encodings, ids of every
length and character — ingest either accepts a post whose Elasticsearch documents can be written, or refuses it with
a reason; no other exception escapes."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from elasticsearch.serializer import JsonSerializer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from postlens.io.deadletter import RawMessage
from postlens.schemas import ModelRef, PostPrediction
from postlens.settings import Settings
from stream.stages.index import ProcessedPost, post_document
from stream.stages.ingest import InvalidPost, parse_post

SETTINGS = Settings()
REASONS = {"empty", "oversize", "invalid_utf8", "invalid_json", "invalid_unicode", "too_deep", "schema", "empty_text"}
# Every code point, lone surrogates included (a JSON "\ud800" escape decodes to one).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=300)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(any_text, children, max_size=5),
    max_leaves=40,
)
ids = st.one_of(
    any_text, st.text(min_size=200, max_size=700), st.integers(), st.floats(), st.booleans(), st.none(), json_values
)
posts = st.fixed_dictionaries(
    {"id": ids, "text": st.one_of(any_text, st.text(min_size=4990, max_size=5010), json_values)},
    optional={
        "images": st.one_of(st.lists(any_text, max_size=8), json_values),
        "created_at": st.one_of(any_text, st.integers(), st.datetimes().map(str), json_values),
        "author": st.one_of(any_text, json_values),
        "lang": json_values,
        "meta": json_values,
        "extra": json_values,
    },
)
as_bytes = st.sampled_from(
    [
        lambda value: json.dumps(value).encode(),  # ASCII with \u escapes (lone surrogates as "\ud800")
        lambda value: json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"),
        lambda value: json.dumps(value, ensure_ascii=False).encode("utf-16", "surrogatepass"),
        lambda value: b"\xef\xbb\xbf" + json.dumps(value).encode(),  # a BOM
        lambda value: json.dumps(value).encode()[:-1],  # cut short
    ]
)
payloads = st.one_of(
    st.tuples(posts, as_bytes).map(lambda pair: pair[1](pair[0])),
    st.tuples(json_values, as_bytes).map(lambda pair: pair[1](pair[0])),
    st.binary(max_size=2000),
    st.integers(1, 40_000).map(lambda depth: b'{"id": "x", "text": "t", "meta": ' + b"[" * depth + b"]" * depth + b"}"),
    st.integers(60_000, 70_000).map(lambda size: json.dumps({"id": "big", "text": "x" * size}).encode()),
    st.none(),
)


def indexable(value: bytes | None) -> None:
    """The property: refused with a reason, or accepted with documents Elasticsearch's client can serialize."""
    try:
        post = parse_post(value, SETTINGS)
    except InvalidPost as refusal:
        assert refusal.kind in REASONS and str(refusal)
        return
    item = ProcessedPost(
        RawMessage(value=value, key=None, topic="posts"), post,
        PostPrediction(model=ModelRef(name="postlens", version="1")), [],
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
