"""bf16 through OpenVINO: a version exported to serve it says so, finds the entities fp32 finds on held-out posts,
and Triton serves it as this process runs it (that it answers a post alone as in a batch: tests/trainer/test_quantize,
the default export)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from postlens.runtime.exported import CARD_FILE, INT8_ONNX_FILE, ExportedModel, version_precision
from postlens.schemas import ModelRef, Post
from tests.support.predictions import AGREEMENT, predict, served
from trainer.evaluate import entity_agreement, entity_sets
from trainer.export import export_model

if TYPE_CHECKING:
    from tests.fixtures_model import ServedModel

MODEL = ModelRef(name="postlens", version="1")


@pytest.fixture(scope="module")
def bf16_repo(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("bf16-repository")
    export_model(tiny_checkpoint, repo, precision="bf16")
    return repo


def test_a_bf16_version_says_so_and_runs_its_fp32_network_in_openvino(bf16_repo: Path) -> None:
    version_dir = bf16_repo / "postlens" / "1"
    assert json.loads((version_dir / CARD_FILE).read_text())["precision"] == "bf16"
    assert (
        '{ key: "precision" value: { string_value: "bf16" } }' in (bf16_repo / "postlens" / "config.pbtxt").read_text()
    )
    assert not (version_dir / INT8_ONNX_FILE).exists()
    assert version_precision(version_dir, "fp32") == "bf16"  # the version's card wins over the model's config
    assert ExportedModel.load(version_dir, MODEL, intra_op_threads=1, precision="bf16").engine.startswith("OpenVINO")


def test_bf16_finds_the_entities_fp32_finds_on_held_out_posts(bf16_repo: Path, valid_posts: list[Post]) -> None:
    version_dir = bf16_repo / "postlens" / "1"
    fp32 = entity_sets(predict(ExportedModel.load(version_dir, MODEL, precision="fp32"), valid_posts))
    bf16 = entity_sets(predict(ExportedModel.load(version_dir, MODEL, precision="bf16"), valid_posts))
    assert sum(map(len, fp32)) >= 20, "the tiny model finds too few entities for agreement to mean anything"
    assert entity_agreement(fp32, bf16) >= AGREEMENT


def test_rounding_lengths_up_for_openvino_changes_no_posts_entities(bf16_repo: Path, valid_posts: list[Post]) -> None:
    rounded = ExportedModel.load(bf16_repo / "postlens" / "1", MODEL, precision="bf16")
    assert rounded.shape_multiple > 1
    exact = replace(rounded, shape_multiple=1)
    assert entity_sets(predict(rounded, valid_posts)) == entity_sets(predict(exact, valid_posts))


@pytest.mark.integration
async def test_triton_serves_the_bf16_version_as_this_process_runs_it(
    bf16_repo: Path, start_triton: Callable[[Path], ServedModel], valid_posts: list[Post]
) -> None:
    triton = start_triton(bf16_repo)
    in_process = ExportedModel.load(bf16_repo / "postlens" / "1", MODEL, precision="bf16")
    posts = valid_posts[:40]
    assert entity_sets(await served(triton.settings(), posts)) == entity_sets(predict(in_process, posts))
    assert "at bf16 on OpenVINO CPU" in triton.log.read_text()  # each instance logs what runs its network
