"""The worker in memory: a testing source (partitions, offsets, commits), a stand-in model, a testing sink, wired
through the real :class:`stream.flow.BatchFlow` and :class:`stream.pipeline.Pipeline` — no Kafka, Triton or
Elasticsearch, so batching, splitting, ordering, commit and containment tests run in seconds.

The stand-in model reads instructions from a post's text: ``POISON`` fails its execution (``model_error``),
``GARBLE`` answers nonsense (``bad_answer``), ``REFUSE`` is refused (``model_refused``), ``REGION`` grounds an entity
in an image the post lacks (a fault nobody foresaw, found by splitting), ``SLOW`` takes ``slow_s``; every
capitalized word is a ``PER`` entity. The testing sink refuses posts whose text says ``UNINDEXABLE``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from postlens.failures import IndexFailure, InferFailure
from postlens.io.deadletter import RawMessage
from postlens.io.fetch import ImageFetcher
from postlens.schemas import DeadLetter, ModelRef, PostPrediction, PredictedEntity, Region
from postlens.settings import Settings
from stream.flow import BatchFlow, Partition
from stream.metrics import Metrics
from stream.pipeline import Pipeline
from stream.results import ProcessedPost
from stream.sink import SinkFailure
from stream.stages.infer import InferenceUnavailable, InferOutcome, InferRequest, ModelFault

TOPIC = "posts"
IMAGE_SIZE = 32


class StandInModel:
    """Implements :class:`stream.stages.infer.Model` from instructions in the text."""

    image_size = IMAGE_SIZE

    def __init__(self, slow_s: float = 0.5) -> None:
        self.slow_s = slow_s
        self.batches: list[int] = []  # the size of every batch asked, in order
        self.unavailable_for = 0  # the next this-many calls raise InferenceUnavailable
        self.answer = asyncio.Event()  # cleared: calls wait (the model is "hanging")
        self.answer.set()

    async def infer(self, batch: Sequence[InferRequest]) -> list[InferOutcome]:
        self.batches.append(len(batch))
        await self.answer.wait()
        if self.unavailable_for:
            self.unavailable_for -= 1
            raise InferenceUnavailable("stand-in model is down")
        if any("SLOW" in request.text for request in batch):
            await asyncio.sleep(self.slow_s)
        return [self._one(request) for request in batch]

    @staticmethod
    def _one(request: InferRequest) -> InferOutcome:
        model = ModelRef(name="stand-in", version="1")
        if "POISON" in request.text:
            return ModelFault(InferFailure.MODEL_ERROR, "StatusCode.INTERNAL poisoned")
        if "GARBLE" in request.text:
            return ModelFault(InferFailure.BAD_ANSWER, "the model's answer is not a prediction")
        if "REFUSE" in request.text:
            return PostPrediction(model=model, image_relevance=0.0, error="refused")
        entities = [
            PredictedEntity(text=match.group(), type="PER", start=match.start(), end=match.end(), confidence=0.9)
            for match in re.finditer(r"\b[A-Z][a-z]+\b", request.text)
        ]
        if "REGION" in request.text and entities:
            region = Region(image_index=3, box=(0.1, 0.1, 0.5, 0.5), score=0.9)  # an image slot the post lacks
            entities[0] = entities[0].model_copy(update={"regions": [region]})
        return PostPrediction(entities=entities, image_relevance=0.0, model=model)

    async def close(self) -> None:
        pass


@dataclass
class MemorySink:
    """Implements :class:`stream.sink.Sink`: post id → (version, processed post); an older version never wins."""

    posts: dict[str, tuple[int, ProcessedPost]] = field(default_factory=dict)
    writes: int = 0
    available: asyncio.Event = field(default_factory=asyncio.Event)  # cleared: writes wait (an outage)
    closed: bool = False

    def __post_init__(self) -> None:
        self.available.set()

    async def prepare(self) -> None:
        await self.available.wait()

    async def write(self, batch: list[ProcessedPost]) -> list[SinkFailure]:
        await self.available.wait()
        self.writes += 1
        failures = []
        for item in batch:
            if "UNINDEXABLE" in item.post.text:
                failures.append(SinkFailure(item, IndexFailure.DOCUMENT_REFUSED, "the sink refuses it"))
            elif item.post.id not in self.posts or self.posts[item.post.id][0] <= item.version:
                self.posts[item.post.id] = (item.version, item)
        return failures

    async def close(self) -> None:
        self.closed = True

    def texts(self) -> dict[str, str]:
        return {post_id: item.post.text for post_id, (_, item) in self.posts.items()}


@dataclass
class MemorySource:
    """Partitions of messages with Kafka-like offsets, and every commit made."""

    partitions: int = 3
    messages: list[RawMessage] = field(default_factory=list)
    commits: list[dict[Partition, int]] = field(default_factory=list)

    def publish(self, key: str | None, value: bytes | None, partition: int | None = None) -> RawMessage:
        if partition is None:
            partition = hash(key) % self.partitions if key is not None else 0
        offset = sum(1 for message in self.messages if message.partition == partition)
        raw = RawMessage(value, key.encode() if key is not None else None, TOPIC, partition, offset)
        self.messages.append(raw)
        return raw

    def post(self, post_id: str, text: str, partition: int | None = None, **fields: Any) -> RawMessage:
        return self.publish(post_id, json.dumps({"id": post_id, "text": text, **fields}).encode(), partition)

    async def commit(self, offsets: dict[Partition, int]) -> bool:
        self.commits.append(dict(offsets))
        return True

    @property
    def committed(self) -> dict[int, int]:
        """Partition → its last committed offset."""
        latest: dict[int, int] = {}
        for commit in self.commits:
            latest.update({partition: offset for (_, partition), offset in commit.items()})
        return latest

    def ends(self) -> dict[int, int]:
        ends: dict[int, int] = {}
        for message in self.messages:
            ends[message.partition or 0] = max(ends.get(message.partition or 0, 0), (message.offset or 0) + 1)
        return ends


@dataclass
class Harness:
    settings: Settings
    source: MemorySource
    model: StandInModel
    sink: MemorySink
    metrics: Metrics
    pipeline: Pipeline
    flow: BatchFlow
    letters: list[DeadLetter] = field(default_factory=list)

    async def feed(self, messages: list[RawMessage] | None = None) -> None:
        for message in self.source.messages if messages is None else messages:
            await self.flow.put(message)

    def finished_keys(self) -> set[str]:
        return set(self.sink.posts) | {letter.key for letter in self.letters if letter.key is not None}

    async def wait_finished(self, count: int, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.finished_keys()) < count:
                await asyncio.sleep(0.01)

    async def wait_committed(self, timeout_s: float = 10.0) -> None:
        """Until every partition is committed up to its end."""
        async with asyncio.timeout(timeout_s):
            while self.source.committed != self.source.ends():
                await asyncio.sleep(0.01)


def harness_settings(**overrides: Any) -> Settings:
    base = {
        "batch_size": 4,
        "batch_wait_s": 0.05,
        "worker_batches_in_flight": 2,
        "worker_commit_interval_s": 0.02,
        "retry_backoff_max_s": 0.05,
        "topic_posts": TOPIC,
    }
    return Settings(**{**base, **overrides})


@asynccontextmanager
async def running_harness(
    settings: Settings | None = None, source: MemorySource | None = None, model: StandInModel | None = None
) -> AsyncIterator[Harness]:
    """A started pipeline and flow (its background tasks running) around the testing source, model and sink."""
    settings = settings or harness_settings()
    source = source or MemorySource()
    model = model or StandInModel()
    sink = MemorySink()
    metrics = Metrics()
    letters: list[DeadLetter] = []

    async def send(_key: bytes | None, value: bytes) -> None:
        letters.append(DeadLetter.model_validate_json(value))

    fetcher = ImageFetcher(settings, IMAGE_SIZE)
    pipeline = Pipeline(settings, metrics, send, model, fetcher, sink)
    flow = BatchFlow(pipeline.process, settings, metrics, source.commit)
    try:
        async with flow.running():
            yield Harness(settings, source, model, sink, metrics, pipeline, flow, letters)
    finally:
        await pipeline.close()
