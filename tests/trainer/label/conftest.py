"""The real Label Studio (started on demand by deploy.local), a test's own topics, indices, project and state, and
an annotator who works through Label Studio's API as the browser does (invite link, session, CSRF)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_bulk

from deploy.local import ServiceStatus
from postlens.io.deadletter import RawMessage
from postlens.io.fetch import FetchOutcome
from postlens.schemas import ModelRef, Post, PostPrediction, PredictedEntity, Region
from postlens.settings import Settings
from stream.stages.index import ProcessedPost, entity_document, entity_id, post_document
from stream.stages.index_templates import index_templates
from tests.support.image_server import ImageServer


@pytest.fixture(scope="session")
def images() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


@pytest.fixture
async def loop_settings(
    settings: Settings,
    label_studio: ServiceStatus,
    es: AsyncElasticsearch,
    kafka_admin: AIOKafkaAdminClient,
    tmp_path: Path,
) -> AsyncIterator[Settings]:
    """Topics, indices, a Label Studio project and a state file of the test's own (removed afterwards)."""
    name = f"test-label-{uuid.uuid4().hex[:8]}"
    unique = settings.model_copy(
        update={
            "topic_labels": f"{name}.labels",
            "topic_labels_rejected": f"{name}.labels.rejected",
            "retrain_group": name,
            "es_index_entities": f"{name}-entities",
            "es_index_posts": f"{name}-posts",
            "label_project": name,
            "label_state": tmp_path / "label-state.sqlite",
            "fetch_allowlist": ["127.0.0.1"],
        }
    )
    for template, body in index_templates(unique).items():
        await es.indices.put_index_template(name=template, **body)
    yield unique
    await es.indices.delete(index=f"{name}-*", allow_no_indices=True)
    for template in index_templates(unique):
        await es.indices.delete_index_template(name=template)
    existing = set(await kafka_admin.list_topics())
    await kafka_admin.delete_topics([t for t in (unique.topic_labels, unique.topic_labels_rejected) if t in existing])
    async with admin_session(unique) as admin:
        for project in (await admin_get(admin, unique, "/api/projects", params={"title": name}))["results"]:
            if project["title"] == name:
                await admin.delete(f"{base_url(unique)}/api/projects/{project['id']}")


@dataclass(frozen=True)
class Seeded:
    """A post indexed as the worker indexes it: id, text, its entities (with regions) and image URLs."""

    id: str
    text: str
    images: list[str]
    entities: list[PredictedEntity]


def seeded(post_id: str, text: str, spans: list[tuple[str, str, float]], images: list[str]) -> Seeded:
    """``spans``: (mention, type, confidence); each mention is grounded in a box of the first image, if any."""
    entities = []
    for number, (mention, type_, confidence) in enumerate(spans):
        start = text.index(mention)
        regions = [Region(image_index=0, box=(0.33 * number, 0.1, 0.33 * number + 0.3, 0.5), score=0.7,
                          image_url=images[0])] if images else []  # fmt: skip
        entities.append(PredictedEntity(text=mention, type=type_, start=start, end=start + len(mention),
                                        confidence=confidence, regions=regions))  # fmt: skip
    return Seeded(post_id, text, images, entities)


async def index_posts(es: AsyncElasticsearch, settings: Settings, posts: list[Seeded]) -> None:
    """Index ``posts`` exactly as the stream worker's index stage writes them."""
    now = datetime.now(UTC)
    actions: list[dict[str, Any]] = []
    for post in posts:
        item = ProcessedPost(
            raw=RawMessage(value=b"{}", key=post.id.encode(), topic="posts"),
            post=Post(id=post.id, text=post.text, images=post.images),
            prediction=PostPrediction(entities=post.entities, model=ModelRef(name="postlens", version="3")),
            images=[FetchOutcome(url=url, status="ok") for url in post.images],
        )
        actions += [
            {
                "_index": settings.es_index_entities,
                "_id": entity_id(post.id, e),
                "_source": entity_document(item, e, now),
            }
            for e in post.entities
        ]
        actions.append({"_index": settings.es_index_posts, "_id": post.id, "_source": post_document(item, now)})
    await async_bulk(es, actions, refresh="wait_for")


def base_url(settings: Settings) -> str:
    return settings.label_studio_endpoint()[0]


def admin_session(settings: Settings) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(headers={"Authorization": f"Token {settings.label_studio_endpoint()[1]}"})


async def admin_get(session: aiohttp.ClientSession, settings: Settings, path: str, **kwargs: Any) -> Any:
    async with session.get(f"{base_url(settings)}{path}", **kwargs) as response:
        assert response.status == 200, await response.text()
        return await response.json()


class Annotator:
    """A person with a Label Studio account (joined by the admin's invite link), working as the browser does."""

    def __init__(self, settings: Settings, email: str) -> None:
        self.settings, self.email = settings, email
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def join(self) -> Annotator:
        url = base_url(self.settings)
        async with admin_session(self.settings) as admin:
            invite = (await admin_get(admin, self.settings, "/api/invite"))["invite_url"]
        async with self.session.get(f"{url}{invite}") as page:
            assert page.status == 200, await page.text()
        form = {"email": self.email, "password": "annotate-" + uuid.uuid4().hex, "csrfmiddlewaretoken": self._csrf()}
        async with self.session.post(f"{url}{invite}", data=form, headers={"Referer": f"{url}{invite}"}) as signed:
            assert signed.status == 200 and "sessionid" in self._cookies(), await signed.text()
        return self

    def _cookies(self) -> dict[str, str]:
        return {cookie.key: cookie.value for cookie in self.session.cookie_jar}

    def _csrf(self) -> str:
        return self._cookies()["csrftoken"]

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = base_url(self.settings)
        headers = {"X-CSRFToken": self._csrf(), "Referer": f"{url}/"}
        async with self.session.request(method, f"{url}{path}", json=body, headers=headers) as response:
            assert response.status < 300, f"{method} {path}: {response.status} {await response.text()}"
            return await response.json()

    async def annotate(self, task_id: int, result: list[dict[str, Any]]) -> dict[str, Any]:
        """Submit an annotation of the task (what the Submit button sends)."""
        return await self.call("POST", f"/api/tasks/{task_id}/annotations/", {"result": result, "lead_time": 9.5})

    async def skip(self, task_id: int) -> dict[str, Any]:
        """Skip the task (the Skip button: a cancelled annotation with no result)."""
        return await self.call("POST", f"/api/tasks/{task_id}/annotations/", {"result": [], "was_cancelled": True})

    async def close(self) -> None:
        await self.session.close()


async def project_tasks(settings: Settings) -> list[dict[str, Any]]:
    """The test project's tasks with their data and predictions."""
    async with admin_session(settings) as admin:
        found = await admin_get(admin, settings, "/api/projects", params={"title": settings.label_project})
        [project] = [p for p in found["results"] if p["title"] == settings.label_project]
        tasks = await admin_get(admin, settings, "/api/tasks", params={"project": project["id"], "page_size": 1000,
                                                                       "fields": "all"})  # fmt: skip
    return tasks["tasks"] if isinstance(tasks, dict) else tasks
