"""The worker: one Faust agent running micro-batches through ingest → fetch → infer → index.

Delivery: a batch's offsets are acknowledged only when :meth:`Pipeline.process` returns, and it returns only after
Elasticsearch acknowledged the batch and every dead letter of the batch was written. While Triton or Elasticsearch
is unavailable the batch waits (with backoff), nothing is committed, and Kafka holds the rest of the stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import faust
import numpy as np
from elasticsearch import AsyncElasticsearch
from prometheus_client import CONTENT_TYPE_LATEST

from postlens.runtime.images import empty_images
from postlens.schemas import DeadLetter, Post, PostPrediction, Region
from postlens.settings import Settings
from stream.app import WorkerApp, create_app
from postlens.io.deadletter import RawMessage, dead_letter
from postlens.io.fetch import OK, SKIPPED, FetchedImage, ImageFetcher
from postlens.io.image_cache import ImageCache
from stream.stages.index import Indexer, ProcessedPost, es_client
from stream.stages.infer import InferenceUnavailable, InferRequest, TritonInferer
from stream.stages.ingest import InvalidPost, parse_post
from stream.metrics import Metrics
from postlens.io.retry import retry_forever

log = logging.getLogger(__name__)
Letter = tuple[RawMessage, DeadLetter]  # a dead letter and the message it is about (for its exact key bytes)
# The Elasticsearch client logs every request at INFO and each failed node as a warning; the worker's retry loop
# reports outages itself, once per attempt.
logging.getLogger("elastic_transport").setLevel(logging.ERROR)


def grounded_in_post(prediction: PostPrediction, fed: Sequence[int], urls: Sequence[str]) -> PostPrediction:
    """Re-number regions from the model's image slots (only images that loaded) to the post's own image list."""
    entities = [
        entity.model_copy(
            update={
                "regions": [
                    Region(image_index=fed[region.image_index], box=region.box, score=region.score,
                           image_url=urls[fed[region.image_index]])
                    for region in entity.regions
                ]
            }
        )
        for entity in prediction.entities
    ]
    return prediction.model_copy(update={"entities": entities})


def model_input(post: Post, images: list[FetchedImage], image_size: int) -> tuple[InferRequest, list[int]]:
    """The model's request for ``post`` and, per image slot, the index of that image in the post."""
    fed = [index for index, image in enumerate(images) if image.pixels is not None]
    pixels = np.stack([images[index].pixels for index in fed]) if fed else empty_images(0, image_size)
    return InferRequest(text=post.text, images=pixels), fed


class Pipeline:
    """The stages of one worker, connected once at start."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        dead_letters: faust.TopicT,
        inferer: TritonInferer,
        fetcher: ImageFetcher,
        cache: ImageCache,
        es: AsyncElasticsearch,
        indexer: Indexer,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._dead_letters = dead_letters
        self._inferer = inferer
        self._fetcher = fetcher
        self._cache = cache
        self._es = es
        self._indexer = indexer

    @classmethod
    async def start(cls, settings: Settings, metrics: Metrics, dead_letters: faust.TopicT) -> Pipeline:
        """Connect to Triton and Elasticsearch, waiting while either is unavailable."""
        inferer = await retry_forever(
            lambda: TritonInferer.connect(settings),
            retriable=(InferenceUnavailable,),
            what="connecting to Triton",
            max_delay_s=settings.retry_backoff_max_s,
        )
        es = es_client(settings)
        indexer = Indexer(es, settings, metrics)
        await indexer.install_templates()
        cache = ImageCache(settings, inferer.image_size)
        fetcher = ImageFetcher(settings, inferer.image_size, cache)
        log.info("pipeline ready: model %s, image size %d", settings.triton_model, inferer.image_size)
        return cls(settings, metrics, dead_letters, inferer, fetcher, cache, es, indexer)

    async def close(self) -> None:
        await self._fetcher.close()
        await self._cache.close()
        await self._inferer.close()
        await self._es.close()

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self._metrics.stage_seconds.labels(name).observe(time.perf_counter() - started)

    async def process(self, messages: list[RawMessage]) -> None:
        """Run one micro-batch to the end: every message indexed or dead-lettered."""
        self._metrics.batch_size.observe(len(messages))
        with self._stage("ingest"):
            accepted, letters = self._ingest(messages)
        indexed = 0
        if accepted:
            with self._stage("fetch"):
                fetched = await asyncio.gather(*(self._fetcher.fetch_post_images(p.images) for _, p in accepted))
            self._record_fetches(fetched)
            with self._stage("infer"):
                processed, refused = await self._infer(accepted, fetched)
            with self._stage("index"):
                failures = await self._indexer.index(processed)
            letters += refused
            letters += [(f.item.raw, dead_letter(f.item.raw, "index", f.kind, f.message)) for f in failures]
            indexed = len(processed) - len(failures)
        await self._send_dead_letters(letters)
        self._metrics.record_finished(indexed=indexed, dead_lettered=len(letters))

    def _ingest(self, messages: list[RawMessage]) -> tuple[list[tuple[RawMessage, Post]], list[Letter]]:
        accepted: list[tuple[RawMessage, Post]] = []
        letters: list[Letter] = []
        for raw in messages:
            try:
                accepted.append((raw, parse_post(raw.value, self._settings)))
            except InvalidPost as error:
                letters.append((raw, dead_letter(raw, "ingest", error.kind, str(error))))
        return accepted, letters

    async def _infer(
        self, accepted: list[tuple[RawMessage, Post]], fetched: list[list[FetchedImage]]
    ) -> tuple[list[ProcessedPost], list[Letter]]:
        """Predictions for the batch (waiting while Triton is unavailable); posts the model refused as letters."""
        inputs = [model_input(post, images, self._inferer.image_size) for (_, post), images in zip(accepted, fetched)]
        started = time.perf_counter()
        predictions = await retry_forever(
            lambda: self._inferer.infer([request for request, _ in inputs]),
            retriable=(InferenceUnavailable,),
            what="Triton inference",
            max_delay_s=self._settings.retry_backoff_max_s,
            on_retry=lambda _error: self._metrics.dependency_retries.labels("triton").inc(),
        )
        self._metrics.triton_seconds.observe(time.perf_counter() - started)

        processed: list[ProcessedPost] = []
        refused: list[Letter] = []
        for (raw, post), images, (_, fed), prediction in zip(accepted, fetched, inputs, predictions):
            if prediction.error is not None:
                refused.append((raw, dead_letter(raw, "infer", "model_refused", prediction.error)))
                continue
            self._metrics.record_model(prediction.model.name, prediction.model.version)
            grounded = grounded_in_post(prediction, fed, post.images)
            processed.append(ProcessedPost(raw, post, grounded, [image.outcome for image in images]))
        return processed, refused

    def _record_fetches(self, fetched: list[list[FetchedImage]]) -> None:
        for images in fetched:
            for image in images:
                status = image.outcome.status
                if status == SKIPPED:
                    continue
                self._metrics.image_cache.labels("hit" if image.outcome.cached else "miss").inc()
                if status != OK:
                    self._metrics.fetch_failures.labels(status).inc()

    async def _send_dead_letters(self, letters: list[Letter]) -> None:
        """Write the batch's dead letters and wait until Kafka has them (their offsets are acked next)."""
        deliveries = []
        for raw, letter in letters:
            self._metrics.dead_letters.labels(letter.error.stage, letter.error.kind).inc()
            log.info("dead letter %s/%s: %s", letter.error.stage, letter.error.kind, letter.error.message)
            deliveries.append(await self._dead_letters.send(key=raw.key, value=letter.model_dump_json().encode()))
        await asyncio.gather(*deliveries)


def _raw(event: faust.EventT) -> RawMessage:
    message = event.message
    return RawMessage(
        value=message.value, key=message.key, topic=message.topic, partition=message.partition,
        offset=message.offset,
    )


def _withhold_acks(events: Sequence[faust.EventT]) -> None:
    """Keep unfinished events' offsets from ever being committed by this process.

    ``Stream.take_events`` acks its batch when the batch ends, even when it ends by cancellation (shutdown,
    rebalance) in the middle of processing. Marking the messages acked beforehand turns that ack into a no-op, so the
    offsets stay uncommitted and the next owner of the partition processes them again.
    """
    for event in events:
        event.message.acked = True


def build_worker(settings: Settings, web_port: int | None = None) -> faust.App:
    """The Faust app with the pipeline agent and the ``/metrics`` page."""
    worker_app: WorkerApp = create_app(settings, web_port)
    app = worker_app.app
    metrics = Metrics()

    @app.page("/metrics")
    async def metrics_page(web: faust.web.View, _request: faust.web.Request) -> faust.web.Response:
        # Passed as a header: the content type carries a charset, which aiohttp refuses as content_type.
        return web.bytes(metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.agent(worker_app.posts, concurrency=1)
    async def process_posts(stream: faust.StreamT) -> None:
        pipeline = await Pipeline.start(settings, metrics, worker_app.dead_letters)
        try:
            async for events in stream.take_events(settings.batch_size, within=settings.batch_wait_s):
                try:
                    await pipeline.process([_raw(event) for event in events])
                except BaseException:  # cancelled by a shutdown, or a bug: these offsets must not be committed
                    _withhold_acks(events)
                    raise
        finally:
            await pipeline.close()

    return app
