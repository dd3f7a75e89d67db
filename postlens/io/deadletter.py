"""Dead letters: a Kafka message PostLens could not process, kept with its original bytes and the reason."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime

from postlens.schemas import DeadLetter, ErrorInfo, Stage


@dataclass(frozen=True)
class RawMessage:
    """A message as it came off the posts topic, before anything was parsed."""

    value: bytes | None
    key: bytes | None
    topic: str
    partition: int | None = None
    offset: int | None = None


def dead_letter(raw: RawMessage, stage: Stage, kind: str, message: str) -> DeadLetter:
    original: str | None = None
    original_b64: str | None = None
    if raw.value is not None:
        try:
            original = raw.value.decode("utf-8")
        except UnicodeDecodeError:
            original_b64 = base64.b64encode(raw.value).decode("ascii")
    return DeadLetter(
        original=original,
        original_b64=original_b64,
        key=raw.key.decode("utf-8", errors="backslashreplace") if raw.key is not None else None,
        source_topic=raw.topic,
        source_partition=raw.partition,
        source_offset=raw.offset,
        error=ErrorInfo(stage=stage, kind=kind, message=message),
        failed_at=datetime.now(UTC),
    )


def original_bytes(letter: DeadLetter) -> bytes | None:
    """The message value exactly as it was first published (for replaying it)."""
    if letter.original is not None:
        return letter.original.encode("utf-8")
    if letter.original_b64 is not None:
        return base64.b64decode(letter.original_b64)
    return None
