"""The worker: one Faust agent feeding the posts topic through a :class:`stream.flow.BatchFlow` into the
:class:`stream.pipeline.Pipeline` (Triton for the model, Elasticsearch for the sink), and its web pages
(``/metrics``, ``/healthz``).

The consumer keeps its group membership while the flow waits out an outage (:mod:`stream.membership`). An error
nobody foresaw in the agent, the death of one of the flow's background tasks, or a consumer that left its group
anyway and did not rejoin ends the process (exit status 1): Faust would restart the agent
on the same stream, past messages it never finished, while an orchestrator restarts the process from the committed
offsets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
from collections.abc import Mapping
from contextlib import nullcontext

import faust
from prometheus_client import CONTENT_TYPE_LATEST

from postlens.io.connections import es_client
from postlens.io.deadletter import RawMessage
from postlens.settings import Settings
from stream.app import WorkerApp, create_app
from stream.flow import BatchFlow, Partition
from stream.membership import ConsumingWhileWaiting, GroupMembership
from stream.metrics import Metrics
from stream.pipeline import Pipeline
from stream.stages.index import ElasticsearchSink
from stream.stages.infer import TritonInferer

log = logging.getLogger(__name__)
# The Elasticsearch client logs every request at INFO and each failed node as a warning; the worker's retry loop
# reports outages itself, once per attempt.
logging.getLogger("elastic_transport").setLevel(logging.ERROR)


def raw_message(message: faust.types.Message) -> RawMessage:
    headers = message.headers.items() if isinstance(message.headers, Mapping) else message.headers or ()
    return RawMessage(
        value=message.value,
        key=message.key,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        headers=tuple((str(name), bytes(value or b"")) for name, value in headers),
    )


def keep_out_of_full_collections() -> None:
    """What is alive once the worker is ready (libraries, Faust, connections) lives as long as the process: moved out
    of the garbage collector's reach, so its full collections, which come every few thousand posts, walk only what
    the posts made (reports/bench.md, "Worker profile")."""
    gc.collect()
    gc.freeze()


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

    @app.page("/healthz")
    async def health_page(web: faust.web.View, _request: faust.web.Request) -> faust.web.Response:
        # 503 when work waits and nothing moved for worker_stall_timeout_s (a wedge, a zombie consumer) or the flow
        # broke; a worker still connecting has no work waiting.
        states = [flow.health() for flow in flows]
        healthy = membership.healthy and all(state.healthy for state in states)
        body = {
            "healthy": healthy,
            "in_group": membership.healthy,
            "flows": [dataclasses.asdict(state) for state in states],
        }
        return web.json(body, status=200 if healthy else 503)

    crashing: list[asyncio.Future] = []

    def end_process(error: BaseException) -> None:
        metrics.agent_crashes.inc()
        crashing.append(asyncio.ensure_future(app.crash(error)))  # Faust stops the worker, which then exits 1

    membership = GroupMembership(
        settings.worker_max_poll_interval_s + settings.worker_session_timeout_s, on_lost=end_process
    )

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust's stubs want a sync signature
    async def on_revoked(_app: faust.App, revoked: set[faust.types.TP], **_kwargs: object) -> None:
        membership.revoked()
        for flow in flows:
            await flow.commit()  # what finished before the handover need not be done again
            flow.forget({(tp.topic, tp.partition) for tp in revoked})

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # faust's stubs want a sync signature
    async def on_shutdown(_app: faust.App, **_kwargs: object) -> None:
        # Faust stops fetching, sends this, then cancels the agent: the last moment batches can finish and commit.
        for flow in flows:
            await flow.drain()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # faust's stubs want a sync signature
    async def on_assigned(_app: faust.App, _assigned: set[faust.types.TP], **_kwargs: object) -> None:
        membership.assigned()

    async def send_dead_letter(key: bytes | None, value: bytes) -> object:
        return await (await worker_app.dead_letters.send(key=key, value=value))

    async def commit(offsets: dict[Partition, int]) -> bool:
        # Faust's own commit path (only partitions still assigned; dead letters flushed first), given our offsets:
        # the posts topic has Faust's acks off (stream.commits explains why).
        tps = {faust.types.TP(topic, partition): offset for (topic, partition), offset in offsets.items()}
        return await app.consumer._commit_offsets(tps)  # type: ignore[attr-defined]  # noqa: SLF001

    @app.agent(worker_app.posts, concurrency=1)
    async def process_posts(stream: faust.StreamT) -> None:
        try:
            pipeline = await Pipeline.start(
                settings,
                metrics,
                send_dead_letter,
                connect=lambda: TritonInferer.connect(settings),
                sink=ElasticsearchSink(es_client(settings), settings, metrics),
            )
            keep_out_of_full_collections()
            try:
                batch_flow = BatchFlow(pipeline.process, settings, metrics, commit, on_broken=end_process)
                consuming = ConsumingWhileWaiting(app.consumer)
                async with batch_flow.running() as flow:
                    flows.append(flow)
                    try:
                        async for event in stream.events():
                            # A full flow waits out an outage: the group must not take that for a dead consumer.
                            with consuming.held() if flow.full else nullcontext():
                                await flow.put(raw_message(event.message))
                    finally:
                        flows.remove(flow)
            finally:
                await pipeline.close()
        except Exception as error:
            log.critical("the agent failed; ending the worker so it restarts from the committed offsets")
            end_process(error)
            raise

    return app
