"""Ingest: a Kafka message's bytes → a validated :class:`postlens.schemas.Post`, or the reason it is refused.

Everything the model must never see is refused here (the worker dead-letters it): messages over the size limit,
bytes that are not UTF-8 JSON objects, posts that do not match the schema, empty or over-long text.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from postlens.schemas import Post, text_refusal, validation_summary
from postlens.settings import Settings


class InvalidPost(Exception):
    """The message is not a post PostLens can process; ``kind`` is the machine-readable reason."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def parse_post(value: bytes | None, settings: Settings) -> Post:
    """Validate one message value; raise :class:`InvalidPost` when it cannot be processed."""
    if value is None:
        raise InvalidPost("empty", "the message has no value")
    if len(value) > settings.max_post_bytes:
        raise InvalidPost("oversize", f"message is {len(value)} bytes; the limit is {settings.max_post_bytes}")
    try:
        document = json.loads(value.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise InvalidPost("invalid_utf8", f"message is not UTF-8: {error}") from error
    except json.JSONDecodeError as error:
        raise InvalidPost("invalid_json", f"message is not JSON: {error}") from error
    if not isinstance(document, dict):
        raise InvalidPost("schema", f"a post is a JSON object, got {type(document).__name__}")
    try:
        post = Post.model_validate(document)
    except ValidationError as error:
        raise InvalidPost("schema", validation_summary(error, "post")) from error
    if refusal := text_refusal(post.text, settings.max_text_chars):
        raise InvalidPost(*refusal)
    return post
