"""The pipeline end to end on the real stack: posts produced with kcat → ``python -m stream worker`` processes →
Triton (the real exported model) → Elasticsearch, with invalid posts, faulty images, a killed worker, an
Elasticsearch or Triton outage and a Redis outage.

Elasticsearch and Triton are taken down through a TCP proxy (tests/stream/tcp_proxy.py) placed in front of the
shared server: closing the proxy is, for the worker, exactly a server that went away, while other tests keep theirs.
Worker logs are kept under /tmp/postlens-stream-tests/<test>-<time>/worker-N.log.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import AsyncElasticsearch

from postlens.io.deadletter import original_bytes
from postlens.schemas import ENTITY_TYPES
from tests.stream.pipeline_run import PipelineRun
from tests.support.image_server import ImageServer
from tests.support.own_redis import OwnRedis
from tests.support.tcp_proxy import TcpProxy

if TYPE_CHECKING:  # a pytest plugin (tests/conftest.py): imported here only for the type
    from tests.fixtures_model import ServedModel

pytestmark = pytest.mark.integration

FAULTS = {  # image path on the test server → the kind recorded for it
    "/slow": "timeout",
    "/missing": "http_404",
    "/error": "http_5xx",
    "/html": "not_image",
    "/truncated.jpg": "truncated",
    "/huge": "too_large",
    "/bomb.png": "bomb",
    "/loop/a": "redirect_loop",
    "/to-private": "ssrf_blocked",
}


def synthetic_posts(model_data: Path, server: ImageServer, count: int, prefix: str) -> list[dict[str, Any]]:
    """``count`` posts from the synthetic set (all splits, cycled with new ids), images on the test server."""
    labels = [
        json.loads(line)
        for split in ("test", "valid", "train")
        for line in (model_data / f"{split}.jsonl").read_text().splitlines()
    ]
    return [
        {
            "id": f"{prefix}-{n // len(labels)}-{label['id']}",
            "text": label["text"],
            "images": [server.url(f"/files/{path}") for path in label["images"]],
        }
        for n, label in ((n, labels[n % len(labels)]) for n in range(count))
    ]


def as_records(posts: list[dict[str, Any]]) -> list[tuple[str | None, bytes]]:
    return [(post["id"], json.dumps(post).encode()) for post in posts]


async def wait_for(condition, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.5)


async def assert_indexed_exactly(run: PipelineRun, es: AsyncElasticsearch, posts: list[dict[str, Any]]) -> None:
    """The posts index holds exactly these posts, and each post's entity documents match its post document."""
    post_docs = await run.documents(es, run.settings.es_index_posts)
    assert sorted(post_docs) == sorted(post["id"] for post in posts)
    entity_docs = await run.documents(es, run.settings.es_index_entities)
    per_post: dict[str, list[str]] = {}
    for entity_id, entity in entity_docs.items():
        per_post.setdefault(entity["post_id"], []).append(entity_id)
    for post_id, doc in post_docs.items():
        assert sorted(per_post.get(post_id, [])) == sorted(doc["entity_ids"]), post_id


async def test_end_to_end_with_kcat(
    pipeline: PipelineRun,
    es: AsyncElasticsearch,
    image_server: ImageServer,
    model_data: Path,
    served_model: ServedModel,
) -> None:
    model_version = served_model.version
    valid = synthetic_posts(model_data, image_server, 60, "e2e")
    faulty = [
        {
            "id": f"fault-{kind}",
            "text": f"Jordan posted a picture from Lyon ({kind})",
            "images": [image_server.url(path), image_server.url("/img/fine.png")],
        }
        for path, kind in FAULTS.items()
    ]
    invalid: list[tuple[str | None, bytes, str]] = [
        ("bad-json", b'{"id": "bad-json", "text": ', "invalid_json"),
        ("no-text", b'{"id": "no-text", "images": []}', "schema"),
        ("oversize", json.dumps({"id": "oversize", "text": "x " * 40_000}).encode(), "oversize"),
        ("binary", b"\xff\xfe\x00\x01", "invalid_utf8"),
        (None, b'{"id": "blank", "text": "   "}', "empty_text"),
    ]
    records = as_records(valid[:30]) + [(key, value) for key, value, _ in invalid] + as_records(faulty + valid[30:])

    await pipeline.create_topics()
    worker = pipeline.start_worker()
    worker.wait_ready()
    pipeline.publish_with_kcat(records)
    expected = valid + faulty
    await pipeline.wait_indexed(es, len(expected))

    await assert_indexed_exactly(pipeline, es, expected)
    post_docs = await pipeline.documents(es, pipeline.settings.es_index_posts)
    assert {doc["model"]["name"] for doc in post_docs.values()} == {"postlens"}
    assert {doc["model"]["version"] for doc in post_docs.values()} == {model_version}
    for post in valid:
        assert [o["status"] for o in post_docs[post["id"]]["image_fetch"]] == ["ok"] * len(post["images"])
    for path, kind in FAULTS.items():  # the post is indexed text-only from the faulty image, with the fault recorded
        assert [o["status"] for o in post_docs[f"fault-{kind}"]["image_fetch"]] == [kind, "ok"], path

    entity_docs = list((await pipeline.documents(es, pipeline.settings.es_index_entities)).values())
    assert entity_docs, "the model found no entity in any post"
    for entity in entity_docs:
        post = post_docs[entity["post_id"]]
        assert 0.0 <= entity["confidence"] <= 1.0 and entity["type"] in ENTITY_TYPES
        assert post["text"][entity["start"] : entity["end"]] == entity["text"]
        assert entity["model"]["version"] == model_version
        for region in entity["regions"]:
            assert region["image_url"] == post["images"][region["image_index"]]
            x0, y0, x1, y1 = region["box"]
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 and 0 <= region["score"] <= 1
    assert any(entity["regions"] for entity in entity_docs), "no entity was grounded in an image"

    async def all_dead_letters() -> bool:
        return len(await pipeline.dead_letters()) >= len(invalid)

    await wait_for(all_dead_letters, "the dead letters")
    letters = await pipeline.dead_letters()
    assert sorted((letter.error.stage, letter.error.kind) for letter in letters) == sorted(
        ("ingest", kind) for _, _, kind in invalid
    )
    assert sorted(original_bytes(letter) for letter in letters) == sorted(value for _, value, _ in invalid)
    assert all(letter.error.message and letter.source_offset is not None for letter in letters)

    assert worker.metric("postlens_posts_total", outcome="indexed") == len(expected)
    assert worker.metric("postlens_posts_total", outcome="dead_lettered") == len(invalid)
    assert worker.metric("postlens_model_info", name="postlens", version=model_version) == 1
    assert worker.metric("postlens_agent_crashes_total") == 0
    assert worker.health()[0] == 200
    for kind in FAULTS.values():
        assert worker.metric("postlens_image_fetch_failures_total", kind=kind) >= 1, kind


async def test_two_workers_split_partitions_and_survive_a_sigkill(
    pipeline: PipelineRun,
    es: AsyncElasticsearch,
    kafka_admin: AIOKafkaAdminClient,
    image_server: ImageServer,
    model_data: Path,
) -> None:
    posts = synthetic_posts(model_data, image_server, 400, "kill")
    await pipeline.create_topics()
    doomed, survivor = pipeline.start_worker(), pipeline.start_worker()
    doomed.wait_ready()
    survivor.wait_ready()
    pipeline.publish_with_kcat(as_records(posts))

    async def both_working() -> bool:
        return all(w.metric("postlens_posts_total", outcome="indexed") > 0 for w in (doomed, survivor))

    await wait_for(both_working, "both workers to index posts (each owns partitions)", timeout_s=120)
    doomed.kill()
    at_kill = await pipeline.indexed_count(es)
    assert at_kill < len(posts), "the kill came too late to be mid-stream"

    await pipeline.wait_indexed(es, len(posts), timeout_s=240)
    await assert_indexed_exactly(pipeline, es, posts)  # every post once: none lost, none duplicated

    async def all_committed() -> bool:
        return await pipeline.committed(kafka_admin) == len(posts)

    await wait_for(all_committed, "the survivor to commit every offset")


@pytest.mark.parametrize("dependency", ["elasticsearch", "triton"])
async def test_outage_loses_nothing_and_commits_nothing_early(
    pipeline: PipelineRun,
    es: AsyncElasticsearch,
    kafka_admin: AIOKafkaAdminClient,
    image_server: ImageServer,
    model_data: Path,
    served_model: ServedModel,
    dependency: str,
) -> None:
    posts = synthetic_posts(model_data, image_server, 60, "outage")
    before, during = posts[:20], posts[20:]
    if dependency == "elasticsearch":
        target = urlsplit(pipeline.settings.es_url)
        host, port = target.hostname or "localhost", target.port or 9200
    else:
        host, _, grpc_port = served_model.url.rpartition(":")
        port = int(grpc_port)
    with TcpProxy(host, port) as proxy:
        via_proxy = (
            {"POSTLENS_ES_URL": proxy.url}
            if dependency == "elasticsearch"
            else {"POSTLENS_TRITON_URL": f"127.0.0.1:{proxy.port}"}
        )
        await pipeline.create_topics()
        worker = pipeline.start_worker(**via_proxy)
        worker.wait_ready()
        pipeline.publish_with_kcat(as_records(before))
        await pipeline.wait_indexed(es, len(before))

        async def committed(count: int) -> bool:
            return await pipeline.committed(kafka_admin) == count

        await wait_for(lambda: committed(len(before)), "offsets of the first posts")

        proxy.close()  # the dependency "goes down" for the worker
        pipeline.publish_with_kcat(as_records(during))

        async def retrying() -> bool:
            return worker.metric("postlens_dependency_retries_total", dependency=dependency) >= 2

        await wait_for(retrying, f"the worker to retry {dependency}")
        await asyncio.sleep(5)  # several commit intervals
        assert await pipeline.committed(kafka_admin) == len(before)  # nothing committed early
        assert await pipeline.indexed_count(es) == len(before)

        # A restart during the outage must not commit the batch it was holding either.
        worker.stop()
        assert await pipeline.committed(kafka_admin) == len(before)
        replacement = pipeline.start_worker(**via_proxy)
        await asyncio.sleep(5)
        proxy.open()  # back
        replacement.wait_ready()
        await pipeline.wait_indexed(es, len(posts))
        await assert_indexed_exactly(pipeline, es, posts)
        await wait_for(lambda: committed(len(posts)), "every offset after the outage")


async def test_redis_outage_costs_only_the_cache(
    pipeline: PipelineRun,
    es: AsyncElasticsearch,
    image_server: ImageServer,
) -> None:
    urls = [image_server.url(f"/img/redis-{i}.png") for i in range(8)]

    def wave(name: str) -> list[dict[str, Any]]:
        return [
            {"id": f"{name}-{i}", "text": f"Madison visited Austin ({name} {i})", "images": [url]}
            for i, url in enumerate(urls)
        ]

    with OwnRedis(pipeline.log_dir / "redis") as redis_server:
        await pipeline.create_topics()
        worker = pipeline.start_worker(POSTLENS_REDIS_URL=redis_server.url, POSTLENS_REDIS_RETRY_AFTER_S="1")
        worker.wait_ready()
        indexed: list[dict[str, Any]] = []

        async def publish_wave(name: str) -> None:
            indexed.extend(wave(name))
            pipeline.publish_with_kcat(as_records(wave(name)))
            await pipeline.wait_indexed(es, len(indexed))

        def fetched() -> int:
            return sum(image_server.requests[urlsplit(url).path] for url in urls)

        await publish_wave("warm")
        assert fetched() == len(urls)
        await publish_wave("cached")
        assert fetched() == len(urls)  # all from the cache

        redis_server.stop()
        await publish_wave("down")  # indexed all the same
        assert fetched() == 2 * len(urls)  # fetched again: no cache while Redis is down

        redis_server.start()  # empty after the restart
        await asyncio.sleep(1.5)
        await publish_wave("refill")
        hits_before = worker.metric("postlens_image_cache_total", result="hit")
        await publish_wave("back")
        assert fetched() == 3 * len(urls)  # "back" came from the cache again
        assert worker.metric("postlens_image_cache_total", result="hit") == hits_before + len(urls)
        await assert_indexed_exactly(pipeline, es, indexed)
