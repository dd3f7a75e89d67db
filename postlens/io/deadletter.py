"""Dead letters: a Kafka message PostLens could not process, kept with its original bytes and the reason.

A letter must always be writable, or the partition it came from waits on it forever: its key is bounded, its size is
bounded (:func:`letter_bytes`), and :class:`DeadLetterWriter` shrinks a letter Kafka refuses for good (too large for
the topic, not authorized) to a minimal one — the reason and where the original is (source topic, partition, offset,
size, sha256). Only when Kafka refuses even that does the writer wait, as for an outage, saying so at ERROR.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka.errors import BrokerResponseError, KafkaError, RecordTooLargeError

from postlens.io.retry import Backoff
from postlens.schemas import DEAD_LETTER_SCHEMA_VERSION, MAX_VERSION, VERSION_HEADER, DeadLetter, ErrorInfo, Stage

log = logging.getLogger(__name__)

# What a dead letter too large for Kafka keeps of its original; with the message bound below the letter stays
# under 64 KiB even when JSON escaping multiplies every byte by six.
KEPT_PREFIX_BYTES = 8 * 1024
MAX_ERROR_MESSAGE_CHARS = 2000
# Keys beyond this are no post id (ids are at most 480 bytes): the letter keeps a prefix, its Kafka key a digest.
KEPT_KEY_BYTES = 1024
MINIMAL_MESSAGE_CHARS = 300


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


def _key_fields(key: bytes | None) -> tuple[str | None, str | None, bool]:
    """(key, key_b64, key_truncated): the key as text when it is UTF-8, else base64 (never escaped:
    ``backslashreplace`` quadruples binary), cut at ``KEPT_KEY_BYTES``."""
    if key is None:
        return None, None, False
    kept = key[:KEPT_KEY_BYTES]
    try:
        return kept.decode("utf-8"), None, len(key) > KEPT_KEY_BYTES
    except UnicodeDecodeError:  # binary, or a cut through a UTF-8 character
        return None, base64.b64encode(kept).decode("ascii"), len(key) > KEPT_KEY_BYTES


def letter_key(key: bytes | None) -> bytes | None:
    """The Kafka key of ``key``'s letter: the key itself, or its sha256 when it is over ``KEPT_KEY_BYTES``."""
    if key is None or len(key) <= KEPT_KEY_BYTES:
        return key
    return hashlib.sha256(key).hexdigest().encode("ascii")


def original_key(letter: DeadLetter) -> bytes | None:
    """The message key exactly as it was first published; None when there was none or it was not kept whole."""
    if letter.key_truncated:
        return None
    if letter.key is not None:
        return letter.key.encode("utf-8")
    if letter.key_b64 is not None:
        return base64.b64decode(letter.key_b64)
    return None


def dead_letter(raw: RawMessage, stage: Stage, kind: str, message: str) -> DeadLetter:
    if len(message) > MAX_ERROR_MESSAGE_CHARS:  # an error may quote its input; the original is kept apart anyway
        message = message[:MAX_ERROR_MESSAGE_CHARS] + "…"
    # Quoted input may hold lone surrogates, which no JSON encoder of the letter takes.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    original, original_b64 = _original_fields(raw.value)
    key, key_b64, key_truncated = _key_fields(raw.key)
    return DeadLetter(
        schema_version=DEAD_LETTER_SCHEMA_VERSION,
        original=original,
        original_b64=original_b64,
        original_size=len(raw.value) if raw.value is not None else None,
        key=key,
        key_b64=key_b64,
        key_truncated=key_truncated,
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


def minimal_letter(letter: DeadLetter) -> DeadLetter:
    """What is kept of a letter Kafka refused for good: the reason, cut short, and where to find the original (the
    source coordinates, its size and sha256) — no original bytes and no key."""
    value = original_bytes(letter)
    return letter.model_copy(
        update={
            "original": None,
            "original_b64": None,
            "original_truncated": True,
            "original_sha256": letter.original_sha256 or (hashlib.sha256(value).hexdigest() if value else None),
            "key": None,
            "key_b64": None,
            "key_truncated": letter.key is not None or letter.key_b64 is not None or letter.key_truncated,
            "error": letter.error.model_copy(update={"message": letter.error.message[:MINIMAL_MESSAGE_CHARS]}),
        }
    )


def is_refusal(error: BaseException) -> bool:
    """Kafka refused the message for good (too large, not authorized, invalid topic, policy): sending the same bytes
    again cannot help. Other Kafka errors (connection, timeout, leader moves) are an outage: waiting helps."""
    return isinstance(error, RecordTooLargeError) or (isinstance(error, BrokerResponseError) and not error.retriable)


Send = Callable[[bytes | None, bytes], Awaitable[object]]


class DeadLetterWriter:
    """Writes letters and returns once Kafka has every one; no letter can wedge its partition.

    ``send(key, value)`` returns once Kafka acknowledged the message. A letter refused for good is sent again alone
    (a refusal may be its batch's, not its own), then as :func:`minimal_letter`; a minimal letter refused too, and
    every other Kafka error, is waited out with backoff (``on_outage`` is told each time) — the batch is held, nothing
    past it is committed, and nothing is skipped. Errors that are not Kafka's propagate.
    """

    def __init__(
        self,
        send: Send,
        max_bytes: int,
        max_delay_s: float,
        on_outage: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._send = send
        self._max_bytes = max_bytes
        self._max_delay_s = max_delay_s
        self._on_outage = on_outage
        self._alone = asyncio.Lock()

    async def write(self, letters: Sequence[tuple[RawMessage, DeadLetter]]) -> None:
        await asyncio.gather(*(self._write_one(raw, letter) for raw, letter in letters))

    async def _write_one(self, raw: RawMessage, letter: DeadLetter) -> None:
        backoff = Backoff(self._max_delay_s)
        attempts = [
            (letter_key(raw.key), letter_bytes(letter, self._max_bytes), False),  # with the others' sends
            (letter_key(raw.key), letter_bytes(letter, self._max_bytes), True),  # alone
            (None, minimal_letter(letter).model_dump_json().encode("utf-8"), True),  # minimal, alone
        ]
        step = 0
        while True:
            key, value, alone = attempts[step]
            try:
                if alone:
                    async with self._alone:
                        await self._send(key, value)
                else:
                    await self._send(key, value)
                return
            except KafkaError as error:
                if is_refusal(error) and step < len(attempts) - 1:
                    step += 1
                    if step == len(attempts) - 1:
                        log.warning(
                            "Kafka refused the dead letter of %s[%s]@%s for good (%s: %s); writing a minimal letter",
                            raw.topic, raw.partition, raw.offset, type(error).__name__, error,
                        )  # fmt: skip
                    continue
                if self._on_outage is not None:
                    self._on_outage(error)
                if is_refusal(error):
                    log.error(
                        "the dead-letter topic refuses even a minimal letter (%s: %s): holding %s[%s]@%s and what "
                        "follows it uncommitted until the topic takes it (check its ACLs and max.message.bytes)",
                        type(error).__name__, error, raw.topic, raw.partition, raw.offset,
                    )  # fmt: skip
                    step = 1  # once the topic takes letters again, the whole letter is tried first
                else:
                    log.warning("writing a dead letter failed (attempt %d), retrying: %s", backoff.attempt + 1, error)
                await backoff.wait()
