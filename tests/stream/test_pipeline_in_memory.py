"""The pipeline on the in-memory harness (tests/support/worker_harness.py): containment — each fault costs only its
post, found by splitting when nobody foresaw it — through any sink, with every stage's letters dead-lettered once.
What only the real services show (Triton's own failures, Elasticsearch's refusals) stays in test_containment.py and
stages/test_index_integration.py."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.worker_harness import MemorySource, running_harness

REPO = Path(__file__).resolve().parents[2]


async def test_each_fault_costs_only_its_post() -> None:
    source = MemorySource(partitions=1)
    texts = {
        "fine-1": "Lyon is a city",
        "poison": "POISON pill",
        "garble": "GARBLE me",
        "refuse": "REFUSE this",
        "region": "Anna REGION here",
        "unindexable": "Anna is UNINDEXABLE",
        "fine-2": "Paris in spring",
    }
    for key, text in texts.items():
        source.post(key, text)
    source.publish("cut", b'{"id": "cut')
    async with running_harness(source=source) as harness:
        # One batch: splitting must narrow the unforeseen fault down to its post.
        await harness.pipeline.process(source.messages)
    assert sorted((letter.key, letter.error.stage, letter.error.kind) for letter in harness.letters) == [
        ("cut", "ingest", "invalid_json"),
        ("garble", "infer", "bad_answer"),
        ("poison", "infer", "model_error"),
        ("refuse", "infer", "model_refused"),
        ("region", "infer", "internal_error"),
        ("unindexable", "index", "document_refused"),
    ]
    assert sorted(harness.sink.posts) == ["fine-1", "fine-2"]
    assert harness.metrics.batch_splits._value.get() >= 1  # noqa: SLF001 — the counter's value
    assert harness.sink.closed


async def test_the_pipeline_names_no_sink_or_model_implementation() -> None:
    """Adding an output touches the sink seam only: the pipeline and the flow import no Elasticsearch or Triton."""
    for module in ("stream/pipeline.py", "stream/flow.py", "stream/results.py", "stream/sink.py"):
        tree = ast.parse((REPO / module).read_text())
        imported = {
            name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for name in ([node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names])
        }
        assert not {name for name in imported if "elasticsearch" in name or "tritonclient" in name}, module
        assert "stream.stages.index" not in imported, module
