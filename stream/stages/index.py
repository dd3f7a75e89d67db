"""Index: the Elasticsearch :class:`stream.sink.Sink` — processed posts → Elasticsearch, idempotently, returning
only once Elasticsearch acknowledged them.

Document ids are deterministic (entity ``{post_id}:{start}-{end}``, post ``{post_id}``), so a replay overwrites
instead of duplicating. A post processed again may predict fewer entities than before; the entity documents it no
longer has are deleted in the same bulk request (their ids are read from the post's previous document, in real
time), so the index ends exactly as the latest processing.

Retriable failures (Elasticsearch down, 429, 5xx) are retried until they succeed — the worker's batch waits, and
its offsets stay uncommitted. A post is indexed whole or not at all: when Elasticsearch refuses one of its documents
for good (a mapping error), its other documents are deleted and it is returned for dead-lettering. A whole request
refused for good (400, 413, a document the client cannot serialize) is split in halves until the post at fault is
alone.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from elasticsearch import ApiError, AsyncElasticsearch, NotFoundError, SerializationError, TransportError
from elasticsearch.helpers import async_streaming_bulk

from postlens.failures import IndexFailure
from postlens.io.retry import Backoff, retry_forever
from postlens.schemas import PredictedEntity
from postlens.settings import Settings
from stream.metrics import Metrics
from stream.results import ProcessedPost
from stream.sink import SinkFailure
from stream.stages.index_templates import index_templates

log = logging.getLogger(__name__)
T = TypeVar("T")


class ElasticsearchUnavailable(Exception):
    """Elasticsearch could not take the request now (down, overloaded, not ready); try again later."""


class RequestRefused(Exception):
    """Elasticsearch (or its client) refused a whole request for good; one of its documents is at fault."""

    def __init__(self, kind: IndexFailure, message: str) -> None:
        super().__init__(message)
        self.kind = kind


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
    """Connection failures, 429 and 5xx → :class:`ElasticsearchUnavailable`; other refusals → :class:`RequestRefused`."""
    try:
        yield
    except SerializationError as error:  # before TransportError, its base class: the documents are at fault
        raise RequestRefused(IndexFailure.SERIALIZATION, str(error)) from error
    except TransportError as error:
        raise ElasticsearchUnavailable(f"{type(error).__name__}: {error}") from error
    except ApiError as error:
        if _retriable_status(error.status_code):
            raise ElasticsearchUnavailable(f"{type(error).__name__}: {error}") from error
        raise RequestRefused(IndexFailure.REQUEST_REFUSED, f"HTTP {error.status_code}: {error}") from error


class ElasticsearchSink:
    """The :class:`stream.sink.Sink` writing entity and post documents to Elasticsearch."""

    def __init__(self, es: AsyncElasticsearch, settings: Settings, metrics: Metrics) -> None:
        self._es = es
        self._settings = settings
        self._metrics = metrics

    async def close(self) -> None:
        await self._es.close()

    async def prepare(self) -> None:
        """Install both index templates and create the indices (waits while Elasticsearch is unavailable)."""

        async def install() -> None:
            with _outages_as_unavailable():
                for name, body in index_templates(self._settings).items():
                    await self._es.indices.put_index_template(name=name, **body)
                for index in (self._settings.es_index_entities, self._settings.es_index_posts):
                    if not await self._es.indices.exists(index=index):
                        await self._es.indices.create(index=index)

        await self._retry(install, "installing Elasticsearch index templates")

    async def write(self, batch: list[ProcessedPost]) -> list[SinkFailure]:
        """Index ``batch``; returns the posts refused for good, none of whose documents remain. Returns only when
        every post is settled."""
        # A post twice in one batch (a replay): its latest processing is the one that stands.
        latest = list({item.post.id: item for item in batch}.values())
        previous = await self._retry(
            lambda: self._read_entity_ids([item.post.id for item in latest]), "reading previous entities"
        )
        return await self._index_whole(latest, previous, datetime.now(UTC))

    async def _index_whole(
        self, items: list[ProcessedPost], previous: dict[str, set[str]], indexed_at: datetime
    ) -> list[SinkFailure]:
        try:
            refused = await self._apply(self._actions(items, previous, indexed_at))
        except RequestRefused as error:
            if len(items) > 1:
                half = len(items) // 2
                return [
                    *await self._index_whole(items[:half], previous, indexed_at),
                    *await self._index_whole(items[half:], previous, indexed_at),
                ]
            refused = {items[0].post.id: (error.kind, str(error))}
        if not refused:
            return []
        failed = [item for item in items if item.post.id in refused]
        await self._remove(failed, previous)
        return [SinkFailure(item, *refused[item.post.id]) for item in failed]

    def _actions(
        self, items: list[ProcessedPost], previous: dict[str, set[str]], indexed_at: datetime
    ) -> list[tuple[dict[str, Any], str]]:
        """(bulk action, post id): each post's entities, deletes of entities it no longer has, then its post document."""
        entities_index, posts_index = self._settings.es_index_entities, self._settings.es_index_posts
        actions: list[tuple[dict[str, Any], str]] = []
        for item in items:
            post_id = item.post.id
            new_ids = {entity_id(post_id, entity) for entity in item.prediction.entities}
            for entity in item.prediction.entities:
                actions.append(
                    (
                        {
                            "_op_type": "index",
                            "_index": entities_index,
                            "_id": entity_id(post_id, entity),
                            "_source": entity_document(item, entity, indexed_at),
                        },
                        post_id,
                    )
                )
            for stale_id in sorted(previous.get(post_id, set()) - new_ids):
                actions.append(({"_op_type": "delete", "_index": entities_index, "_id": stale_id}, post_id))
            actions.append(
                (
                    {
                        "_op_type": "index",
                        "_index": posts_index,
                        "_id": post_id,
                        "_source": post_document(item, indexed_at),
                    },
                    post_id,
                )
            )
        return actions

    async def _remove(self, items: list[ProcessedPost], previous: dict[str, set[str]]) -> None:
        """Delete every document the posts may have in the indices: this processing's and the previous one's."""
        entities_index, posts_index = self._settings.es_index_entities, self._settings.es_index_posts
        deletes: list[tuple[dict[str, Any], str]] = []
        for item in items:
            post_id = item.post.id
            ids = previous.get(post_id, set()) | {entity_id(post_id, e) for e in item.prediction.entities}
            deletes += [({"_op_type": "delete", "_index": entities_index, "_id": id_}, post_id) for id_ in sorted(ids)]
            deletes.append(({"_op_type": "delete", "_index": posts_index, "_id": post_id}, post_id))
        try:
            if refused := await self._apply(deletes):
                log.error("could not remove the documents of refused posts %s", refused)
        except RequestRefused as error:  # ids Elasticsearch refuses are ids it never stored
            log.error("could not remove the documents of refused posts: %s", error)

    async def _apply(self, actions: list[tuple[dict[str, Any], str]]) -> dict[str, tuple[IndexFailure, str]]:
        """Run the actions until each succeeded or was refused for good; per refused post id, (kind, reason)."""
        pending = {(a["_op_type"], a["_index"], a["_id"]): (a, post_id) for a, post_id in actions}
        refused: dict[str, tuple[IndexFailure, str]] = {}
        backoff = Backoff(self._settings.retry_backoff_max_s)
        while pending:
            batch = [action for action, _ in pending.values()]
            results = await self._retry(lambda: self._bulk(batch), "bulk indexing")
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
                    reason = f"{kind}: {error.get('reason', error)}"
                    refused.setdefault(post_id, (IndexFailure.DOCUMENT_REFUSED, reason))
            if pending:
                log.warning("%d bulk items were rejected for now (e.g. 429); retrying", len(pending))
                await backoff.wait()
        return refused

    async def _read_entity_ids(self, post_ids: list[str]) -> dict[str, set[str]]:
        with _outages_as_unavailable():
            try:
                response = await self._es.mget(index=self._settings.es_index_posts, ids=post_ids, source=["entity_ids"])
            except NotFoundError:
                return {}  # no posts index yet: nothing was indexed before
        return {doc["_id"]: set(doc["_source"].get("entity_ids", [])) for doc in response["docs"] if doc.get("found")}

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
