"""A promotion and a rollback under steady load: no failed request, every post indexed once, each document carrying
the version that scored it — a worker, Kafka, Triton and Elasticsearch, all real."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import AsyncElasticsearch

from postlens.settings import Settings
from tests.fixtures_model import ServedModel
from tests.stream.pipeline_run import PipelineRun
from trainer.export import export_model, load_in_triton
from trainer.retrain.lineage import rollback

POSTS_AFTER = 60  # posts published before the promotion, between it and the rollback, and after the rollback
RATE_PER_S = 12.0


@pytest.mark.integration
@pytest.mark.slow
async def test_a_promotion_and_a_rollback_under_load_lose_nothing(
    settings: Settings,
    tiny_checkpoint: Path,
    exported_repo: Path,
    start_triton: Callable[[Path], ServedModel],
    es: AsyncElasticsearch,
    kafka_admin: AIOKafkaAdminClient,
    tmp_path: Path,
) -> None:
    repo = Path(shutil.copytree(exported_repo, tmp_path / "model_repository"))  # serving version 1
    served = start_triton(repo)
    log_dir = Path(tempfile.gettempdir()) / "postlens-retrain-tests" / f"zero-downtime-{time.strftime('%H%M%S')}"
    run = PipelineRun(settings, served.url, log_dir)
    await run.create_topics()
    run.start_worker().wait_ready()
    switched: dict[str, int] = {}  # "promoted" / "rolled back" → how many posts had been published by then
    published = 0

    async def steady_load() -> None:
        """Posts at a steady rate from before the promotion until POSTS_AFTER posts after the rollback."""
        nonlocal published
        while "rolled back" not in switched or published < switched["rolled back"] + POSTS_AFTER:
            post = {"id": f"post-{published:05d}", "text": f"Kenji Watanabe landed in Lyon with Acme Corp #{published}"}
            await run.publish([(post["id"], json.dumps(post).encode())])
            published += 1
            await asyncio.sleep(1 / RATE_PER_S)

    async def promote_then_roll_back() -> None:
        while published < POSTS_AFTER:
            await asyncio.sleep(0.1)
        version = await asyncio.to_thread(export_model, tiny_checkpoint, repo)  # a promotion: export, then load
        await asyncio.to_thread(load_in_triton, served.http_url, "postlens", int(version.name))
        switched["promoted"] = published
        while published < switched["promoted"] + POSTS_AFTER:
            await asyncio.sleep(0.1)
        result = await asyncio.to_thread(rollback, repo / "postlens", 1, served.http_url)
        assert not result.triton_refused and result.version == 3, result.triton
        switched["rolled back"] = published

    try:
        await asyncio.gather(steady_load(), promote_then_roll_back())
        await run.wait_indexed(es, published)
        posts = await run.documents(es, run.settings.es_index_posts)
        letters = await run.dead_letters()
    finally:
        await run.cleanup(es, kafka_admin)
    assert letters == [], [letter.error for letter in letters]  # no request failed
    assert len(posts) == published
    version = {post_id: document["model"]["version"] for post_id, document in posts.items()}
    order = sorted(version)  # ids are numbered in publication order
    print(f"\nswitched after {switched}; versions seen: { {v: list(version.values()).count(v) for v in '123'} }")
    assert set(version.values()) == {"1", "2", "3"}
    # A post published after a switch completed is scored by the new version (never an older one).
    assert all(version[post_id] in ("2", "3") for post_id in order[switched["promoted"] :])
    assert all(version[post_id] == "3" for post_id in order[switched["rolled back"] :])
