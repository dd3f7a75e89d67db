"""The shipped Kibana saved objects are well-formed and only name fields the index templates define."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stream.stages.index_templates import ENTITIES_MAPPINGS, POSTS_MAPPINGS

SAVED_OBJECTS = Path(__file__).resolve().parents[2] / "deploy" / "kibana" / "postlens.ndjson"
MAPPINGS = {"postlens-entities": ENTITIES_MAPPINGS, "postlens-posts": POSTS_MAPPINGS}


def load() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SAVED_OBJECTS.read_text().splitlines() if line.strip()]


def field_exists(mappings: dict[str, Any], dotted: str) -> bool:
    node: dict[str, Any] = mappings
    for part in dotted.split("."):
        children = {**node.get("properties", {}), **node.get("fields", {})}
        if part not in children:
            return False
        node = children[part]
    return True


def test_every_reference_resolves_to_a_shipped_object() -> None:
    objects = load()
    shipped = {(obj["type"], obj["id"]) for obj in objects}
    assert len(shipped) == len(objects), "duplicate ids"
    for obj in objects:
        for reference in obj["references"]:
            assert (reference["type"], reference["id"]) in shipped, (obj["id"], reference)


def test_data_views_have_the_time_field_of_their_index() -> None:
    views = {obj["id"]: obj["attributes"] for obj in load() if obj["type"] == "index-pattern"}
    assert set(views) == set(MAPPINGS)
    for view_id, attributes in views.items():
        assert field_exists(MAPPINGS[attributes["title"]], attributes["timeFieldName"]), view_id


def test_visualizations_only_use_fields_of_their_data_view() -> None:
    visualizations = [obj for obj in load() if obj["type"] == "visualization"]
    assert len(visualizations) >= 3
    for vis in visualizations:
        (index_ref,) = vis["references"]
        state = json.loads(vis["attributes"]["visState"])
        json.loads(vis["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
        for agg in state["aggs"]:
            if "field" in agg["params"]:
                assert field_exists(MAPPINGS[index_ref["id"]], agg["params"]["field"]), (vis["id"], agg)


def test_dashboard_panels_match_its_references() -> None:
    (dashboard,) = [obj for obj in load() if obj["type"] == "dashboard"]
    panels = json.loads(dashboard["attributes"]["panelsJSON"])
    assert sorted(panel["panelRefName"] for panel in panels) == sorted(ref["name"] for ref in dashboard["references"])
