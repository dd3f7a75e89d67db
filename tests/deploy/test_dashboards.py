"""Dashboards show only what exists: Grafana's queries name the workers' metrics (stream/metrics.py) and labels,
Kibana's visualizations and filters name fields of the index templates (stream/stages/index_templates.py).

A renamed metric, label or field makes a panel silently empty; these checks make it fail here instead.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from postlens.settings import Settings
from stream.metrics import Metrics
from stream.stages.index_templates import ENTITIES_MAPPINGS, POSTS_MAPPINGS
from tests.deploy.test_compose import env_file
from tests.deploy.tools import DEPLOY
from trainer.retrain.watch import WatchMetrics

GRAFANA_DASHBOARDS = sorted((DEPLOY / "grafana").glob("*.json"))
KIBANA_OBJECTS = DEPLOY / "kibana" / "postlens.ndjson"
# Series from exporters deployed beside the workers (deploy/compose: kafka-exporter), by their documented labels.
EXTERNAL_SERIES = {"kafka_consumergroup_lag": {"consumergroup", "topic", "partition"}}
SERIES_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
SERIES = re.compile(r"\b([a-z_]+)\s*(\{[^}]*\})?")
MATCHER_LABEL = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def worker_metrics() -> list[MetricWrapperBase]:
    """The workers' metrics and those of ``python -m trainer.retrain --watch``."""
    exposed = [*vars(Metrics()).values(), *vars(WatchMetrics(CollectorRegistry())).values()]
    return [metric for metric in exposed if isinstance(metric, MetricWrapperBase)]


def declared(metric: MetricWrapperBase) -> tuple[str, str, set[str]]:
    """A worker metric's family name, type and declared label names."""
    (family,) = metric.describe()
    # prometheus_client has no public accessor for the label names a metric was declared with.
    return family.name, family.type, set(metric._labelnames)  # noqa: SLF001


def worker_series() -> dict[str, set[str]]:
    """Every series name the workers expose → its label names."""
    return {
        name + suffix: labels | ({"le"} if suffix == "_bucket" else set())
        for name, kind, labels in map(declared, worker_metrics())
        for suffix in SERIES_SUFFIXES[kind]
    }


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, PromQL, legend) of every target."""
    return [
        (panel["title"], target["expr"], target.get("legendFormat", ""))
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


@pytest.fixture(params=GRAFANA_DASHBOARDS, ids=lambda path: path.name)
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    return json.loads(request.param.read_text())


def test_grafana_queries_name_existing_series_and_labels(dashboard: dict[str, Any]) -> None:
    known = {**worker_series(), **EXTERNAL_SERIES}
    for title, expr, legend in queries(dashboard):
        used = [(name, selector) for name, selector in SERIES.findall(expr) if name.startswith(("postlens_", "kafka_"))]
        assert used, f"{title}: no series in {expr}"
        for name, selector in used:
            assert name in known, f"{title}: {name} is not exposed (stream/metrics.py or an exporter)"
            for label in MATCHER_LABEL.findall(selector):
                assert label in known[name], f"{title}: {name} has no label {label}"
        grouped = {label.strip() for group in GROUPING.findall(expr) for label in group.split(",") if label.strip()}
        for name, _ in used:
            assert grouped <= known[name], f"{title}: {name} lacks {grouped - known[name]}"
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
            assert label in grouped, f"{title}: legend names {label}, which the query does not keep"


def test_every_worker_metric_is_charted() -> None:
    charted = {
        name
        for path in GRAFANA_DASHBOARDS
        for _, expr, _ in queries(json.loads(path.read_text()))
        for name, _ in SERIES.findall(expr)
    }
    uncharted = [
        name
        for name, kind, _ in map(declared, worker_metrics())
        if not any(name + suffix in charted for suffix in SERIES_SUFFIXES[kind])
    ]
    assert not uncharted, f"metrics without a panel: {uncharted}"


def test_dashboard_defaults_are_the_settings_defaults(dashboard: dict[str, Any]) -> None:
    """The lag panels read the group and topic the workers use, by default and in the compose stack."""
    variables = {v["name"]: v["current"]["value"] for v in dashboard["templating"]["list"]}
    defaults = Settings(_env_file=None)
    assert variables["consumer_group"] == defaults.consumer_group == env_file()["POSTLENS_CONSUMER_GROUP"]
    assert variables["topic"] == defaults.topic_posts == env_file()["POSTLENS_TOPIC_POSTS"]


def test_panels_have_unique_ids_and_do_not_overlap(dashboard: dict[str, Any]) -> None:
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells = [
        (x, y)
        for panel in panels
        for g in [panel["gridPos"]]
        for x in range(g["x"], g["x"] + g["w"])
        for y in range(g["y"], g["y"] + g["h"])
    ]
    assert len(cells) == len(set(cells)) and all(0 <= x < 24 for x, _ in cells)


# --- Kibana -----------------------------------------------------------------------------------------------------

MAPPINGS = {"postlens-entities": ENTITIES_MAPPINGS, "postlens-posts": POSTS_MAPPINGS}
NESTED_GROUP = re.compile(r"([\w.]+)\s*:\s*\{([^}]*)\}")
KQL_FIELD = re.compile(r"([A-Za-z_][\w.]*)\s*(?::|>=|<=|>|<)")


def field(mappings: dict[str, Any], dotted: str) -> dict[str, Any] | None:
    node: dict[str, Any] = mappings
    for part in dotted.split("."):
        node = {**node.get("properties", {}), **node.get("fields", {})}.get(part)
        if node is None:
            return None
    return node


def kql_fields(query: str) -> list[tuple[str, str | None]]:
    """(field, nested path it was queried under or None) for every field a KQL query names."""
    found = [
        (f"{path}.{inner}", path) for path, group in NESTED_GROUP.findall(query) for inner in KQL_FIELD.findall(group)
    ]
    rest = NESTED_GROUP.sub(" ", query)
    return found + [(name, None) for name in KQL_FIELD.findall(rest) if name not in {"not", "and", "or"}]


def test_kibana_filters_name_existing_fields_with_nested_syntax_where_needed() -> None:
    objects = [json.loads(line) for line in KIBANA_OBJECTS.read_text().splitlines() if line.strip()]
    filters_checked = 0
    for vis in (obj for obj in objects if obj["type"] == "visualization"):
        (index,) = [ref["id"] for ref in vis["references"]]
        for agg in json.loads(vis["attributes"]["visState"])["aggs"]:
            for query in (f["input"]["query"] for f in agg["params"].get("filters", [])):
                for name, nested_path in kql_fields(query):
                    assert field(MAPPINGS[index], name), f"{vis['id']}: {index} has no field {name}"
                    # KQL refuses a nested field outside `path:{ ... }`.
                    parent = name.rsplit(".", 1)[0] if "." in name else None
                    if parent and (field(MAPPINGS[index], parent) or {}).get("type") == "nested":
                        assert nested_path == parent, f"{vis['id']}: {name} needs {parent}:{{ ... }}"
                    filters_checked += 1
    assert filters_checked >= 4


def test_kibana_dashboard_shows_every_visualization() -> None:
    objects = [json.loads(line) for line in KIBANA_OBJECTS.read_text().splitlines() if line.strip()]
    visualizations = {obj["id"] for obj in objects if obj["type"] == "visualization"}
    (dashboard,) = [obj for obj in objects if obj["type"] == "dashboard"]
    assert {ref["id"] for ref in dashboard["references"]} == visualizations
