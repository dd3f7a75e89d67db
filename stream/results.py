"""What the worker's stages hand each other: the post at each step, and the one result shape every stage returns
(the posts that go on, and the dead letters of those that do not)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from postlens.io.deadletter import RawMessage
from postlens.io.fetch import FetchedImage, FetchOutcome
from postlens.schemas import DeadLetter, Post, PostPrediction

T = TypeVar("T")
Letter = tuple[RawMessage, DeadLetter]  # a dead letter and the message it is about (for its exact key bytes)


@dataclass(frozen=True)
class Accepted:
    """A message ingest could read, with its version (larger = newer; :func:`stream.stages.ingest.post_version`)."""

    raw: RawMessage
    post: Post
    version: int


@dataclass(frozen=True)
class Fetched:
    accepted: Accepted
    images: list[FetchedImage]  # one per image URL of the post, in order


@dataclass(frozen=True)
class ProcessedPost:
    """A post with its prediction; the prediction's regions already name the post's own image indices and URLs."""

    raw: RawMessage
    post: Post
    prediction: PostPrediction
    images: list[FetchOutcome]
    version: int = 0  # larger = newer: a sink never lets an older version overwrite a newer one


@dataclass
class StageResult(Generic[T]):
    """What a stage made of its batch: ``done`` goes on to the next stage, ``letters`` to the dead-letter topic."""

    done: list[T] = field(default_factory=list)
    letters: list[Letter] = field(default_factory=list)
