"""Ingest: which messages become posts, and why the others are refused."""

from __future__ import annotations

import json

import pytest

from postlens.io.deadletter import RawMessage
from postlens.schemas import VERSION_HEADER
from postlens.settings import Settings
from stream.stages.ingest import InvalidPost, ingest, parse_post


@pytest.fixture
def limits() -> Settings:
    return Settings(max_post_bytes=1024, max_text_chars=100)


def encode(document: object) -> bytes:
    return json.dumps(document).encode("utf-8")


def test_valid_post_is_parsed(limits: Settings) -> None:
    post = parse_post(
        encode(
            {
                "id": "p1",
                "text": "Jordan in Paris",
                "images": ["https://example.com/a.jpg"],
                "created_at": "2026-11-22T10:00:00Z",
                "author": "ann",
                "lang": "en",
            }
        ),
        limits,
    )
    assert (post.id, post.text, post.images, post.author) == (
        "p1",
        "Jordan in Paris",
        ["https://example.com/a.jpg"],
        "ann",
    )
    assert post.created_at is not None and post.created_at.year == 2026


def test_numeric_id_names_the_same_post_as_its_string(limits: Settings) -> None:
    assert parse_post(encode({"id": 1015799, "text": "hi"}), limits).id == "1015799"


def test_unknown_fields_are_kept_in_meta(limits: Settings) -> None:
    post = parse_post(encode({"id": "p", "text": "hi", "retweets": 3, "meta": {"source": "x"}}), limits)
    assert post.meta == {"retweets": 3, "source": "x"}


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, "empty"),
        (b"{not json", "invalid_json"),
        (b"\xff\xfe\x00garbage", "invalid_utf8"),
        (b'["a", "list"]', "schema"),
        (b'{"text": "no id"}', "schema"),
        (b'{"id": "p", "images": []}', "schema"),
        (b'{"id": true, "text": "a boolean id"}', "schema"),
        (b'{"id": "p", "text": "x", "images": "not-a-list"}', "schema"),
        (b'{"id": "p", "text": "x", "created_at": "yesterday-ish"}', "schema"),
        (b'{"id": "p", "text": "   "}', "empty_text"),
    ],
)
def test_invalid_messages_are_refused_with_a_kind(limits: Settings, value: bytes | None, kind: str) -> None:
    with pytest.raises(InvalidPost) as refused:
        parse_post(value, limits)
    assert refused.value.kind == kind
    assert str(refused.value)  # a human-readable reason goes into the dead letter


def test_schema_errors_name_the_field(limits: Settings) -> None:
    with pytest.raises(InvalidPost, match="text"):
        parse_post(b'{"id": "p"}', limits)


def test_oversize_message_is_refused_before_parsing(limits: Settings) -> None:
    value = encode({"id": "p", "text": "x", "pad": "y" * 2000})
    with pytest.raises(InvalidPost, match="1024") as refused:
        parse_post(value, limits)
    assert refused.value.kind == "oversize"


def test_text_over_the_character_limit_is_refused(limits: Settings) -> None:
    with pytest.raises(InvalidPost, match="101 characters") as refused:
        parse_post(encode({"id": "p", "text": "a" * 101}), limits)
    assert refused.value.kind == "oversize"


def test_the_version_is_the_producers_else_a_replays_header_else_the_offset(limits: Settings) -> None:
    def version(document: dict[str, object], headers: tuple[tuple[str, bytes], ...] = ()) -> int:
        raw = RawMessage(encode(document), b"k", "posts", 0, 40, headers)
        [accepted] = ingest([raw], limits).done
        return accepted.version

    assert version({"id": "a", "text": "x"}) == 40
    assert version({"id": "a", "text": "x"}, ((VERSION_HEADER, b"7"),)) == 7
    assert version({"id": "a", "text": "x", "version": 9}, ((VERSION_HEADER, b"7"),)) == 9
    assert version({"id": "a", "text": "x"}, ((VERSION_HEADER, b"-3"),)) == 40  # not a version: the offset decides
    assert version({"id": "a", "text": "x"}, ((VERSION_HEADER, b"\xff"),)) == 40
    refused = ingest([RawMessage(encode({"id": "a", "text": "x", "version": -1}), b"k", "posts", 0, 1)], limits)
    assert [letter.error.kind for _, letter in refused.letters] == ["schema"]


@pytest.mark.parametrize(
    "value",
    [
        b'{"id": "p", "text": "x", "retweets": ' + b"7" * 4301 + b"}",
        b'{"id": ' + b"9" * 5000 + b', "text": "a huge numeric id"}',
    ],
)
def test_an_integer_cpython_refuses_to_convert_is_invalid_input(value: bytes) -> None:
    # Over 4,300 digits, int() raises a bare ValueError: it must be refused at ingest, not fail the batch.
    with pytest.raises(InvalidPost) as refused:
        parse_post(value, Settings())
    assert refused.value.kind == "invalid_number"
    assert "digits" in str(refused.value)


def test_nesting_is_refused_only_past_the_limit() -> None:
    limits = Settings(max_post_depth=4)  # the post object is depth 1, its "meta" value 2
    parse_post(b'{"id": "p", "text": "x", "meta": {"a": [1]}}', limits)  # 4 deep: at the limit
    with pytest.raises(InvalidPost) as refused:
        parse_post(b'{"id": "p", "text": "x", "meta": {"a": [[1]]}}', limits)
    assert refused.value.kind == "too_deep"


@pytest.mark.parametrize("escape", [b"\\ud800", b"\\uDFFF", b"\\udbff x"])
def test_an_escaped_lone_surrogate_is_refused(limits: Settings, escape: bytes) -> None:
    with pytest.raises(InvalidPost) as refused:
        parse_post(b'{"id": "p", "text": "a ' + escape + b' b"}', limits)
    assert refused.value.kind == "invalid_unicode"


def test_an_escaped_surrogate_pair_is_the_character_it_encodes(limits: Settings) -> None:
    assert parse_post(b'{"id": "p", "text": "smile \\ud83d\\ude00"}', limits).text == "smile \U0001f600"
