"""Data a checkpoint carries with it: its reference evaluation set and a replay sample of its training data.

A retrained candidate is gated on the reference set (what its ancestors were selected on, plus curated additions),
and fine-tuning mixes the replay sample with the new labels so the model does not forget what it knew. Both travel
inside the checkpoint folder — a container that retrains has no clone to find the original files by path — as
token/tag JSONL (the words exactly as trained on) with their images copied beside them under content-hash names.
``carried.json`` records each set's file, content hash, size and where its posts came from (paths and hashes), so a
model card can say what a version was gated on, and a set altered on disk is refused rather than trusted.
"""

from __future__ import annotations

import hashlib
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from trainer.data.examples import Example
from trainer.data.jsonl import read_jsonl, write_jsonl

CARRIED_FILE = "carried.json"
IMAGES_DIR = "images"  # beside the sets' JSONL files, shared by both (content-addressed)

SetName = Literal["reference", "replay"]


class DataOrigin(BaseModel):
    """Where posts of a carried set came from: a file (by path and content hash), or a labels topic's range."""

    path: str
    sha256: str | None = None  # the file's content hash when it is a file
    posts: int


class CarriedSet(BaseModel):
    file: str  # relative to the checkpoint folder
    sha256: str  # of the JSONL file as written
    posts: int
    origins: list[DataOrigin] = Field(default_factory=list)


class CarriedData(BaseModel):
    reference: CarriedSet | None = None
    replay: CarriedSet | None = None

    def origins(self, name: SetName) -> list[DataOrigin]:
        record: CarriedSet | None = getattr(self, name)
        return record.origins if record is not None else []


class CarriedDataError(ValueError):
    """A checkpoint's carried set is missing or altered; the message says which and what to do."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_origins(paths: Sequence[Path], examples_per_path: Sequence[int]) -> list[DataOrigin]:
    return [
        DataOrigin(path=str(Path(path).resolve()), sha256=file_sha256(path), posts=count)
        for path, count in zip(paths, examples_per_path, strict=True)
    ]


def _copy_images(example: Example, images: Path) -> Example:
    """The example with each local image copied under ``images/`` by its content hash; URLs stay as they are."""
    copied = []
    for image in example.images:
        source = Path(image)
        if "://" in image or not source.is_file():
            copied.append(image)  # a URL, or a file already missing: the reader reports it as it would
            continue
        target = images / f"{file_sha256(source)}{source.suffix.lower()}"
        if not target.exists():
            shutil.copyfile(source, target)
        copied.append(str(target))
    return example.model_copy(update={"images": copied})


def write_set(checkpoint: Path, name: SetName, examples: Sequence[Example], origins: list[DataOrigin]) -> CarriedSet:
    """Write ``examples`` as the checkpoint's ``name`` set and record it in ``carried.json``."""
    images = checkpoint / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)
    path = checkpoint / f"{name}.jsonl"
    write_jsonl([_copy_images(example, images) for example in examples], path, form="tags")
    record = CarriedSet(file=path.name, sha256=file_sha256(path), posts=len(examples), origins=origins)
    carried = read_carried(checkpoint)
    setattr(carried, name, record)
    (checkpoint / CARRIED_FILE).write_text(carried.model_dump_json(indent=2) + "\n")
    return record


def read_carried(checkpoint: Path) -> CarriedData:
    path = Path(checkpoint) / CARRIED_FILE
    return CarriedData.model_validate_json(path.read_text()) if path.is_file() else CarriedData()


def read_set(checkpoint: Path, name: SetName) -> list[Example]:
    """The checkpoint's ``name`` set; :class:`CarriedDataError` when it has none or the file does not match its hash."""
    record: CarriedSet | None = getattr(read_carried(checkpoint), name)
    if record is None:
        raise CarriedDataError(f"{checkpoint} carries no {name} set")
    path = Path(checkpoint) / record.file
    if not path.is_file() or file_sha256(path) != record.sha256:
        raise CarriedDataError(f"{path} is missing or does not match the hash recorded in {CARRIED_FILE}")
    examples, _ = read_jsonl(path)
    return examples


def sample(examples: Sequence[Example], size: int, seed: int) -> list[Example]:
    """Up to ``size`` of ``examples``, drawn without replacement, in their original order (deterministic)."""
    if size >= len(examples):
        return list(examples)
    chosen = sorted(random.Random(seed).sample(range(len(examples)), size))
    return [examples[index] for index in chosen]


class SetToCarry(BaseModel):
    """Posts to record in a checkpoint, and where they came from."""

    examples: list[Example]
    origins: list[DataOrigin]


def carry_training_data(
    checkpoint: Path, reference: SetToCarry, replay: SetToCarry, replay_size: int, seed: int
) -> CarriedData:
    """Record both sets in ``checkpoint``: the whole reference set, and a sample of ``replay_size`` replay posts."""
    write_set(checkpoint, "reference", reference.examples, reference.origins)
    write_set(checkpoint, "replay", sample(replay.examples, replay_size, seed), replay.origins)
    return read_carried(checkpoint)
