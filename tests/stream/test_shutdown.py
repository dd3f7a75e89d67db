"""A SIGTERM lets the batches in flight finish and commits them before the worker exits (within
``worker_shutdown_grace_s``), instead of cancelling them for the next owner to redo."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import AsyncElasticsearch

from tests.stream.pipeline_run import PipelineRun

pytestmark = pytest.mark.integration


async def test_sigterm_drains_the_batch_in_flight_and_commits_it(
    faulty_pipeline: PipelineRun, es: AsyncElasticsearch, kafka_admin: AIOKafkaAdminClient
) -> None:
    run = faulty_pipeline
    await run.create_topics()
    worker = run.start_worker(POSTLENS_WORKER_SHUTDOWN_GRACE_S="20")
    worker.wait_ready()
    await run.publish([("slow", json.dumps({"id": "slow", "text": "SLOW post from Lyon"}).encode())])
    await asyncio.sleep(1.5)  # in the model's 2.5 s execution
    assert await run.indexed_count(es) == 0
    worker.stop()  # SIGTERM, and wait for the exit
    assert await run.indexed_count(es) == 1
    assert await run.committed(kafka_admin) == 1
