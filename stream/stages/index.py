"""Index: the Elasticsearch :class:`stream.sink.Sink` — processed posts → Elasticsearch, idempotently, returning
only once Elasticsearch acknowledged them.

Document ids are deterministic (entity ``{post_id}:{start}-{end}``, post ``{post_id}``), so a replay overwrites
instead of duplicating. Newer wins: every post carries a version (``post_version``: the producer's ``version``
field, else the message's Kafka offset; :func:`stream.stages.ingest.post_version`) and no write of an older version
ever replaces a newer one, whatever order batches, workers or replays finish in:

1. The post document is read, then written only if unchanged since (its sequence number; a processing that came
   in between makes the post go round again) and only if it is not of a newer version (else nothing is done for
   the post). It records, in ``superseded_entity_ids``, the entity ids the stored one listed (or had superseded)
   that this version no longer has: of two versions in flight, the later writer always learns the earlier one's.
2. Then the entity documents, with Elasticsearch external versions (``external_gte``: a same-version replay
   overwrites, an older one is refused and ignored), and deletes of the superseded ids at the same version (a delete
   leaves a versioned tombstone for ``index.gc_deletes``, 60 s by default, so an older writer arriving late cannot
   bring an entity back).

Interrupted between the two (a crash, an outage, a revoked partition), the post's message is not committed: its next
processing reads ``superseded_entity_ids`` back from the post document and finishes the deletes, so no entity
document is left orphaned. Readers may meanwhile see a post listing entities not written yet.

Retriable failures (Elasticsearch down, 429, 5xx, and the cluster-wide refusals 401/403, a write block or a missing
index — an outage, not the posts' fault) are retried until they succeed — the worker's batch waits, and its
offsets stay uncommitted. A post is indexed whole or not at all: when Elasticsearch refuses one of its documents for
good (a mapping error), this processing's documents are deleted and it is returned for dead-lettering. A whole
request refused for good (400, 413, a document the client cannot serialize) is split in halves until the post at
fault is alone.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from elasticsearch import ApiError, AsyncElasticsearch, BadRequestError, SerializationError, TransportError
from pydantic_core import PydanticSerializationError, to_json

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
        "post_version": item.version,
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


def post_document(item: ProcessedPost, indexed_at: datetime, superseded: list[str] | None = None) -> dict[str, Any]:
    post, prediction = item.post, item.prediction
    return {
        **post.model_dump(mode="json"),
        "entity_count": len(prediction.entities),
        "entities": [
            entity.model_dump(mode="json", include={"text", "type", "start", "end", "confidence"})
            for entity in prediction.entities
        ],
        "entity_ids": [entity_id(post.id, entity) for entity in prediction.entities],
        "post_version": item.version,
        "superseded_entity_ids": superseded or [],
        "image_fetch": [outcome.model_dump(mode="json") for outcome in item.images],
        "image_relevance": prediction.image_relevance,
        "model": prediction.model.model_dump(mode="json"),
        "indexed_at": indexed_at.isoformat(),
    }


# The keys of an action that go into its bulk metadata line (the rest is the operation and its document).
_ACTION_META = ("_index", "_id", "version", "version_type", "if_seq_no", "if_primary_term")


def bulk_body(actions: list[dict[str, Any]]) -> bytes:
    """The NDJSON body of a bulk request, serialized once in native code: per action its metadata line (``_op_type``
    names the operation) and, unless it deletes, its ``_source``. A document that cannot be serialized raises the
    client's :class:`SerializationError`, as the client would."""
    lines: list[dict[str, Any]] = []
    for action in actions:
        op_type = action["_op_type"]
        lines.append({op_type: {key: action[key] for key in _ACTION_META if key in action}})
        if op_type != "delete":
            lines.append(action["_source"])
    try:
        return b"\n".join(to_json(line) for line in lines) + b"\n"
    except (PydanticSerializationError, ValueError, TypeError) as error:
        raise SerializationError(f"Unable to serialize a bulk request: {error}") from error


# Cluster-wide refusals: a revoked key (401), a write block or a missing privilege (403, cluster_block_exception), a
# missing index. Every post would fail the same way: an outage to wait out, never a post's dead letter.
_OUTAGE_STATUSES = frozenset({401, 403})
_OUTAGE_TYPES = frozenset({"cluster_block_exception", "index_not_found_exception", "security_exception"})
# A version conflict: an entity document of a newer version (external versioning: this write has nothing to do),
# or a post document written by another processing since it was read (read it again).
_CONFLICT_STATUS = 409

_PRIOR = -1  # the version of a post document written before documents carried one: older than any


@dataclass(frozen=True)
class _Stored:
    """A post document as indexed: its version, the entity ids it lists and supersedes, and where it stands."""

    version: int
    entity_ids: frozenset[str]
    seq_no: int
    primary_term: int


def _retriable(status: int, error_type: str | None = None) -> bool:
    return status == 429 or status >= 500 or status in _OUTAGE_STATUSES or error_type in _OUTAGE_TYPES


@contextmanager
def _outages_as_unavailable() -> Iterator[None]:
    """Connection failures, 429, 5xx, cluster-wide refusals → :class:`ElasticsearchUnavailable`; other refusals →
    :class:`RequestRefused`."""
    try:
        yield
    except SerializationError as error:  # before TransportError, its base class: the documents are at fault
        raise RequestRefused(IndexFailure.SERIALIZATION, str(error)) from error
    except TransportError as error:
        raise ElasticsearchUnavailable(f"{type(error).__name__}: {error}") from error
    except ApiError as error:
        if _retriable(error.status_code, error.error):
            raise ElasticsearchUnavailable(f"{type(error).__name__}: {error}") from error
        raise RequestRefused(IndexFailure.REQUEST_REFUSED, f"HTTP {error.status_code}: {error}") from error


@dataclass(frozen=True)
class _Refused:
    kind: IndexFailure
    message: str


@dataclass(frozen=True)
class _Written:
    """A post whose document this processing wrote: what its entity step deletes, and how to take it back (the
    sequence number and primary term of the write, so a newer version written since is never deleted)."""

    item: ProcessedPost
    superseded: list[str]
    seq_no: int
    primary_term: int


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
                        try:
                            await self._es.indices.create(index=index)
                        except BadRequestError as error:  # workers starting together race: one of them creates it
                            if error.error != "resource_already_exists_exception":
                                raise

        await self._retry(install, "installing Elasticsearch index templates")

    async def write(self, batch: list[ProcessedPost]) -> list[SinkFailure]:
        """Index ``batch``; returns the posts refused for good, none of whose documents of this processing remain.
        Returns only when every post is settled; a post older than what is indexed is settled without a write."""
        newest: dict[str, ProcessedPost] = {}
        for item in batch:  # a post twice in one batch: the newer version (the later, at equal versions) stands
            if item.post.id not in newest or item.version >= newest[item.post.id].version:
                newest[item.post.id] = item
        return await self._write_whole(list(newest.values()), datetime.now(UTC))

    async def _write_whole(self, items: list[ProcessedPost], indexed_at: datetime) -> list[SinkFailure]:
        written: list[_Written] = []
        try:
            written, failures = await self._write_posts(items, indexed_at)
            failures += await self._write_entities(written, indexed_at)
        except RequestRefused as error:
            if len(items) == 1:
                await self._remove(written)  # the post document, when step 1 wrote it
                return [SinkFailure(items[0], error.kind, str(error))]
            half = len(items) // 2
            return [
                *await self._write_whole(items[:half], indexed_at),
                *await self._write_whole(items[half:], indexed_at),
            ]
        return failures

    async def _write_posts(
        self, items: list[ProcessedPost], indexed_at: datetime
    ) -> tuple[list[_Written], list[SinkFailure]]:
        """Step 1: the post documents; the posts written (not superseded by a newer version) and those refused.

        Read, then written only if unchanged since (sequence number and primary term): a writer that came in between
        makes the post go round again, so the later writer always knows the earlier one's entity ids."""
        written: list[_Written] = []
        failures: list[SinkFailure] = []
        pending = items
        while pending:
            ids = [item.post.id for item in pending]
            stored = await self._retry(partial(self._read_posts, ids), "reading posts")
            tried: list[tuple[ProcessedPost, list[str]]] = []
            actions: list[dict[str, Any]] = []
            for item in pending:
                before = stored.get(item.post.id)
                if before is not None and before.version > item.version:
                    continue  # a newer version is indexed: nothing to do
                new_ids = {entity_id(item.post.id, entity) for entity in item.prediction.entities}
                superseded = sorted(before.entity_ids - new_ids) if before is not None else []
                action: dict[str, Any] = {
                    "_index": self._settings.es_index_posts,
                    "_id": item.post.id,
                    "_source": post_document(item, indexed_at, superseded),
                }
                if before is None:
                    action["_op_type"] = "create"
                else:
                    action.update(_op_type="index", if_seq_no=before.seq_no, if_primary_term=before.primary_term)
                actions.append(action)
                tried.append((item, superseded))
            pending = []
            for (item, superseded), result in zip(tried, await self._apply(actions), strict=True):
                if isinstance(result, _Refused):
                    failures.append(SinkFailure(item, result.kind, result.message))
                elif result.get("status") == _CONFLICT_STATUS:
                    pending.append(item)  # written by another processing since it was read
                else:
                    written.append(_Written(item, superseded, result["_seq_no"], result["_primary_term"]))
        return written, failures

    async def _read_posts(self, post_ids: list[str]) -> dict[str, _Stored]:
        with _outages_as_unavailable():
            response = await self._es.mget(
                index=self._settings.es_index_posts,
                ids=post_ids,
                source=["entity_ids", "superseded_entity_ids", "post_version"],
            )
        stored: dict[str, _Stored] = {}
        for doc in response["docs"]:
            if doc.get("found"):
                source = doc.get("_source") or {}
                version = source.get("post_version")
                ids = frozenset(source.get("entity_ids") or []) | frozenset(source.get("superseded_entity_ids") or [])
                stored[doc["_id"]] = _Stored(
                    _PRIOR if version is None else version, ids, doc["_seq_no"], doc["_primary_term"]
                )
        return stored

    async def _write_entities(self, written: list[_Written], indexed_at: datetime) -> list[SinkFailure]:
        """Step 2: each written post's entity documents and the deletes of the ids it superseded."""
        entities_index = self._settings.es_index_entities
        actions: list[dict[str, Any]] = []
        owners: list[_Written] = []
        for post in written:
            item = post.item
            versioned = {"version": item.version, "version_type": "external_gte"}
            for entity in item.prediction.entities:
                actions.append(
                    {
                        "_op_type": "index",
                        "_index": entities_index,
                        "_id": entity_id(item.post.id, entity),
                        "_source": entity_document(item, entity, indexed_at),
                        **versioned,
                    }
                )
                owners.append(post)
            for stale_id in sorted(post.superseded):
                actions.append({"_op_type": "delete", "_index": entities_index, "_id": stale_id, **versioned})
                owners.append(post)
        refused: dict[int, tuple[_Written, SinkFailure]] = {}
        for owner, result in zip(owners, await self._apply(actions), strict=True):
            if isinstance(result, _Refused):
                refused.setdefault(id(owner), (owner, SinkFailure(owner.item, result.kind, result.message)))
        await self._remove([owner for owner, _ in refused.values()])
        return [failure for _, failure in refused.values()]

    async def _remove(self, posts: list[_Written]) -> None:
        """Take back what this processing wrote of refused posts: their entity documents (at their version), those
        they superseded, and their post document (only as this processing wrote it): a refused post has none left."""
        actions: list[dict[str, Any]] = []
        for post in posts:
            item = post.item
            versioned = {"version": item.version, "version_type": "external_gte"}
            actions += [
                {"_op_type": "delete", "_index": self._settings.es_index_entities, "_id": id_, **versioned}
                # With its post document gone, the ids it superseded would be listed nowhere: they go too.
                for id_ in sorted({entity_id(item.post.id, e) for e in item.prediction.entities} | set(post.superseded))
            ]
            actions.append(
                {
                    "_op_type": "delete",
                    "_index": self._settings.es_index_posts,
                    "_id": item.post.id,
                    "if_seq_no": post.seq_no,
                    "if_primary_term": post.primary_term,
                }
            )
        try:
            if refused := [result for result in await self._apply(actions) if isinstance(result, _Refused)]:
                log.error("could not remove the documents of refused posts: %s", refused)
        except RequestRefused as error:  # ids Elasticsearch refuses are ids it never stored
            log.error("could not remove the documents of refused posts: %s", error)

    async def _apply(self, actions: list[dict[str, Any]]) -> list[dict[str, Any] | _Refused]:
        """Run the actions until each succeeded or was refused for good; per action, in order, its result, or why it
        was refused. A write that a newer version superseded (409), and a delete of nothing (404), succeed."""
        outcomes: list[dict[str, Any] | _Refused | None] = [None] * len(actions)
        backoff = Backoff(self._settings.retry_backoff_max_s)
        while pending := [position for position, outcome in enumerate(outcomes) if outcome is None]:
            batch = [actions[position] for position in pending]
            # Matched by position: the bulk response names the concrete index, not the alias a setting may name.
            results = await self._retry(partial(self._bulk, batch), "bulk indexing")
            for position, (op_type, result) in zip(pending, results, strict=True):
                status = result.get("status", 500)
                error = result.get("error") or {}
                error_type = error.get("type") if isinstance(error, dict) else None
                if 200 <= status < 300 or status == _CONFLICT_STATUS or (op_type == "delete" and status == 404):
                    outcomes[position] = result
                    continue
                retriable = _retriable(status, error_type)
                self._metrics.bulk_errors.labels(error_type or f"http_{status}", str(retriable).lower()).inc()
                if not retriable:
                    reason = f"{error_type or f'HTTP {status}'}: {error.get('reason', error) if error else status}"
                    outcomes[position] = _Refused(IndexFailure.DOCUMENT_REFUSED, reason)
            if any(outcome is None for outcome in outcomes):
                log.warning("bulk items were rejected for now (e.g. 429, a write block); retrying")
                await backoff.wait()
        return [outcome for outcome in outcomes if outcome is not None]

    async def _bulk(self, actions: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        """(op type, item result) per action, in order; the request as a whole either reaches Elasticsearch or
        raises."""
        with _outages_as_unavailable():
            # Bytes go out as they are (elastic_transport's NDJSON serializer); the stubs know only action dicts.
            response = await self._es.bulk(operations=bulk_body(actions))  # type: ignore[arg-type]
        return [next(iter(item.items())) for item in response["items"]]

    async def _retry(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        return await retry_forever(
            operation,
            retriable=(ElasticsearchUnavailable,),
            what=what,
            max_delay_s=self._settings.retry_backoff_max_s,
            on_retry=lambda _error: self._metrics.dependency_retries.labels("elasticsearch").inc(),
        )
