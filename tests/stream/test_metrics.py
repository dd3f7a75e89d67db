"""The metrics page names what operators look at."""

from __future__ import annotations

from stream.metrics import Metrics


def test_metrics_render_counts_and_model_version() -> None:
    metrics = Metrics()
    metrics.record_finished(indexed=5, dead_lettered=1)
    metrics.record_model("postlens", "1")
    metrics.record_model("postlens", "2")  # a new version replaces the old one
    metrics.dead_letters.labels("ingest", "invalid_json").inc()
    text = metrics.render().decode()
    assert 'postlens_posts_total{outcome="indexed"} 5.0' in text
    assert 'postlens_model_info{name="postlens",version="2"} 1.0' in text
    assert 'version="1"' not in text
    assert 'postlens_dead_letters_total{kind="invalid_json",stage="ingest"} 1.0' in text
    assert metrics.throughput._value.get() > 0  # noqa: SLF001 — the gauge's current value
