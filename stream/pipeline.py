"""The pipeline of one worker: a micro-batch through ingest → fetch → infer → sink, every message ending written or
dead-lettered.

Containment: whatever one post carries stays with that post. Ingest refuses what it cannot read, an image that
fails leaves its post text-only, the model's or the sink's refusal of one post dead-letters that post; a fault
nobody foresaw splits its batch until the post it is about is alone, and that post is dead-lettered with the stage
it failed in. Outages (Kafka, the sink, the model; Redis only costs the cache) are waited out with backoff.

Each stage returns one shape, :class:`stream.results.StageResult`: the posts that go on and the letters of those
that do not. The pipeline knows its model and its sink only by their interfaces (:class:`stream.stages.infer.Model`,
:class:`stream.sink.Sink`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from postlens.failures import InferFailure, InternalFailure
from postlens.io.deadletter import DeadLetterWriter, RawMessage, dead_letter
from postlens.io.fetch import ImageFetcher
from postlens.io.image_cache import ImageCache
from postlens.io.retry import retry_forever
from postlens.schemas import PostPrediction, Stage
from postlens.settings import Settings
from stream.metrics import Metrics
from stream.results import Accepted, Fetched, Letter, ProcessedPost, StageResult
from stream.sink import Sink
from stream.stages.fetch import FetchStage
from stream.stages.infer import InferenceUnavailable, Model, ModelFault, grounded_in_post, model_input
from stream.stages.ingest import ingest

log = logging.getLogger(__name__)
SendLetter = Callable[[bytes | None, bytes], Awaitable[object]]


class StageFailed(Exception):
    """An exception nobody foresaw, raised while a batch was in ``stage``."""

    def __init__(self, stage: Stage, message: str) -> None:
        super().__init__(message)
        self.stage = stage


class Pipeline:
    """The stages of one worker, connected once at start."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        send: SendLetter,
        model: Model,
        fetcher: ImageFetcher,
        sink: Sink,
        cache: ImageCache | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._letters = DeadLetterWriter(
            send,
            settings.dlq_max_bytes,
            settings.retry_backoff_max_s,
            on_outage=lambda _error: metrics.dependency_retries.labels("kafka").inc(),
        )
        self._model = model
        self._fetcher = fetcher
        self._cache = cache
        self._fetch = FetchStage(fetcher, metrics)
        self._sink = sink

    @classmethod
    async def start(
        cls,
        settings: Settings,
        metrics: Metrics,
        send: SendLetter,
        connect: Callable[[], Awaitable[Model]],
        sink: Sink,
        image_cache: bool = True,
    ) -> Pipeline:
        """Connect the model (``connect``) and prepare the sink, waiting while either is unavailable.

        ``send(key, value)`` writes a dead letter and returns once Kafka has it.
        """
        model = await retry_forever(
            connect,
            retriable=(InferenceUnavailable,),
            what="connecting to the model",
            max_delay_s=settings.retry_backoff_max_s,
        )
        await sink.prepare()
        cache = ImageCache(settings, model.image_size) if image_cache else None
        fetcher = ImageFetcher(settings, model.image_size, cache)
        log.info("pipeline ready: model %s, image size %d", settings.triton_model, model.image_size)
        return cls(settings, metrics, send, model, fetcher, sink, cache)

    async def close(self) -> None:
        await self._fetcher.close()
        if self._cache is not None:
            await self._cache.close()
        await self._model.close()
        await self._sink.close()

    async def process(self, messages: list[RawMessage]) -> None:
        """Run one micro-batch to the end: every message written or dead-lettered."""
        try:
            await self._process(messages)
        except StageFailed as failure:
            if len(messages) == 1:
                [raw] = messages
                await self._send_dead_letters(
                    [(raw, dead_letter(raw, failure.stage, InternalFailure.INTERNAL_ERROR, str(failure)))]
                )
                self._metrics.record_finished(indexed=0, dead_lettered=1)
                return
            self._metrics.batch_splits.inc()
            half = len(messages) // 2
            await self.process(messages[:half])
            await self.process(messages[half:])

    @contextmanager
    def _stage(self, name: Stage) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        except Exception as error:
            log.exception("unforeseen %s in the %s stage of a batch", type(error).__name__, name)
            raise StageFailed(name, f"{type(error).__name__}: {error}") from error
        self._metrics.stage_seconds.labels(name).observe(time.perf_counter() - started)

    async def _process(self, messages: list[RawMessage]) -> None:
        self._metrics.batch_size.observe(len(messages))
        with self._stage("ingest"):
            ingested = ingest(messages, self._settings)
        with self._stage("fetch"):
            fetched = await self._fetch.fetch(ingested.done)
        with self._stage("infer"):
            inferred = await self._infer(fetched.done)
        with self._stage("index"):
            written = await self._write(inferred.done)
        letters = [*ingested.letters, *fetched.letters, *inferred.letters, *written.letters]
        await self._send_dead_letters(letters)
        self._metrics.record_finished(indexed=len(written.done), dead_lettered=len(letters))

    async def _infer(self, batch: list[Fetched]) -> StageResult[ProcessedPost]:
        """Predictions for the batch (waiting while the model is unavailable); posts the model failed as letters."""
        result: StageResult[ProcessedPost] = StageResult()
        if not batch:
            return result
        inputs = [model_input(item.accepted.post, item.images, self._model.image_size) for item in batch]
        started = time.perf_counter()
        outcomes = await retry_forever(
            lambda: self._model.infer([request for request, _ in inputs]),
            retriable=(InferenceUnavailable,),
            what="model inference",
            max_delay_s=self._settings.retry_backoff_max_s,
            on_retry=lambda _error: self._metrics.dependency_retries.labels("triton").inc(),
        )
        self._metrics.triton_seconds.observe(time.perf_counter() - started)
        for item, (_, fed), outcome in zip(batch, inputs, outcomes, strict=True):
            raw = item.accepted.raw
            if isinstance(outcome, ModelFault):
                result.letters.append((raw, dead_letter(raw, "infer", outcome.kind, outcome.message)))
            elif outcome.error is not None:
                result.letters.append((raw, dead_letter(raw, "infer", InferFailure.MODEL_REFUSED, outcome.error)))
            else:
                result.done.append(self._grounded(item, fed, outcome))
        return result

    def _grounded(self, item: Fetched, fed: list[int], prediction: PostPrediction) -> ProcessedPost:
        self._metrics.record_model(prediction.model.name, prediction.model.version)
        accepted: Accepted = item.accepted
        grounded = grounded_in_post(prediction, fed, accepted.post.images)
        return ProcessedPost(
            accepted.raw, accepted.post, grounded, [image.outcome for image in item.images], accepted.version
        )

    async def _write(self, batch: list[ProcessedPost]) -> StageResult[ProcessedPost]:
        if not batch:
            return StageResult()
        failures = await self._sink.write(batch)
        refused = {id(failure.item) for failure in failures}
        return StageResult(
            done=[item for item in batch if id(item) not in refused],
            letters=[(f.item.raw, dead_letter(f.item.raw, "index", f.kind, f.message)) for f in failures],
        )

    async def _send_dead_letters(self, letters: list[Letter]) -> None:
        """Write the batch's dead letters and wait until Kafka has them (postlens.io.deadletter: never wedged by a
        letter Kafka refuses; waiting while Kafka is unreachable)."""
        for _raw, letter in letters:
            self._metrics.dead_letters.labels(letter.error.stage, letter.error.kind).inc()
            log.info("dead letter %s/%s: %s", letter.error.stage, letter.error.kind, letter.error.message[:300])
        await self._letters.write(letters)
