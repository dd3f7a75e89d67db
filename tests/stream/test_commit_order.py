"""Ordered commits on the real stack: while some posts take seconds (a slow image) and the batches behind them
finish first, no offset is ever committed past a message that is not yet indexed or dead-lettered — through a
rebalance (a second worker joins) and a SIGKILL of a worker mid-window — and in the end every post is indexed.

A watcher samples the group's committed offsets, then (after them) what Elasticsearch and the dead-letter topic
hold: anything committed must already be there."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import AsyncElasticsearch

from tests.stream.pipeline_run import PipelineRun
from tests.stream.test_pipeline import synthetic_posts, wait_for
from tests.support.image_server import ImageServer

if TYPE_CHECKING:
    from tests.fixtures_model import ServedModel

pytestmark = pytest.mark.integration
POSTS = 160
SLOW_EVERY = 9  # one post in nine waits ~4 s for its image; the batches behind it finish first


async def commits_ahead_of_work(
    run: PipelineRun, es: AsyncElasticsearch, admin: AIOKafkaAdminClient, where: dict[tuple[int, int], str]
) -> list[str]:
    """Messages below a committed offset that are neither indexed nor dead-lettered (sampled in that order)."""
    committed = await run.committed_offsets(admin)
    finished = await run.finished_keys(es)
    return [
        f"partition {partition} committed {committed[partition]} but {key} (offset {at}) is not finished"
        for (partition, at), key in where.items()
        if at < committed.get(partition, -1) and key not in finished
    ]


async def test_no_commit_passes_an_unfinished_message_across_a_rebalance_and_a_crash(
    pipeline: PipelineRun,
    es: AsyncElasticsearch,
    kafka_admin: AIOKafkaAdminClient,
    image_server: ImageServer,
    model_data: Path,
    served_model: ServedModel,
) -> None:
    posts = synthetic_posts(model_data, image_server, POSTS, prefix="order")
    for n, post in enumerate(posts):
        if n % SLOW_EVERY == 0:
            post["images"] = [image_server.url(f"/slow?post={post['id']}")]  # a URL of its own: never cached
    await pipeline.create_topics()
    placed = await pipeline.publish([(post["id"], json.dumps(post).encode()) for post in posts])
    where = {position: post["id"] for position, post in zip(placed, posts)}

    env = {
        "POSTLENS_FETCH_READ_TIMEOUT_S": "8",
        "POSTLENS_FETCH_TOTAL_TIMEOUT_S": "10",
        "POSTLENS_WORKER_COMMIT_INTERVAL_S": "0.3",
    }
    first = pipeline.start_worker(**env)
    first.wait_ready()  # its indices exist from here on
    violations: list[str] = []
    events = {"rebalance": POSTS // 4, "crash": POSTS // 2}
    second = None
    deadline = time.monotonic() + 300
    while (done := len(await pipeline.finished_keys(es))) < POSTS:
        violations += await commits_ahead_of_work(pipeline, es, kafka_admin, where)
        if second is None and done >= events["rebalance"]:
            second = pipeline.start_worker(**env)  # the group rebalances while batches are in flight
        elif second is not None and not first.stopped_by_test and done >= events["crash"]:
            first.kill()  # SIGKILL mid-window: whatever it had in flight is someone else's now
        assert not any(worker.died for worker in pipeline.workers), "a worker died"
        assert time.monotonic() < deadline, f"{done} of {POSTS} finished"
        await asyncio.sleep(0.3)
    violations += await commits_ahead_of_work(pipeline, es, kafka_admin, where)
    assert violations == []
    assert first.stopped_by_test and second is not None, "the test ended before the rebalance and the crash"
    assert await pipeline.indexed_count(es) == POSTS
    # …and the ledger does commit: in the end, every partition up to its last message.
    ends = {partition: max(at for p, at in placed if p == partition) + 1 for partition, _ in placed}

    async def all_committed() -> bool:
        return await pipeline.committed_offsets(kafka_admin) == ends

    await wait_for(all_committed, "every offset committed", timeout_s=30)
    assert second.metric("postlens_agent_crashes_total") == 0
