"""The search command's parts: time filters, the query, the table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stream.commands.search import entity_query, format_table, parse_since

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1h", NOW - timedelta(hours=1)),
        ("30m", NOW - timedelta(minutes=30)),
        ("2d", NOW - timedelta(days=2)),
        ("45s", NOW - timedelta(seconds=45)),
        ("2026-11-20T08:00:00", datetime(2026, 11, 20, 8, tzinfo=UTC)),
        ("2026-11-20T08:00:00+02:00", datetime(2026, 11, 20, 6, tzinfo=UTC)),
    ],
)
def test_since_accepts_relative_and_iso_times(value: str, expected: datetime) -> None:
    assert parse_since(value, now=NOW) == expected


def test_since_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="--since"):
        parse_since("last tuesday")


def test_query_combines_text_and_filters() -> None:
    query = entity_query("jordan", "per", 0.5, NOW)
    assert query["bool"]["must"] == [{"match": {"text": "jordan"}}]
    assert {"term": {"type": "PER"}} in query["bool"]["filter"]
    assert {"range": {"confidence": {"gte": 0.5}}} in query["bool"]["filter"]
    assert {"range": {"indexed_at": {"gte": NOW.isoformat()}}} in query["bool"]["filter"]


def test_query_without_text_matches_everything() -> None:
    assert entity_query(None, None, None, None) == {"bool": {"must": [{"match_all": {}}], "filter": []}}


def test_table_shows_the_best_region() -> None:
    table = format_table(
        [
            {
                "text": "Jordan",
                "type": "PER",
                "confidence": 0.912,
                "post_id": "42",
                "regions": [
                    {"image_index": 0, "box": [0, 0, 0.5, 0.5], "score": 0.3},
                    {"image_index": 2, "box": [0.25, 0.25, 0.75, 1], "score": 0.8},
                ],
            },
            {"text": "Paris", "type": "LOC", "confidence": 0.5, "post_id": "43", "regions": []},
        ]
    )
    lines = table.splitlines()
    assert lines[0].startswith("ENTITY") and len(lines) == 3
    assert "img2 [0.25,0.25,0.75,1.00] 0.80" in lines[1] and "0.912" in lines[1]
    assert lines[2].rstrip().endswith("-")
