"""An outage longer than the consumer's max.poll.interval: with its pipeline full, Faust stops polling and the
consumer leaves the group; the worker must then end (exit status 1, for its orchestrator to restart it from the
committed offsets) instead of living on as a zombie that never fetches again — and once the outage ends everything
is indexed and committed."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import AsyncElasticsearch

from tests.stream.pipeline_run import PipelineRun
from tests.stream.test_pipeline import wait_for
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration
POLL_INTERVAL_S = 20  # short, yet long enough for a fresh worker to start on a backlog between two polls


SMALL = {  # a worker with little room: it fills in a few messages
    "POSTLENS_BATCH_SIZE": "4",
    "POSTLENS_WORKER_BATCHES_IN_FLIGHT": "1",
    "POSTLENS_WORKER_BUFFER_MAX": "8",
    "POSTLENS_WORKER_MAX_POLL_INTERVAL_S": str(POLL_INTERVAL_S),
}


async def test_an_outage_longer_than_the_poll_interval_leaves_no_zombie(
    faulty_pipeline: PipelineRun, es: AsyncElasticsearch, kafka_admin: AIOKafkaAdminClient
) -> None:
    run = faulty_pipeline
    posts = [(f"z{n}", json.dumps({"id": f"z{n}", "text": f"Lyon number {n}"}).encode()) for n in range(100)]
    target = urlsplit(run.settings.es_url)
    with TcpProxy(target.hostname or "localhost", target.port or 9200) as proxy:
        await run.create_topics()
        worker = run.start_worker(POSTLENS_ES_URL=proxy.url, **SMALL)
        worker.wait_ready()
        await run.publish(posts[:10])
        await run.wait_indexed(es, 10)

        proxy.close()  # Elasticsearch "goes away" for several poll intervals, with the pipeline full
        await run.publish(posts[10:])

        async def ended() -> bool:
            return worker.process is not None and worker.process.poll() is not None

        await wait_for(ended, "the worker to end once it left its group", timeout_s=POLL_INTERVAL_S * 6)
        assert worker.process is not None and worker.process.returncode != 0
        assert "did not rejoin" in worker.log() or "none assigned" in worker.log()
        worker.stopped_by_test = True  # what its orchestrator does next: start it again
        proxy.open()
        replacement = run.start_worker(POSTLENS_ES_URL=proxy.url, **SMALL)
        replacement.wait_ready()

        await run.wait_indexed(es, len(posts), timeout_s=180)

        async def all_committed() -> bool:
            return await run.committed(kafka_admin) == len(posts)

        await wait_for(all_committed, "every offset committed after the outage", timeout_s=60)
        assert replacement.health()[0] == 200
