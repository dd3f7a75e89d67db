"""One pipeline test's world: its own topics, consumer group and indices (env ``POSTLENS_*``), its workers, and the
ways a test looks at the outcome (Elasticsearch documents, dead letters, committed offsets)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import AsyncElasticsearch

from postlens.io.kafka import ensure_topics
from postlens.schemas import DeadLetter
from postlens.settings import Settings
from tests.stream.workers import WorkerProcess
from tests.support.kafka_io import read_topic
from tests.support.tcp_proxy import free_port


class PipelineRun:
    def __init__(self, base: Settings, triton_url: str, log_dir: Path, **overrides: str) -> None:
        run = uuid.uuid4().hex[:8]
        self.log_dir = log_dir
        self.env = {
            "POSTLENS_KAFKA_BOOTSTRAP": base.kafka_bootstrap,
            "POSTLENS_TOPIC_POSTS": f"test.pipeline.{run}",
            "POSTLENS_TOPIC_DLQ": f"test.pipeline.{run}.dlq",
            "POSTLENS_TOPIC_PARTITIONS": "6",
            "POSTLENS_CONSUMER_GROUP": f"test-pipeline-{run}",
            "POSTLENS_ES_URL": base.es_url,
            "POSTLENS_ES_INDEX_ENTITIES": f"postlens-test-{run}-entities",
            "POSTLENS_ES_INDEX_POSTS": f"postlens-test-{run}-posts",
            "POSTLENS_REDIS_URL": base.redis_url,
            "POSTLENS_TRITON_URL": triton_url,
            "POSTLENS_HOME": str(log_dir / "home"),
            "POSTLENS_FETCH_ALLOWLIST": json.dumps(["127.0.0.1/32"]),
            "POSTLENS_FETCH_READ_TIMEOUT_S": "1",
            "POSTLENS_FETCH_TOTAL_TIMEOUT_S": "3",
            "POSTLENS_FETCH_MAX_BYTES": str(1024 * 1024),
            "POSTLENS_FETCH_MAX_PIXELS": "1000000",
            "POSTLENS_WORKER_SESSION_TIMEOUT_S": "8",
            "POSTLENS_RETRY_BACKOFF_MAX_S": "2",
            "POSTLENS_BATCH_SIZE": "8",
            **overrides,
        }
        # What the test itself talks to: the real services, never a worker's proxy.
        self.settings = base.model_copy(
            update={
                "topic_posts": self.env["POSTLENS_TOPIC_POSTS"],
                "topic_dlq": self.env["POSTLENS_TOPIC_DLQ"],
                "topic_partitions": int(self.env["POSTLENS_TOPIC_PARTITIONS"]),
                "consumer_group": self.env["POSTLENS_CONSUMER_GROUP"],
                "es_index_entities": self.env["POSTLENS_ES_INDEX_ENTITIES"],
                "es_index_posts": self.env["POSTLENS_ES_INDEX_POSTS"],
            }
        )
        self.workers: list[WorkerProcess] = []

    def start_worker(self, **env: str) -> WorkerProcess:
        index = len(self.workers)
        worker = WorkerProcess({**self.env, **env}, free_port(), self.log_dir / f"worker-{index}.log")
        self.workers.append(worker.start())
        return worker

    async def create_topics(self) -> None:
        await ensure_topics(self.settings)

    def publish_with_kcat(self, records: list[tuple[str | None, bytes]]) -> None:
        """Produce with kcat (a producer PostLens did not write): one ``key<TAB>value`` line per record."""
        kcat = shutil.which("kcat")
        assert kcat, "kcat is not installed (Debian package kcat; `make system-packages` installs it)"
        lines = b"".join((key.encode() + b"\t" if key is not None else b"") + value + b"\n" for key, value in records)
        assert all(b"\n" not in value for _, value in records)
        subprocess.run(
            [kcat, "-P", "-b", self.settings.kafka_bootstrap, "-t", self.settings.topic_posts, "-K", "\t"],
            input=lines,
            check=True,
            timeout=60,
        )

    async def publish(self, records: list[tuple[str | None, bytes | None]]) -> list[tuple[int, int]]:
        """Produce with aiokafka; the (partition, offset) of each record, in order."""
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            sent = [
                await producer.send(
                    self.settings.topic_posts, key=key.encode() if key is not None else None, value=value
                )
                for key, value in records
            ]
            return [((meta := await delivery).partition, meta.offset) for delivery in sent]
        finally:
            await producer.stop()

    async def committed_offsets(self, admin: AIOKafkaAdminClient) -> dict[int, int]:
        """Partition → the group's committed offset on the posts topic."""
        offsets = await admin.list_consumer_group_offsets(self.settings.consumer_group)
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == self.settings.topic_posts}

    async def finished_keys(self, es: AsyncElasticsearch) -> set[str]:
        """Keys of messages indexed (post id) or dead-lettered (message key)."""
        indexed = set(await self.documents(es, self.settings.es_index_posts))
        return indexed | {letter.key for letter in await self.dead_letters() if letter.key is not None}

    async def indexed_count(self, es: AsyncElasticsearch) -> int:
        await es.indices.refresh(index=self.settings.es_index_posts)
        return (await es.count(index=self.settings.es_index_posts))["count"]

    async def wait_indexed(self, es: AsyncElasticsearch, count: int, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while (indexed := await self.indexed_count(es)) < count:
            for worker in self.workers:
                if worker.died:
                    raise AssertionError(f"a worker died; log {worker.log_path}:\n{worker.log()[-3000:]}")
            assert time.monotonic() < deadline, f"{indexed} of {count} posts indexed after {timeout_s:g} s"
            await asyncio.sleep(1.0)

    async def documents(self, es: AsyncElasticsearch, index: str) -> dict[str, dict[str, Any]]:
        """Every document of ``index`` by _id."""
        await es.indices.refresh(index=index)
        response = await es.search(index=index, size=10_000, query={"match_all": {}})
        assert response["hits"]["total"]["value"] < 10_000
        return {hit["_id"]: hit["_source"] for hit in response["hits"]["hits"]}

    async def dead_letters(self) -> list[DeadLetter]:
        records = await read_topic(self.settings.kafka_bootstrap, self.settings.topic_dlq)
        return [DeadLetter.model_validate_json(value) for _, value in records]

    async def committed(self, admin: AIOKafkaAdminClient) -> int:
        """Sum of the group's committed offsets on the posts topic = messages committed as done."""
        offsets = await admin.list_consumer_group_offsets(self.settings.consumer_group)
        return sum(
            meta.offset for tp, meta in offsets.items() if tp.topic == self.settings.topic_posts and meta.offset > 0
        )

    async def cleanup(self, es: AsyncElasticsearch, admin: AIOKafkaAdminClient) -> None:
        for worker in self.workers:
            worker.stop()
        prefix = self.settings.es_index_posts.removesuffix("-posts")
        await es.indices.delete(index=f"{prefix}-*", allow_no_indices=True)
        await es.indices.delete_index_template(name=f"{prefix}-*")
        leader = f"{self.settings.consumer_group}-__assignor-__leader"  # Faust's own topic
        await admin.delete_topics([self.settings.topic_posts, self.settings.topic_dlq, leader])
