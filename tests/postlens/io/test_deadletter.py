"""Dead letters keep the original message exactly, whatever its bytes — or, when too large for Kafka, its reason,
a prefix and the digest."""

from __future__ import annotations

import hashlib

from postlens.io.deadletter import (
    KEPT_PREFIX_BYTES,
    RawMessage,
    dead_letter,
    letter_bytes,
    letter_key,
    minimal_letter,
    original_bytes,
    original_key,
)
from postlens.schemas import DEAD_LETTER_SCHEMA_VERSION, DeadLetter


def test_utf8_message_is_kept_as_text() -> None:
    raw = RawMessage(value='{"id": "é"'.encode(), key=b"k1", topic="posts", partition=2, offset=41)
    letter = dead_letter(raw, "ingest", "invalid_json", "message is not JSON")
    assert letter.original == '{"id": "é"' and letter.original_b64 is None
    assert (letter.key, letter.source_topic, letter.source_partition, letter.source_offset) == ("k1", "posts", 2, 41)
    assert (letter.error.stage, letter.error.kind) == ("ingest", "invalid_json")
    assert letter.failed_at.tzinfo is not None
    assert original_bytes(letter) == raw.value


def test_binary_message_is_kept_as_base64() -> None:
    raw = RawMessage(value=b"\xff\x00\xfe", key=None, topic="posts")
    letter = dead_letter(raw, "ingest", "invalid_utf8", "not UTF-8")
    assert letter.original is None and letter.original_b64
    assert original_bytes(letter) == b"\xff\x00\xfe"


def test_message_without_value_has_nothing_to_replay() -> None:
    letter = dead_letter(RawMessage(value=None, key=b"k", topic="posts"), "ingest", "empty", "no value")
    assert original_bytes(letter) is None


def test_a_letter_too_large_for_kafka_keeps_its_reason_a_prefix_and_the_digest() -> None:
    value = b"\x00" * 1_000_000  # JSON-escaped, six times larger
    letter = dead_letter(RawMessage(value=value, key=b"k", topic="posts"), "ingest", "oversize", "too big " * 10_000)
    encoded = letter_bytes(letter, max_bytes=900_000)
    assert len(encoded) < 64 * 1024
    kept = DeadLetter.model_validate_json(encoded)
    assert (kept.error.stage, kept.error.kind) == ("ingest", "oversize") and kept.error.message.startswith("too big")
    assert kept.original_truncated and kept.original_size == len(value)
    assert kept.original_sha256 == hashlib.sha256(value).hexdigest()
    assert kept.original == "\x00" * KEPT_PREFIX_BYTES
    assert original_bytes(kept) is None  # a prefix is not the message: never replayed


def test_a_letter_that_fits_is_kept_whole() -> None:
    letter = dead_letter(RawMessage(value=b"{}", key=None, topic="posts"), "ingest", "schema", "\ud800 quoted")
    kept = DeadLetter.model_validate_json(letter_bytes(letter, max_bytes=900_000))
    assert not kept.original_truncated and original_bytes(kept) == b"{}"


def test_letters_carry_their_schema_version_and_old_letters_read_as_the_first() -> None:
    letter = dead_letter(RawMessage(value=b"{", key=b"k", topic="posts"), "ingest", "invalid_json", "cut")
    assert DeadLetter.model_validate_json(letter_bytes(letter, 900_000)).schema_version == DEAD_LETTER_SCHEMA_VERSION
    old = {
        "original": "{}",
        "key": "k",
        "source_topic": "posts",
        "error": {"stage": "index", "kind": "mapper_parsing_exception", "message": "m"},
        "failed_at": "2026-11-22T10:00:00Z",
    }
    assert DeadLetter.model_validate(old).schema_version == 1


def test_a_binary_key_is_kept_exactly_as_base64_not_escaped() -> None:
    key = bytes(range(256)) * 3  # backslashreplace would have made each byte four characters
    letter = dead_letter(RawMessage(value=b"{}", key=key, topic="posts"), "ingest", "schema", "bad")
    assert letter.key is None and letter.key_b64 and not letter.key_truncated
    assert original_key(letter) == key
    assert letter_key(key) == key


def test_a_huge_key_is_bounded_in_the_letter_and_its_kafka_key() -> None:
    key = b"\xff" * 1_000_000
    letter = dead_letter(RawMessage(value=b"{}", key=key, topic="posts"), "ingest", "schema", "bad")
    encoded = letter_bytes(letter, max_bytes=900_000)
    assert len(encoded) < 8 * 1024
    kept = DeadLetter.model_validate_json(encoded)
    assert kept.key_truncated and original_key(kept) is None  # not kept whole: never replayed with a wrong key
    assert letter_key(key) == hashlib.sha256(key).hexdigest().encode()


def test_a_minimal_letter_keeps_the_reason_and_where_the_original_is() -> None:
    value = b'{"id": "p1", "text": "' + b"x" * 50_000 + b'"}'
    raw = RawMessage(value=value, key=b"p1", topic="posts", partition=3, offset=77)
    minimal = minimal_letter(dead_letter(raw, "index", "mapping", "refused " * 1000))
    encoded = minimal.model_dump_json().encode()
    assert len(encoded) < 1024
    assert (minimal.source_topic, minimal.source_partition, minimal.source_offset) == ("posts", 3, 77)
    assert minimal.original_size == len(value) and minimal.original_sha256 == hashlib.sha256(value).hexdigest()
    assert (minimal.error.stage, minimal.error.kind) == ("index", "mapping")
    assert original_bytes(minimal) is None and original_key(minimal) is None
