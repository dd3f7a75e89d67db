"""Labels in: label messages → training examples with local images, or refusals with a reason.

A message must be a :class:`~postlens.schemas.Label` that converts to an
:class:`~trainer.data.examples.Example` the model can take and whose images load. Refused messages become dead
letters for the rejected-labels topic; for a repeated label id the latest message wins.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import ValidationError
from tqdm import tqdm

from postlens.failures import LabelFailure, image_failure
from postlens.io.deadletter import dead_letter, letter_bytes
from postlens.io.fetch import OK, FetchError, ImageFetcher, decode_image
from postlens.io.image_cache import ImageCache
from postlens.io.kafka import (
    BacklogReader,
    ConsumedMessage,
    Offsets,
    OutgoingRecord,
    deliver_then_commit,
    ensure_topics,
)
from postlens.schemas import DeadLetter, Label, text_refusal, validation_summary
from postlens.settings import Settings
from trainer.data.examples import Example
from trainer.data.jsonl import example_from_label

log = logging.getLogger(__name__)

REJECTED_PARTITIONS = 1  # refused labels stay in the order they were refused; their volume is small


class InvalidLabel(Exception):
    """A label message retraining refuses; ``kind`` is the machine-readable reason."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def parse_label(value: bytes | None) -> Label:
    """A message value → a :class:`Label`, or :class:`InvalidLabel` (``invalid_json`` — not UTF-8 JSON — or
    ``schema``)."""
    if value is None:
        raise InvalidLabel(LabelFailure.EMPTY, "the message has no value")
    try:
        return Label.model_validate_json(value)
    except ValidationError as error:
        invalid = any(item["type"] == "json_invalid" for item in error.errors())
        kind = LabelFailure.INVALID_JSON if invalid else LabelFailure.SCHEMA
        raise InvalidLabel(kind, validation_summary(error, "label")) from error


def label_example(label: Label, image_root: Path, max_text_chars: int) -> tuple[Example, list[str]]:
    """The training example of a label (images still as references) and notes on widened spans."""
    try:
        example, notes = example_from_label(label, image_root)
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        raise InvalidLabel(LabelFailure.CONVERSION, str(error)) from error
    if refusal := text_refusal(example.text, max_text_chars):
        raise InvalidLabel(*refusal)
    return example, notes


def latest_by_id(messages: Sequence[tuple[ConsumedMessage, Label]]) -> tuple[list[tuple[ConsumedMessage, Label]], int]:
    """One label per annotation id — the latest message (by time, then offset) — sorted by that id; and how many
    were superseded."""
    latest: dict[str, tuple[ConsumedMessage, Label]] = {}
    for message, label in messages:
        kept = latest.get(label.annotation_id)
        if kept is None or (message.timestamp, message.raw.offset or 0) >= (kept[0].timestamp, kept[0].raw.offset or 0):
            latest[label.annotation_id] = (message, label)
    return [latest[label_id] for label_id in sorted(latest)], len(messages) - len(latest)


class LabelImages:
    """A label's images → PNG files of model pixels in a work folder, so training and evaluation read every image the
    same way. URLs go through postlens' fetcher (SSRF policy, limits, Redis cache); local files must lie under
    ``root`` (labels come from a topic, and must not read arbitrary files) and pass the same decoding checks."""

    def __init__(self, settings: Settings, image_size: int, root: Path, out: Path) -> None:
        self._settings = settings
        self._image_size = image_size
        self._root = root.resolve()
        self._out = out
        self._cache: ImageCache | None = None
        self._fetcher: ImageFetcher | None = None
        self._done: dict[str, str | InvalidLabel] = {}
        out.mkdir(parents=True, exist_ok=True)

    async def localize(self, references: Sequence[str]) -> list[str]:
        """Local PNG paths for ``references``, in order; raises the first image's :class:`InvalidLabel`."""
        localized: list[str] = []
        for path in await asyncio.gather(*(self._one(reference) for reference in references)):
            if isinstance(path, InvalidLabel):
                raise path
            localized.append(path)
        return localized

    async def _one(self, reference: str) -> str | InvalidLabel:
        if reference not in self._done:
            try:
                pixels = await (self._fetch(reference) if "://" in reference else self._read(Path(reference)))
                target = self._out / f"{hashlib.sha256(reference.encode()).hexdigest()[:32]}.png"
                await asyncio.to_thread(Image.fromarray(pixels).save, target)
                self._done[reference] = str(target)
            except InvalidLabel as refusal:
                self._done[reference] = refusal
        return self._done[reference]

    async def _fetch(self, url: str) -> np.ndarray:
        if self._fetcher is None:
            self._cache = ImageCache(self._settings, self._image_size)
            self._fetcher = ImageFetcher(self._settings, self._image_size, cache=self._cache)
        fetched = await self._fetcher.fetch(url)
        if fetched.outcome.status != OK or fetched.pixels is None:
            raise InvalidLabel(image_failure(fetched.outcome.status), f"image {url}: {fetched.outcome.message}")
        return fetched.pixels

    async def _read(self, path: Path) -> np.ndarray:
        resolved = path.resolve()
        if not resolved.is_relative_to(self._root):
            raise InvalidLabel(LabelFailure.IMAGE_OUTSIDE_ROOT, f"image {path} is outside the image root {self._root}")
        if not resolved.is_file():
            raise InvalidLabel(LabelFailure.IMAGE_MISSING, f"image {path} does not exist")
        try:
            data = await asyncio.to_thread(resolved.read_bytes)
            return await asyncio.to_thread(decode_image, data, self._image_size, self._settings.fetch_max_pixels)
        except FetchError as error:
            raise InvalidLabel(image_failure(error.kind), f"image {path}: {error}") from error

    async def close(self) -> None:
        if self._fetcher is not None:
            await self._fetcher.close()
        if self._cache is not None:
            await self._cache.close()


@dataclass(frozen=True)
class NewLabel:
    """A usable label: its training example (local images), who produced it, and the message it came in."""

    example: Example
    source: str
    message: ConsumedMessage


@dataclass
class Ingested:
    """What one run read: the usable labels, the refused messages and the offsets to commit."""

    labels: list[NewLabel] = field(default_factory=list)
    rejected: list[DeadLetter] = field(default_factory=list)
    read: int = 0
    duplicates: int = 0
    widened: int = 0
    offsets: Offsets = field(default_factory=dict)

    @property
    def examples(self) -> list[Example]:
        return [label.example for label in self.labels]

    @property
    def rejected_by_kind(self) -> dict[str, int]:
        return dict(sorted(Counter(letter.error.kind for letter in self.rejected).items()))

    def refuse(self, label: NewLabel, kind: str, reason: str) -> None:
        """Move a usable label to the refused ones (published to the rejected-labels topic with ``reason``)."""
        self.labels.remove(label)
        self.rejected.append(dead_letter(label.message.raw, "label", kind, reason))
        self.rejected.sort(key=lambda letter: (letter.source_partition or 0, letter.source_offset or 0))


async def ingest(
    settings: Settings,
    image_root: Path,
    image_size: int,
    max_images: int,
    work: Path,
    from_beginning: bool = False,
    max_labels: int | None = None,
) -> Ingested:
    """Read the new labels and turn each into an example with local images (under ``work``), or a dead letter with
    the reason."""
    labels = BacklogReader(
        settings, settings.topic_labels, settings.retrain_group, from_beginning, max_labels, progress="reading labels"
    )
    async with labels:
        backlog = await labels.read()
    result = Ingested(read=len(backlog.messages), offsets=backlog.offsets)

    def refuse(message: ConsumedMessage, refusal: InvalidLabel) -> None:
        result.rejected.append(dead_letter(message.raw, "label", refusal.kind, str(refusal)))

    parsed: list[tuple[ConsumedMessage, Label]] = []
    for message in backlog.messages:
        try:
            parsed.append((message, parse_label(message.raw.value)))
        except InvalidLabel as refusal:
            refuse(message, refusal)
    latest, result.duplicates = latest_by_id(parsed)

    images = LabelImages(settings, image_size, image_root, work / "images")

    async def check(message: ConsumedMessage, label: Label) -> NewLabel | None:
        try:
            example, notes = label_example(label, image_root, settings.max_text_chars)
            used = await images.localize(example.images[:max_images])
        except InvalidLabel as refusal:
            refuse(message, refusal)
            return None
        finally:
            progress.update()
        for note in notes:
            log.warning("%s (offset %s): %s", message.raw.topic, message.raw.offset, note)
        result.widened += len(notes)
        example = example.model_copy(update={"images": [*used, *example.images[max_images:]]})
        return NewLabel(example=example, source=label.source_name, message=message)

    try:
        # Concurrently: URL images are fetched in parallel, within the fetcher's global and per-host limits.
        with tqdm(total=len(latest), desc="checking labels", unit="label", disable=not latest) as progress:
            checked = await asyncio.gather(*(check(message, label) for message, label in latest))
    finally:
        await images.close()
    result.labels = [label for label in checked if label is not None]
    result.rejected.sort(key=lambda letter: (letter.source_partition or 0, letter.source_offset or 0))
    return result


async def settle(settings: Settings, ingested: Ingested) -> None:
    """Publish the refused labels, then — once Kafka has them — commit the consumed offsets."""
    if ingested.rejected:
        await ensure_topics(settings, {settings.topic_labels_rejected: REJECTED_PARTITIONS})
    refusals = [
        OutgoingRecord(
            settings.topic_labels_rejected,
            key=letter.key.encode("utf-8") if letter.key is not None else None,
            # Bounded like the worker's dead letters: one huge refused label must not fail every run's commit.
            value=letter_bytes(letter, settings.dlq_max_bytes),
        )
        for letter in ingested.rejected
    ]
    await deliver_then_commit(settings, refusals, settings.retrain_group, ingested.offsets)
