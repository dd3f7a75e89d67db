"""An outage longer than the consumer's max.poll.interval: with its pipeline full, Faust stops fetching, and without
stream.membership.ConsumingWhileWaiting aiokafka leaves the group and the worker lives on as a zombie that never
fetches again. The worker must keep its membership through the outage and, once it ends, index and commit
everything itself."""

from __future__ import annotations

import asyncio
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


async def test_an_outage_longer_than_the_poll_interval_keeps_the_worker_in_its_group(
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
        await asyncio.sleep(POLL_INTERVAL_S * 3.5)
        assert worker.process is not None and worker.process.poll() is None, worker.log()[-3000:]
        assert "LeaveGroup" not in worker.log() and "none assigned" not in worker.log()
        status, body = worker.health()
        assert status == 200 and body["in_group"] and body["flows"][0]["waiting"] > 0, body

        proxy.open()
        await run.wait_indexed(es, len(posts), timeout_s=180)

        async def all_committed() -> bool:
            return await run.committed(kafka_admin) == len(posts)

        await wait_for(all_committed, "every offset committed after the outage", timeout_s=60)
        assert worker.process.poll() is None and worker.health()[0] == 200
