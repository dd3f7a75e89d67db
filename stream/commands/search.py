"""``python -m stream search`` and ``wait``: reading what the workers indexed."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from elasticsearch import NotFoundError
from tqdm import tqdm

from postlens.io.connections import es_client
from postlens.settings import Settings

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """``1h``/``30m``/``2d``/``45s`` ago, or an ISO 8601 time (UTC when it names no zone)."""
    match = _RELATIVE.match(value.strip())
    if match:
        amount, unit = match.groups()
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: float(amount)})
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError as error:
        raise ValueError(f"--since wants e.g. 1h, 30m, 2d or an ISO time, got {value!r}") from error
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def entity_query(
    text: str | None, entity_type: str | None, min_confidence: float | None, since: datetime | None
) -> dict[str, Any]:
    must: list[dict[str, Any]] = [{"match": {"text": text}}] if text else []
    filters: list[dict[str, Any]] = []
    if entity_type:
        filters.append({"term": {"type": entity_type.upper()}})
    if min_confidence is not None:
        filters.append({"range": {"confidence": {"gte": min_confidence}}})
    if since is not None:
        filters.append({"range": {"indexed_at": {"gte": since.isoformat()}}})
    return {"bool": {"must": must or [{"match_all": {}}], "filter": filters}}


def _region_cell(regions: list[dict[str, Any]]) -> str:
    if not regions:
        return "-"
    best = max(regions, key=lambda region: region["score"])
    box = ",".join(f"{coordinate:.2f}" for coordinate in best["box"])
    return f"img{best['image_index']} [{box}] {best['score']:.2f}"


def format_table(entities: list[dict[str, Any]]) -> str:
    rows = [("ENTITY", "TYPE", "CONF", "POST", "REGION (image [x0,y0,x1,y1] score)")]
    rows += [
        (e["text"], e["type"], f"{e['confidence']:.3f}", e["post_id"], _region_cell(e.get("regions", [])))
        for e in entities
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)), row[-1]]) for row in rows
    )


async def search_entities(settings: Settings, query: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    async with es_client(settings) as es:
        response = await es.search(
            index=settings.es_index_entities,
            query=query,
            size=limit,
            sort=[{"_score": "desc"}, {"confidence": "desc"}, {"indexed_at": "desc"}],
        )
    return [hit["_source"] for hit in response["hits"]["hits"]]


async def wait_for_posts(settings: Settings, count: int, timeout_s: float, since: datetime | None = None) -> int:
    """Poll the posts index until it holds ``count`` documents (indexed at or after ``since``, when given);
    returns the final count (raises on timeout)."""
    deadline = time.monotonic() + timeout_s
    query = {"range": {"indexed_at": {"gte": since.isoformat()}}} if since else {"match_all": {}}
    async with es_client(settings) as es:
        with tqdm(total=count, desc="indexed posts", unit="post") as progress:
            while True:
                try:
                    await es.indices.refresh(index=settings.es_index_posts)
                    indexed = (await es.count(index=settings.es_index_posts, query=query))["count"]
                except NotFoundError:
                    indexed = 0
                progress.update(indexed - progress.n)
                if indexed >= count:
                    return indexed
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{indexed} of {count} posts indexed after {timeout_s:g} s")
                await asyncio.sleep(1.0)
