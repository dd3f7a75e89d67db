"""Index: processed posts → Elasticsearch, idempotently, returning only once Elasticsearch acknowledged them.

Document ids are deterministic (entity ``{post_id}:{start}-{end}``, post ``{post_id}``), so a replay overwrites
instead of duplicating. A post processed again may predict fewer entities than before; the entity documents it no
longer has are deleted in the same bulk request (their ids are read from the post's previous document), so the
index ends exactly as the latest processing. Retriable failures (Elasticsearch down, 429, 5xx) are retried until
they succeed — the worker's batch waits, and its offsets stay uncommitted; item failures that retrying cannot fix
(mapping errors) are returned for dead-lettering.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from elasticsearch import ApiError, AsyncElasticsearch, NotFoundError, TransportError
from elasticsearch.helpers import async_streaming_bulk

from postlens.schemas import PredictedEntity, Post, PostPrediction
from postlens.settings import Settings
from postlens.io.deadletter import RawMessage
from postlens.io.fetch import FetchOutcome
from stream.stages.index_templates import index_templates
from stream.metrics import Metrics
from postlens.io.retry import Backoff, retry_forever

log = logging.getLogger(__name__)
T = TypeVar("T")


class ElasticsearchUnavailable(Exception):
    """Elasticsearch could not take the request now (down, overloaded, not ready); try again later."""


@dataclass(frozen=True)
class ProcessedPost:
    """A post with its prediction; the prediction's regions already name the post's own image indices and URLs."""

    raw: RawMessage
    post: Post
    prediction: PostPrediction
    images: list[FetchOutcome]


@dataclass(frozen=True)
class IndexFailure:
    item: ProcessedPost
    kind: str
    message: str


def entity_id(post_id: str, entity: PredictedEntity) -> str:
    return f"{post_id}:{entity.start}-{entity.end}"


def entity_document(item: ProcessedPost, entity: PredictedEntity, indexed_at: datetime) -> dict[str, Any]:
    post = item.post
    return {
        "post_id": post.id,
        "text": entity.text,
        "type": entity.type,
        "start": entity.start,
        "end": entity.end,
        "confidence": entity.confidence,
        "regions": [region.model_dump(mode="json") for region in entity.regions],
        "image_relevance": item.prediction.image_relevance,
        "model": item.prediction.model.model_dump(mode="json"),
        "post": {
            "text": post.text,
            "created_at": post.created_at.isoformat() if post.created_at else None,
            "author": post.author,
            "images": post.images,
        },
        "indexed_at": indexed_at.isoformat(),
    }


def post_document(item: ProcessedPost, indexed_at: datetime) -> dict[str, Any]:
    post, prediction = item.post, item.prediction
    return {
        **post.model_dump(mode="json"),
        "entity_count": len(prediction.entities),
        "entities": [
            entity.model_dump(mode="json", include={"text", "type", "start", "end", "confidence"})
            for entity in prediction.entities
        ],
        "entity_ids": [entity_id(post.id, entity) for entity in prediction.entities],
        "image_fetch": [outcome.model_dump(mode="json") for outcome in item.images],
        "image_relevance": prediction.image_relevance,
        "model": prediction.model.model_dump(mode="json"),
        "indexed_at": indexed_at.isoformat(),
    }


def _retriable_status(status: int) -> bool:
    return status == 429 or status >= 500


@contextmanager
def _outages_as_unavailable() -> Iterator[None]:
    """Turn connection failures, 429 and 5xx into :class:`ElasticsearchUnavailable`; other errors are bugs."""
    try:
        yield
    except TransportError as error:
        raise ElasticsearchUnavailable(f"{type(error).__name__}: {error}") from error
    except ApiError as error:
        if _retriable_status(error.status_code):
            raise ElasticsearchUnavailable(f"{type(error).__name__}: {error}") from error
        raise


def es_client(settings: Settings) -> AsyncElasticsearch:
    auth = (
        (settings.es_username, settings.es_password.get_secret_value())
        if settings.es_username and settings.es_password
        else None
    )
    # No client-side retries: callers retry outages themselves (postlens.io.retry), with backoff and without giving up.
    return AsyncElasticsearch(
        settings.es_url, basic_auth=auth, request_timeout=settings.es_request_timeout_s, max_retries=0
    )


class Indexer:
    def __init__(self, es: AsyncElasticsearch, settings: Settings, metrics: Metrics) -> None:
        self._es = es
        self._settings = settings
        self._metrics = metrics

    async def install_templates(self) -> None:
        """Install both index templates and create the indices (waits while Elasticsearch is unavailable)."""

        async def install() -> None:
            with _outages_as_unavailable():
                for name, body in index_templates(self._settings).items():
                    await self._es.indices.put_index_template(name=name, **body)
                for index in (self._settings.es_index_entities, self._settings.es_index_posts):
                    if not await self._es.indices.exists(index=index):
                        await self._es.indices.create(index=index)

        await self._retry(install, "installing Elasticsearch index templates")

    async def index(self, batch: list[ProcessedPost]) -> list[IndexFailure]:
        """Index ``batch``; returns the posts Elasticsearch refused for good. Returns only when all are settled."""
        # A post twice in one batch (a replay): its latest processing is the one that stands.
        latest = {item.post.id: item for item in batch}
        stale = await self._retry(lambda: self._stale_entity_ids(list(latest.values())), "reading previous entities")
        indexed_at = datetime.now(UTC)
        pending: dict[tuple[str, str, str], tuple[dict[str, Any], str]] = {}  # (op, index, _id) → (action, post id)
        entities_index, posts_index = self._settings.es_index_entities, self._settings.es_index_posts

        def add(action: dict[str, Any], post_id: str) -> None:
            pending[(action["_op_type"], action["_index"], action["_id"])] = (action, post_id)

        for post_id, item in latest.items():
            for entity in item.prediction.entities:
                source = entity_document(item, entity, indexed_at)
                add({"_op_type": "index", "_index": entities_index, "_id": entity_id(post_id, entity),
                     "_source": source}, post_id)
            for stale_id in stale.get(post_id, ()):
                add({"_op_type": "delete", "_index": entities_index, "_id": stale_id}, post_id)
            add({"_op_type": "index", "_index": posts_index, "_id": post_id,
                 "_source": post_document(item, indexed_at)}, post_id)

        failures: dict[str, IndexFailure] = {}
        backoff = Backoff(self._settings.retry_backoff_max_s)
        while pending:
            actions = [action for action, _ in pending.values()]
            results = await self._retry(lambda: self._bulk(actions), "bulk indexing")
            for op_type, result in results:
                key = (op_type, result["_index"], result["_id"])
                status = result.get("status", 500)
                if 200 <= status < 300 or (op_type == "delete" and status == 404):
                    del pending[key]
                    continue
                error = result.get("error") or {}
                kind = error.get("type", f"http_{status}")
                retriable = _retriable_status(status)
                self._metrics.bulk_errors.labels(kind, str(retriable).lower()).inc()
                if not retriable:
                    post_id = pending.pop(key)[1]
                    failures.setdefault(post_id, IndexFailure(latest[post_id], kind, error.get("reason", str(error))))
            if pending:
                log.warning("%d bulk items were rejected for now (e.g. 429); retrying", len(pending))
                await backoff.wait()
        return list(failures.values())

    async def _stale_entity_ids(self, items: list[ProcessedPost]) -> dict[str, set[str]]:
        """Per post: entity ids its previous document lists that the new prediction no longer has."""
        with _outages_as_unavailable():
            try:
                response = await self._es.mget(
                    index=self._settings.es_index_posts, ids=[item.post.id for item in items], source=["entity_ids"]
                )
            except NotFoundError:
                return {}  # no posts index yet: nothing was indexed before
        new_ids = {item.post.id: {entity_id(item.post.id, e) for e in item.prediction.entities} for item in items}
        stale: dict[str, set[str]] = {}
        for doc in (doc for doc in response["docs"] if doc.get("found")):
            if gone := set(doc["_source"].get("entity_ids", [])) - new_ids[doc["_id"]]:
                stale[doc["_id"]] = gone
        return stale

    async def _bulk(self, actions: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        """(op type, item result) per action; the request as a whole either reaches Elasticsearch or raises."""
        results: list[tuple[str, dict[str, Any]]] = []
        with _outages_as_unavailable():
            async for _ok, result in async_streaming_bulk(
                self._es, actions, raise_on_error=False, raise_on_exception=True, max_retries=0
            ):
                ((op_type, item),) = result.items()
                results.append((op_type, item))
        return results

    async def _retry(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        return await retry_forever(
            operation,
            retriable=(ElasticsearchUnavailable,),
            what=what,
            max_delay_s=self._settings.retry_backoff_max_s,
            on_retry=lambda _error: self._metrics.dependency_retries.labels("elasticsearch").inc(),
        )
