"""Ingest: a Kafka message's bytes → a validated :class:`postlens.schemas.Post`, or the reason it is refused.

Everything the model or Elasticsearch must never see is refused here (the worker dead-letters it): messages over
the size limit, bytes that are not strict UTF-8 JSON objects (no NaN/Infinity/1e400, no integer of over 4,300 digits,
which CPython refuses to convert, no lone surrogates from ``\\ud800`` escapes, nesting within ``max_post_depth``),
posts that do not match the schema, ids Elasticsearch cannot take, empty or over-long text.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import ValidationError

from postlens.failures import IngestFailure
from postlens.io.deadletter import RawMessage, dead_letter, message_version
from postlens.schemas import Post, text_refusal, validation_summary
from postlens.settings import Settings
from stream.results import Accepted, StageResult

# Elasticsearch refuses a whole bulk request holding an _id over 512 bytes; entity ids append ":{start}-{end}".
MAX_ID_BYTES = 480


class InvalidPost(Exception):
    """The message is not a post PostLens can process; ``kind`` is the machine-readable reason."""

    def __init__(self, kind: IngestFailure, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _refuse_constant(name: str) -> Any:
    raise InvalidPost(IngestFailure.INVALID_JSON, f"{name} is not JSON")


def _integer(literal: str) -> int:
    try:
        return int(literal)
    except ValueError as error:  # over sys.get_int_max_str_digits (4,300) digits: CPython refuses the conversion
        raise InvalidPost(IngestFailure.INVALID_NUMBER, f"integer of {len(literal)} digits is out of range") from error


def _finite(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):  # 1e400: valid JSON, but an infinity no JSON encoder writes back
        raise InvalidPost(IngestFailure.INVALID_JSON, f"number {literal[:40]} is out of range")
    return number


def _depth(document: Any) -> int:
    """Nesting depth of a JSON value, without recursion (the value may be nested thousands deep)."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _load_json(value: bytes, max_depth: int) -> Any:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidPost(IngestFailure.INVALID_UTF8, f"message is not UTF-8: {error}") from error
    try:
        document = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite, parse_int=_integer)
    except json.JSONDecodeError as error:
        raise InvalidPost(IngestFailure.INVALID_JSON, f"message is not JSON: {error}") from error
    except RecursionError as error:
        raise InvalidPost(
            IngestFailure.TOO_DEEP, f"JSON nested deeper than the parser allows ({len(value)} bytes)"
        ) from error
    # Both checks below walk the whole document; the text itself shows when neither can fail (most posts).
    if text.count("[") + text.count("{") >= max_depth and (depth := _depth(document)) > max_depth:
        raise InvalidPost(IngestFailure.TOO_DEEP, f"JSON nested {depth} deep; the limit is {max_depth}")
    if "\\ud" in text or "\\uD" in text:  # strict UTF-8 holds no surrogate: only a \uD800–\uDFFF escape makes one
        try:
            # Valid JSON may still escape lone surrogates ("\ud800"): no UTF-8 encoder (Triton's, Elasticsearch's)
            # takes them.
            json.dumps(document, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as error:
            raise InvalidPost(
                IngestFailure.INVALID_UNICODE, f"message has text that is not valid Unicode: {error.reason}"
            ) from error
    return document


def parse_post(value: bytes | None, settings: Settings) -> Post:
    """Validate one message value; raise :class:`InvalidPost` when it cannot be processed."""
    if value is None:
        raise InvalidPost(IngestFailure.EMPTY, "the message has no value")
    if len(value) > settings.max_post_bytes:
        raise InvalidPost(
            IngestFailure.OVERSIZE, f"message is {len(value)} bytes; the limit is {settings.max_post_bytes}"
        )
    document = _load_json(value, settings.max_post_depth)
    if not isinstance(document, dict):
        raise InvalidPost(IngestFailure.SCHEMA, f"a post is a JSON object, got {type(document).__name__}")
    try:
        post = Post.model_validate(document)
    except ValidationError as error:
        raise InvalidPost(IngestFailure.SCHEMA, validation_summary(error, "post")) from error
    if len(post.id.encode("utf-8")) > MAX_ID_BYTES:
        raise InvalidPost(IngestFailure.SCHEMA, f"id: over {MAX_ID_BYTES} bytes in UTF-8")
    if refusal := text_refusal(post.text, settings.max_text_chars):
        raise InvalidPost(*refusal)
    return post


def post_version(raw: RawMessage, post: Post) -> int:
    """Which of two messages about one post is newer: the larger version — the post's own ``version`` where the
    producer gives one, else the message's (:func:`postlens.io.deadletter.message_version`: a replay's header, else
    its offset in the partition)."""
    if post.version is not None:
        return post.version
    return message_version(raw) or 0


def ingest(messages: list[RawMessage], settings: Settings) -> StageResult[Accepted]:
    """The messages that are posts, and a dead letter for each that is not."""
    result: StageResult[Accepted] = StageResult()
    for raw in messages:
        try:
            post = parse_post(raw.value, settings)
        except InvalidPost as error:
            result.letters.append((raw, dead_letter(raw, "ingest", error.kind, str(error))))
        else:
            result.done.append(Accepted(raw, post, post_version(raw, post)))
    return result
