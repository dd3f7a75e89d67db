"""Which posts are worth a person's minute: the model's least certain, of rare types, and unlike one another.

Each indexed post with entities gets an uncertainty in [0, 1], the mean of three signals over its entities:
- least confidence: 1 − the lowest span confidence (the confidences are calibrated probabilities);
- near the decision: 1 − |2c − 1| at its most, 1 for a span at 0.5, the point where the model's call flips;
- rarity: 1 − the share of the rarest of its types among all indexed entities (rare types have fewest labels).
Posts are then chosen greedily (maximal marginal relevance): each next post maximises its uncertainty minus
``diversity`` × its word overlap (Jaccard) with the most similar post already chosen, so near-copies (retweets, one
story told many times) are not all sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from elasticsearch import AsyncElasticsearch, NotFoundError

from postlens.schemas import PredictedEntity
from postlens.settings import Settings

WORD = re.compile(r"\w+")


@dataclass
class Candidate:
    """An indexed post, its predicted entities (with their regions) and how uncertain the model is about it."""

    post: dict[str, Any]  # the postlens-posts document
    entities: list[PredictedEntity] = field(default_factory=list)
    uncertainty: float = 0.0

    @property
    def id(self) -> str:
        return self.post["id"]

    @property
    def model_version(self) -> str | None:
        model = self.post.get("model") or {}
        return f"{model['name']}/{model['version']}" if model.get("name") else None


def uncertainty(confidences: list[float], types: list[str], type_share: dict[str, float]) -> float:
    least = 1 - min(confidences)
    near_decision = max(1 - abs(2 * c - 1) for c in confidences)
    rarity = 1 - min(type_share.get(name, 0.0) for name in types)
    return (least + near_decision + rarity) / 3


def words(text: str) -> frozenset[str]:
    return frozenset(WORD.findall(text.lower()))


def diverse(candidates: list[Candidate], count: int, diversity: float) -> list[Candidate]:
    """Greedy maximal marginal relevance over word sets (see the module doc)."""
    bags = [words(c.post["text"]) for c in candidates]
    closest = [0.0] * len(candidates)  # each candidate's highest similarity to a chosen post
    left = set(range(len(candidates)))
    chosen: list[int] = []
    while left and len(chosen) < count:
        best = max(left, key=lambda i: (candidates[i].uncertainty - diversity * closest[i], -i))
        chosen.append(best)
        left.discard(best)
        for i in left:
            union = len(bags[i] | bags[best])
            closest[i] = max(closest[i], len(bags[i] & bags[best]) / union if union else 1.0)
    return [candidates[i] for i in chosen]


async def type_shares(es: AsyncElasticsearch, settings: Settings) -> dict[str, float]:
    """Each entity type's share of the indexed entity mentions (none before the worker indexed anything)."""
    try:
        response = await es.search(
            index=settings.es_index_entities, size=0, aggs={"types": {"terms": {"field": "type", "size": 100}}}
        )
    except NotFoundError:
        return {}
    counts = {b["key"]: b["doc_count"] for b in response["aggregations"]["types"]["buckets"]}
    total = sum(counts.values()) or 1
    return {name: count / total for name, count in counts.items()}


async def candidates(
    es: AsyncElasticsearch, settings: Settings, excluded: set[str], pool: int, shares: dict[str, float]
) -> list[Candidate]:
    """Up to ``pool`` posts with entities, least confident first, plus those with a rarer-than-average type; none of
    ``excluded``."""
    not_excluded = [{"ids": {"values": sorted(excluded)}}] if excluded else []
    nested_confidence = {"order": "asc", "mode": "min", "nested": {"path": "entities"}}
    queries: list[dict[str, Any]] = [{"range": {"entity_count": {"gte": 1}}}]
    if rare := [name for name, share in shares.items() if share < 1 / len(shares)]:
        queries.append({"nested": {"path": "entities", "query": {"terms": {"entities.type": rare}}}})
    found: dict[str, dict[str, Any]] = {}
    for query in queries:
        response = await es.search(
            index=settings.es_index_posts,
            query={"bool": {"filter": [query], "must_not": not_excluded}},
            sort=[{"entities.confidence": nested_confidence}, {"id": "asc"}],
            size=pool,
        )
        for hit in response["hits"]["hits"]:
            found.setdefault(hit["_id"], hit["_source"])
    result = []
    for post in found.values():
        entities = post.get("entities") or []
        if not entities:
            continue
        score = uncertainty([e["confidence"] for e in entities], [e["type"] for e in entities], shares)
        result.append(Candidate(post, uncertainty=score))
    return result


async def with_regions(es: AsyncElasticsearch, settings: Settings, chosen: list[Candidate]) -> None:
    """Fill each candidate's entities, with their grounded regions, from the entities index."""
    by_post: dict[str, list[PredictedEntity]] = {c.id: [] for c in chosen}
    if not chosen:
        return
    response = await es.search(
        index=settings.es_index_entities,
        query={"terms": {"post_id": list(by_post)}},
        size=10_000,
        source_includes=["post_id", "text", "type", "start", "end", "confidence", "regions"],
    )
    for hit in response["hits"]["hits"]:
        doc = hit["_source"]
        by_post[doc.pop("post_id")].append(PredictedEntity.model_validate(doc))
    for candidate in chosen:
        candidate.entities = sorted(by_post[candidate.id], key=lambda e: e.start)


async def select(es: AsyncElasticsearch, settings: Settings, excluded: set[str], count: int) -> list[Candidate]:
    """The ``count`` posts to send next (see the module doc), with their entities and regions."""
    shares = await type_shares(es, settings)
    if not shares:
        return []
    pool = await candidates(es, settings, excluded, settings.label_pool, shares)
    pool.sort(key=lambda c: (-c.uncertainty, c.id))
    chosen = diverse(pool, count, settings.label_diversity)
    await with_regions(es, settings, chosen)
    return chosen
