"""The int8 export: what it serves agrees with fp32 on the entities of held-out posts, in process and from Triton."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import pytest

from postlens.runtime.exported import CARD_FILE, INT8_ONNX_FILE, ONNX_FILE, ExportedModel
from postlens.schemas import ModelRef, Post
from tests.support.predictions import AGREEMENT, predict, served
from trainer.evaluate import entity_agreement, entity_sets
from trainer.evaluate import main as evaluate_main
from trainer.export import export_model
from trainer.quantize import DEFAULT_PRECISION, DEFAULT_SCHEME

if TYPE_CHECKING:
    from tests.fixtures_model import ServedModel


@pytest.fixture(scope="module")
def int8_repo(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("int8-repository")
    export_model(tiny_checkpoint, repo, precision="int8")
    return repo


def test_the_int8_version_serves_int8_and_keeps_the_fp32_network(int8_repo: Path) -> None:
    version_dir = int8_repo / "postlens" / "1"
    assert (version_dir / ONNX_FILE).is_file() and (version_dir / INT8_ONNX_FILE).is_file()
    assert (version_dir / INT8_ONNX_FILE).stat().st_size < (version_dir / ONNX_FILE).stat().st_size
    assert (
        '{ key: "precision" value: { string_value: "int8" } }' in (int8_repo / "postlens" / "config.pbtxt").read_text()
    )


def test_only_the_text_encoder_runs_in_int8_and_its_most_sensitive_layers_stay_fp32(int8_repo: Path) -> None:
    version_dir = int8_repo / "postlens" / "1"
    module_path = {  # the fp32 network's MatMuls → their module paths (the quantizer names its nodes after them)
        node.name: next(p.value for p in node.metadata_props if p.key == "namespace")
        for node in onnx.load(str(version_dir / ONNX_FILE)).graph.node
        if node.op_type == "MatMul"
    }
    int8 = onnx.load(str(version_dir / INT8_ONNX_FILE)).graph.node
    integer = [module_path[node.name.removesuffix("_quant")] for node in int8 if node.op_type == "MatMulInteger"]
    still_float = {node.name for node in int8 if node.op_type == "MatMul"}
    kept = [name for name, path in module_path.items() if any(re.search(p, path) for p in DEFAULT_SCHEME.kept_fp32)]
    assert integer, "nothing was quantized"
    assert all("text_encoder." in path for path in integer)
    assert kept, "the tiny encoder has none of the layers the default scheme keeps in fp32"
    assert set(kept) <= still_float


def test_int8_finds_the_entities_fp32_finds_on_held_out_posts(int8_repo: Path, valid_posts: list[Post]) -> None:
    version_dir, model = int8_repo / "postlens" / "1", ModelRef(name="postlens", version="1")
    fp32 = entity_sets(predict(ExportedModel.load(version_dir, model, precision="fp32"), valid_posts))
    int8 = entity_sets(predict(ExportedModel.load(version_dir, model, precision="int8"), valid_posts))
    assert sum(map(len, fp32)) >= 20, "the tiny model finds too few entities for agreement to mean anything"
    assert entity_agreement(fp32, int8) >= AGREEMENT


def test_length_batching_changes_no_prediction(int8_repo: Path, valid_posts: list[Post]) -> None:
    version_dir, model = int8_repo / "postlens" / "1", ModelRef(name="postlens", version="1")
    padded = predict(ExportedModel.load(version_dir, model, precision="fp32", length_batching=False), valid_posts)
    grouped = predict(ExportedModel.load(version_dir, model, precision="fp32"), valid_posts)
    assert entity_sets(grouped) == entity_sets(padded)
    for want, got in zip(padded, grouped, strict=True):
        assert [e.confidence for e in got.entities] == pytest.approx([e.confidence for e in want.entities], abs=1e-4)


@pytest.mark.integration
async def test_triton_serves_the_int8_network(
    int8_repo: Path, start_triton: Callable[[Path], ServedModel], valid_posts: list[Post]
) -> None:
    triton = start_triton(int8_repo)
    model = ModelRef(name="postlens", version="1")
    in_process = ExportedModel.load(int8_repo / "postlens" / "1", model, precision="int8")
    posts = valid_posts[:40]
    assert entity_sets(await served(triton.settings(), posts)) == entity_sets(predict(in_process, posts))


def test_evaluate_scores_an_exported_version_as_served(int8_repo: Path, model_data: Path, tmp_path: Path) -> None:
    version_dir = int8_repo / "postlens" / "1"
    scores = {}
    for precision in ("fp32", "int8"):
        out = tmp_path / f"{precision}.json"
        evaluate_main(
            ["--model", str(version_dir), "--precision", precision, "--data", str(model_data / "valid.jsonl"),
             "--json", str(out)]
        )  # fmt: skip
        scores[precision] = json.loads(out.read_text())["entity"]["f1"]
    assert scores["fp32"] > 0
    assert abs(scores["int8"] - scores["fp32"]) <= 0.05


def test_the_default_export_answers_a_post_alone_as_in_any_batch(
    tiny_checkpoint: Path, valid_posts: list[Post], tmp_path: Path
) -> None:
    """What a post is batched with (traffic, length buckets) must not change its entities, and its confidences only
    by rounding: why the default precision is bf16, not int8 (dynamic int8 scales activations per batch)."""
    version_dir = export_model(tiny_checkpoint, tmp_path / "repo")
    assert json.loads((version_dir / CARD_FILE).read_text())["precision"] == DEFAULT_PRECISION == "bf16"
    model = ExportedModel.load(version_dir, ModelRef(name="postlens", version="1"), precision=DEFAULT_PRECISION)
    posts = valid_posts[:24]
    together = predict(model, posts)
    alone = [predict(model, [post])[0] for post in posts]
    assert entity_sets(together) == entity_sets(alone)
    for in_batch, by_itself in zip(together, alone, strict=True):  # bf16 rounding in differently shaped batches
        assert [e.confidence for e in in_batch.entities] == pytest.approx(
            [e.confidence for e in by_itself.entities], abs=0.01
        )
