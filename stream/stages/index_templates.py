"""The Elasticsearch index templates — the one definition the worker installs and deploy/ reuses; the documents
they hold are described in docs/contracts.md.

Mappings are strict: a document with a field not declared here is refused (and dead-lettered by the worker)
instead of silently growing the mapping.
"""

from __future__ import annotations

from typing import Any

from postlens.settings import Settings

_KEYWORD = {"type": "keyword"}
_MODEL = {"properties": {"name": _KEYWORD, "version": _KEYWORD}}
# Full-text search on the mention, plus an exact keyword for aggregations ("top entities") and filters.
_SEARCHABLE_NAME = {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}

ENTITIES_MAPPINGS: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "post_id": _KEYWORD,
        "post_version": {"type": "long"},  # the version of the post this entity was found in
        "text": _SEARCHABLE_NAME,
        "type": _KEYWORD,
        "start": {"type": "integer"},
        "end": {"type": "integer"},
        "confidence": {"type": "float"},
        "regions": {
            "type": "nested",
            "properties": {
                "image_index": {"type": "integer"},
                "image_url": _KEYWORD,
                "box": {"type": "float"},  # [x0, y0, x1, y1] normalized to the image
                "score": {"type": "float"},
            },
        },
        "image_relevance": {"type": "float"},
        "model": _MODEL,
        "post": {
            "properties": {
                "text": {"type": "text"},
                "created_at": {"type": "date"},
                "author": _KEYWORD,
                "images": _KEYWORD,
            }
        },
        "indexed_at": {"type": "date"},
    },
}

POSTS_MAPPINGS: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "id": _KEYWORD,
        "text": {"type": "text"},
        "images": _KEYWORD,
        "created_at": {"type": "date"},
        "author": _KEYWORD,
        "lang": _KEYWORD,
        "version": {"type": "long"},  # the producer's, when it gave one
        "meta": {"type": "object", "enabled": False},  # producers' extra fields: kept, not indexed
        "entity_count": {"type": "integer"},
        "entities": {
            "type": "nested",
            "properties": {
                "text": _SEARCHABLE_NAME,
                "type": _KEYWORD,
                "start": {"type": "integer"},
                "end": {"type": "integer"},
                "confidence": {"type": "float"},
            },
        },
        # The _ids of this post's documents in the entities index, so a re-processing can delete stale ones.
        "entity_ids": _KEYWORD,
        # The version that stands (the producer's, else the Kafka offset): an older one never replaces it.
        "post_version": {"type": "long"},
        # Entity ids an earlier version listed and this one does not: deleted after this document is written, kept
        # so a processing interrupted in between finishes the deletes (stream.stages.index).
        "superseded_entity_ids": {"type": "keyword", "index": False, "doc_values": False},
        "image_fetch": {
            "type": "nested",
            "properties": {
                "url": _KEYWORD,
                "status": _KEYWORD,  # ok, skipped, or the failure kind
                "message": {"type": "text", "index": False},
                "cached": {"type": "boolean"},
            },
        },
        "image_relevance": {"type": "float"},
        "model": _MODEL,
        "indexed_at": {"type": "date"},
    },
}


def index_templates(settings: Settings) -> dict[str, dict[str, Any]]:
    """Template name → keyword arguments of ``indices.put_index_template`` for both PostLens indices."""
    return {
        f"{index}-template": {
            "index_patterns": [index],
            "priority": 200,
            "template": {
                "settings": {"number_of_shards": settings.es_shards, "auto_expand_replicas": settings.es_replicas},
                "mappings": mappings,
            },
            "_meta": {"description": f"PostLens {kind} (docs/contracts.md)"},
        }
        for index, kind, mappings in (
            (settings.es_index_entities, "entity mentions", ENTITIES_MAPPINGS),
            (settings.es_index_posts, "processed posts", POSTS_MAPPINGS),
        )
    }
