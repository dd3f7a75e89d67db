"""Dead letters keep the original message exactly, whatever its bytes."""

from __future__ import annotations

from postlens.io.deadletter import RawMessage, dead_letter, original_bytes


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
