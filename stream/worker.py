"""The worker: one Faust agent feeding micro-batches through ingest → fetch → infer → index, several at once.

Containment: whatever one post carries stays with that post. Ingest refuses what it cannot read, an image that
fails leaves its post text-only, the model's or Elasticsearch's refusal of one post dead-letters that post; a fault
nobody foresaw splits its batch until the post it is about is alone, and that post is dead-lettered with the stage
it failed in. Outages (Kafka, Elasticsearch, Triton; Redis only costs the cache) are waited out with backoff.

Delivery: offsets are committed in partition order by :class:`stream.commits.CommitLedger`, only across messages
indexed (Elasticsearch acknowledged) or dead-lettered (Kafka acknowledged); whatever is unfinished when the process
dies or loses the partition is processed again by the next owner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import faust
from prometheus_client import CONTENT_TYPE_LATEST

from postlens.io.connections import es_client
from postlens.io.deadletter import DeadLetterWriter, RawMessage, dead_letter
from postlens.io.fetch import FetchedImage, ImageFetcher
from postlens.io.image_cache import ImageCache
from postlens.io.retry import retry_forever
from postlens.schemas import DeadLetter, Post, PostPrediction, Stage
from postlens.settings import Settings
from stream.app import WorkerApp, create_app
from stream.commits import CommitLedger, Received
from stream.metrics import Metrics
from stream.stages.fetch import FetchStage
from stream.stages.index import Indexer, ProcessedPost
from stream.stages.infer import InferenceUnavailable, ModelFault, TritonInferer, grounded_in_post, model_input
from stream.stages.ingest import InvalidPost, parse_post

log = logging.getLogger(__name__)
Letter = tuple[RawMessage, DeadLetter]  # a dead letter and the message it is about (for its exact key bytes)
# The Elasticsearch client logs every request at INFO and each failed node as a warning; the worker's retry loop
# reports outages itself, once per attempt.
logging.getLogger("elastic_transport").setLevel(logging.ERROR)


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
        send: Callable[[bytes | None, bytes], Awaitable[object]],
        inferer: TritonInferer,
        fetcher: ImageFetcher,
        cache: ImageCache,
        indexer: Indexer,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._letters = DeadLetterWriter(
            send,
            settings.dlq_max_bytes,
            settings.retry_backoff_max_s,
            on_outage=lambda _error: metrics.dependency_retries.labels("kafka").inc(),
        )
        self._inferer = inferer
        self._fetcher = fetcher
        self._cache = cache
        self._fetch = FetchStage(fetcher, metrics)
        self._indexer = indexer

    @classmethod
    async def start(
        cls, settings: Settings, metrics: Metrics, send: Callable[[bytes | None, bytes], Awaitable[object]]
    ) -> Pipeline:
        """Connect to Triton and Elasticsearch, waiting while either is unavailable.

        ``send(key, value)`` writes a dead letter and returns once Kafka has it.
        """
        inferer = await retry_forever(
            lambda: TritonInferer.connect(settings),
            retriable=(InferenceUnavailable,),
            what="connecting to Triton",
            max_delay_s=settings.retry_backoff_max_s,
        )
        indexer = Indexer(es_client(settings), settings, metrics)
        await indexer.install_templates()
        cache = ImageCache(settings, inferer.image_size)
        fetcher = ImageFetcher(settings, inferer.image_size, cache)
        log.info("pipeline ready: model %s, image size %d", settings.triton_model, inferer.image_size)
        return cls(settings, metrics, send, inferer, fetcher, cache, indexer)

    async def close(self) -> None:
        await self._fetcher.close()
        await self._cache.close()
        await self._inferer.close()
        await self._indexer.close()

    async def process(self, messages: list[RawMessage]) -> None:
        """Run one micro-batch to the end: every message indexed or dead-lettered."""
        try:
            await self._process(messages)
        except StageFailed as failure:
            if len(messages) == 1:
                [raw] = messages
                await self._send_dead_letters([(raw, dead_letter(raw, failure.stage, "internal_error", str(failure)))])
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
            accepted, letters = self._ingest(messages)
        indexed = 0
        if accepted:
            # Read while the batch is fetched and inferred: off the critical path.
            previous = asyncio.create_task(self._indexer.previous_entity_ids([post.id for _, post in accepted]))
            try:
                with self._stage("fetch"):
                    fetched = await self._fetch.fetch([post for _, post in accepted])
                with self._stage("infer"):
                    processed, refused = await self._infer(accepted, fetched)
                letters += refused
                with self._stage("index"):
                    failures = await self._indexer.index(processed, await previous)
            finally:
                previous.cancel()
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
        """Predictions for the batch (waiting while Triton is unavailable); posts the model failed as letters."""
        inputs = [model_input(post, images, self._inferer.image_size) for (_, post), images in zip(accepted, fetched)]
        started = time.perf_counter()
        results = await retry_forever(
            lambda: self._inferer.infer([request for request, _ in inputs]),
            retriable=(InferenceUnavailable,),
            what="Triton inference",
            max_delay_s=self._settings.retry_backoff_max_s,
            on_retry=lambda _error: self._metrics.dependency_retries.labels("triton").inc(),
        )
        self._metrics.triton_seconds.observe(time.perf_counter() - started)

        processed: list[ProcessedPost] = []
        refused: list[Letter] = []
        for (raw, post), images, (_, fed), result in zip(accepted, fetched, inputs, results):
            if isinstance(result, ModelFault):
                refused.append((raw, dead_letter(raw, "infer", result.kind, result.message)))
            elif result.error is not None:
                refused.append((raw, dead_letter(raw, "infer", "model_refused", result.error)))
            else:
                processed.append(self._grounded(raw, post, images, fed, result))
        return processed, refused

    def _grounded(
        self, raw: RawMessage, post: Post, images: list[FetchedImage], fed: list[int], prediction: PostPrediction
    ) -> ProcessedPost:
        self._metrics.record_model(prediction.model.name, prediction.model.version)
        grounded = grounded_in_post(prediction, fed, post.images)
        return ProcessedPost(raw, post, grounded, [image.outcome for image in images])

    async def _send_dead_letters(self, letters: list[Letter]) -> None:
        """Write the batch's dead letters and wait until Kafka has them (postlens.io.deadletter: never wedged by a
        letter Kafka refuses; waiting while Kafka is unreachable)."""
        for _raw, letter in letters:
            self._metrics.dead_letters.labels(letter.error.stage, letter.error.kind).inc()
            log.info("dead letter %s/%s: %s", letter.error.stage, letter.error.kind, letter.error.message[:300])
        await self._letters.write(letters)


class BatchFlow:
    """Messages → micro-batches, ``worker_batches_in_flight`` of them through the pipeline at once, and the commits.

    Memory is bounded: the agent waits when a batch is full and every slot is taken, Faust's buffer then fills and
    its consumer stops fetching; Kafka keeps the rest.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        settings: Settings,
        metrics: Metrics,
        commit: Callable[[dict[faust.types.TP, int]], Awaitable[bool]],
    ) -> None:
        self._pipeline = pipeline
        self._settings = settings
        self._metrics = metrics
        self._commit = commit
        self._ledger: CommitLedger[faust.types.TP] = CommitLedger()
        self._queue: asyncio.Queue[tuple[RawMessage, Received]] = asyncio.Queue(maxsize=settings.batch_size)
        self._slots = asyncio.Semaphore(settings.worker_batches_in_flight)
        self._batches: set[asyncio.Task] = set()

    async def put(self, message: faust.types.Message) -> None:
        received = self._ledger.received(message.tp, message.offset)
        raw = RawMessage(
            value=message.value,
            key=message.key,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
        )
        await self._queue.put((raw, received))
        self._metrics.in_flight.set(self._ledger.in_flight)

    def forget(self, partitions: set[faust.types.TP]) -> None:
        self._ledger.forget(partitions)

    async def commit(self) -> None:
        """Commit every partition's finished prefix."""
        if (offsets := self._ledger.committable()) and await self._commit(offsets):
            self._ledger.committed(offsets)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[BatchFlow]:
        tasks = [asyncio.create_task(self._form_batches()), asyncio.create_task(self._commit_periodically())]
        try:
            yield self
        finally:
            # Unfinished batches stay uncommitted: the next owner of their partitions processes them again.
            for task in [*tasks, *self._batches]:
                task.cancel()
            await asyncio.gather(*tasks, *self._batches, return_exceptions=True)
            await self.commit()

    async def _form_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self._settings.batch_wait_s
            while len(batch) < self._settings.batch_size:
                if self._queue.empty():
                    try:
                        async with asyncio.timeout_at(deadline):
                            batch.append(await self._queue.get())
                    except TimeoutError:
                        break
                else:
                    batch.append(self._queue.get_nowait())
            await self._slots.acquire()
            task = asyncio.create_task(self._run(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _run(self, batch: list[tuple[RawMessage, Received]]) -> None:
        messages = [raw for raw, _ in batch]
        try:
            # Process raises only on a bug outside the stages (writing its dead letters, say): counted like an agent
            # crash and retried, so the batch is never skipped and never silently stalls its partitions.
            await retry_forever(
                lambda: self._pipeline.process(messages),
                retriable=(Exception,),
                what="a micro-batch",
                max_delay_s=self._settings.retry_backoff_max_s,
                on_retry=lambda _error: self._metrics.agent_crashes.inc(),
            )
            for _, received in batch:
                self._ledger.finished(received)
            self._metrics.in_flight.set(self._ledger.in_flight)
        finally:
            self._slots.release()

    async def _commit_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._settings.worker_commit_interval_s)
            await self.commit()


def build_worker(settings: Settings, web_port: int | None = None) -> faust.App:
    """The Faust app with the pipeline agent and the ``/metrics`` page."""
    worker_app: WorkerApp = create_app(settings, web_port)
    app = worker_app.app
    metrics = Metrics()
    flows: list[BatchFlow] = []  # the running agent's, for the rebalance hook

    @app.page("/metrics")
    async def metrics_page(web: faust.web.View, _request: faust.web.Request) -> faust.web.Response:
        # Passed as a header: the content type carries a charset, which aiohttp refuses as content_type.
        return web.bytes(metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.on_partitions_revoked.connect
    async def on_revoked(_app: faust.App, revoked: set[faust.types.TP], **_kwargs: object) -> None:
        for flow in flows:
            await flow.commit()  # what finished before the handover need not be done again
            flow.forget(revoked)

    async def send_dead_letter(key: bytes | None, value: bytes) -> object:
        return await (await worker_app.dead_letters.send(key=key, value=value))

    async def commit(offsets: dict[faust.types.TP, int]) -> bool:
        # Faust's own commit path (only partitions still assigned; dead letters flushed first), given our offsets:
        # the posts topic has Faust's acks off (stream.commits explains why).
        return await app.consumer._commit_offsets(offsets)  # noqa: SLF001

    @app.agent(worker_app.posts, concurrency=1)
    async def process_posts(stream: faust.StreamT) -> None:
        try:
            pipeline = await Pipeline.start(settings, metrics, send_dead_letter)
            try:
                async with BatchFlow(pipeline, settings, metrics, commit).running() as flow:
                    flows.append(flow)
                    try:
                        async for event in stream.events():
                            await flow.put(event.message)
                    finally:
                        flows.remove(flow)
            finally:
                await pipeline.close()
        except Exception:
            metrics.agent_crashes.inc()
            raise

    return app
