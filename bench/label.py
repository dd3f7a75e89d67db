"""Labeling loop benchmark: ``python -m bench.label [--posts 100]`` against the local stack's Label Studio.

Indexes ``--posts`` synthetic posts (two entities each, one grounded box) into indices of its own, then times
``push`` of all of them (selection in Elasticsearch + one import into Label Studio), the annotation of every task
through the API (one request each, not timed as part of the loop), ``pull`` of all the annotations to a topic of its
own, and a second ``pull`` with nothing new (the idempotent path). Writes ``reports/label.md``. Start Label Studio
first: ``python -m deploy.local up --only label-studio`` (its start time is printed there).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch.helpers import async_bulk

from postlens.io.connections import es_client
from postlens.io.deadletter import RawMessage
from postlens.io.fetch import FetchOutcome
from postlens.schemas import ModelRef, Post, PostPrediction, PredictedEntity, Region
from postlens.settings import Settings, get_settings
from stream.stages.index import ProcessedPost, entity_document, entity_id, post_document
from stream.stages.index_templates import index_templates
from trainer.label.__main__ import run_pull, run_push

REPORTS = Path(__file__).resolve().parent.parent / "reports"
PEOPLE = ["Lionel Messi", "Angela Merkel", "Serena Williams", "Barack Obama", "Greta Thunberg"]
PLACES = ["Miami", "Lagos", "Berlin", "Chicago", "Osaka", "Lima", "Oslo"]


async def seed(settings: Settings, count: int) -> None:
    now = datetime.now(UTC)
    actions = []
    async with es_client(settings) as es:
        for name, body in index_templates(settings).items():
            await es.indices.put_index_template(name=name, **body)
        for i in range(count):
            person, place = PEOPLE[i % len(PEOPLE)], PLACES[i % len(PLACES)]
            text = f"{person} was seen in {place} on day {i} of the tour #{i}"
            image = f"http://127.0.0.1:9/img/{i}.png"
            entities = [
                PredictedEntity(text=person, type="PER", start=0, end=len(person), confidence=0.3 + 0.6 * i / count,
                                regions=[Region(image_index=0, box=(0.1, 0.1, 0.5, 0.8), score=0.6, image_url=image)]),
                PredictedEntity(text=place, type="LOC", start=text.index(place), end=text.index(place) + len(place),
                                confidence=0.9),
            ]  # fmt: skip
            item = ProcessedPost(
                RawMessage(b"{}", None, "posts"),
                Post(id=f"bench-{i}", text=text, images=[image]),
                PostPrediction(entities=entities, model=ModelRef(name="postlens", version="1")),
                [FetchOutcome(url=image, status="ok")],
            )
            actions += [{"_index": settings.es_index_entities, "_id": entity_id(item.post.id, e),
                         "_source": entity_document(item, e, now)} for e in entities]  # fmt: skip
            actions.append(
                {"_index": settings.es_index_posts, "_id": item.post.id, "_source": post_document(item, now)}
            )
        await async_bulk(es, actions, refresh="wait_for")


async def annotate_all(settings: Settings, project_id: int) -> int:
    """Submit the prediction of every task as its annotation (as the admin)."""
    url, token = settings.label_studio_endpoint()
    async with aiohttp.ClientSession(headers={"Authorization": f"Token {token}"}) as session:
        async with session.get(f"{url}/api/tasks", params={"project": project_id, "page_size": 10_000,
                                                            "fields": "all"}) as response:  # fmt: skip
            tasks = (await response.json())["tasks"]
        for task in tasks:
            result = [{k: v for k, v in r.items() if k != "score"} for r in task["predictions"][0]["result"]]
            async with session.post(f"{url}/api/tasks/{task['id']}/annotations/", json={"result": result}) as posted:
                posted.raise_for_status()
    return len(tasks)


async def cleanup(settings: Settings, project_id: int, prefix: str) -> None:
    url, token = settings.label_studio_endpoint()
    async with aiohttp.ClientSession(headers={"Authorization": f"Token {token}"}) as session:
        await session.delete(f"{url}/api/projects/{project_id}")
    async with es_client(settings) as es:
        await es.indices.delete(index=f"{prefix}-*", allow_no_indices=True)
        for name in index_templates(settings):
            await es.indices.delete_index_template(name=name)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([t for t in await admin.list_topics() if t.startswith(prefix)])
    finally:
        await admin.close()
    settings.label_state.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.label", description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=100)
    args = parser.parse_args()
    prefix = f"bench-label-{uuid.uuid4().hex[:8]}"
    settings = get_settings().model_copy(
        update={
            "es_index_posts": f"{prefix}-posts", "es_index_entities": f"{prefix}-entities", "label_project": prefix,
            "topic_labels": f"{prefix}.labels", "topic_labels_rejected": f"{prefix}.labels.rejected",
            "label_state": get_settings().home / "bench" / f"{prefix}.sqlite",
        }
    )  # fmt: skip
    asyncio.run(seed(settings, args.posts))
    started = time.monotonic()
    pushed = asyncio.run(run_push(settings, args.posts))
    push_s = time.monotonic() - started
    started = time.monotonic()
    project_id = int(str(pushed["project_id"]))
    annotated = asyncio.run(annotate_all(settings, project_id))
    annotate_s = time.monotonic() - started
    started = time.monotonic()
    pulled = asyncio.run(run_pull(settings))
    pull_s = time.monotonic() - started
    started = time.monotonic()
    again = asyncio.run(run_pull(settings))
    again_s = time.monotonic() - started
    asyncio.run(cleanup(settings, project_id, prefix))
    lines = [
        "# Labeling loop (python -m bench.label)",
        "",
        f"- push of {pushed['tasks']} tasks ({pushed['spans']} spans, {pushed['boxes']} boxes): {push_s:.2f} s "
        "(selection in Elasticsearch, one import into Label Studio)",
        f"- annotating them through the API, one request each: {annotate_s:.1f} s ({annotated} annotations)",
        f"- pull of {pulled['labels']} annotations to labels on Kafka: {pull_s:.2f} s",
        f"- pull again, nothing new ({again['already']} already handled): {again_s:.2f} s",
        "",
        "Measured on the shared 2-core machine, Label Studio 1.23.2 on SQLite (runserver).",
    ]
    print("\n".join(lines))
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / "label.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
