"""Dead letters: a Kafka message PostLens could not process, kept with its original bytes and the reason."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from postlens.schemas import DEAD_LETTER_SCHEMA_VERSION, MAX_VERSION, VERSION_HEADER, DeadLetter, ErrorInfo, Stage

# What a dead letter too large for Kafka keeps of its original; with the message bound below the letter stays
# under 64 KiB even when JSON escaping multiplies every byte by six.
KEPT_PREFIX_BYTES = 8 * 1024
MAX_ERROR_MESSAGE_CHARS = 2000


@dataclass(frozen=True)
class RawMessage:
    """A message as it came off the posts topic, before anything was parsed."""

    value: bytes | None
    key: bytes | None
    topic: str
    partition: int | None = None
    offset: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


def message_version(raw: RawMessage) -> int | None:
    """The message's version: its VERSION_HEADER when it holds a valid one, else its offset."""
    for name, value in raw.headers:
        if name == VERSION_HEADER:
            try:
                version = int(value.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                break  # not a number: the offset decides
            if 0 <= version <= MAX_VERSION:
                return version
            break
    return raw.offset


def _original_fields(value: bytes | None) -> tuple[str | None, str | None]:
    """(original, original_b64): the value as text when it is UTF-8, else as base64."""
    if value is None:
        return None, None
    try:
        return value.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, base64.b64encode(value).decode("ascii")


def dead_letter(raw: RawMessage, stage: Stage, kind: str, message: str) -> DeadLetter:
    if len(message) > MAX_ERROR_MESSAGE_CHARS:  # an error may quote its input; the original is kept apart anyway
        message = message[:MAX_ERROR_MESSAGE_CHARS] + "…"
    # Quoted input may hold lone surrogates, which no JSON encoder of the letter takes.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    original, original_b64 = _original_fields(raw.value)
    return DeadLetter(
        schema_version=DEAD_LETTER_SCHEMA_VERSION,
        original=original,
        original_b64=original_b64,
        original_size=len(raw.value) if raw.value is not None else None,
        key=raw.key.decode("utf-8", errors="backslashreplace") if raw.key is not None else None,
        source_topic=raw.topic,
        source_partition=raw.partition,
        source_offset=raw.offset,
        source_version=message_version(raw),
        error=ErrorInfo(stage=stage, kind=kind, message=message),
        failed_at=datetime.now(UTC),
    )


def letter_bytes(letter: DeadLetter, max_bytes: int) -> bytes:
    """The letter as a Kafka message value of at most ``max_bytes``.

    A letter whose original would not fit keeps its reason, the first ``KEPT_PREFIX_BYTES`` of the original and the
    original's size and sha256: it must never be lost to a "message too large" error.
    """
    encoded = letter.model_dump_json().encode("utf-8")
    value = original_bytes(letter)
    if len(encoded) <= max_bytes or value is None:
        return encoded
    # A cut through a UTF-8 character makes the prefix base64, like any other non-UTF-8 original.
    original, original_b64 = _original_fields(value[:KEPT_PREFIX_BYTES])
    bounded = letter.model_copy(
        update={
            "original": original,
            "original_b64": original_b64,
            "original_truncated": True,
            "original_size": len(value),
            "original_sha256": hashlib.sha256(value).hexdigest(),
        }
    )
    return bounded.model_dump_json().encode("utf-8")


def original_bytes(letter: DeadLetter) -> bytes | None:
    """The message value exactly as it was first published (for replaying it); None when not kept whole."""
    if letter.original_truncated:
        return None
    if letter.original is not None:
        return letter.original.encode("utf-8")
    if letter.original_b64 is not None:
        return base64.b64decode(letter.original_b64)
    return None
