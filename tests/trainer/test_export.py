"""trainer.export: a checkpoint becomes a complete, verified Triton model version, written atomically and numbered."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml

from postlens.runtime.config import (
    TINY_ROBERTA,
    TINY_SPANBERT,
    FusionConfig,
    ModelConfig,
    TextEncoderConfig,
    VisionEncoderConfig,
    WordFeaturesConfig,
)
from postlens.runtime.exported import INPUT_NAMES, ExportedModel
from postlens.runtime.preprocess import Preprocessor
from postlens.schemas import ModelRef
from trainer import export
from trainer.export import ExportError, export_model, next_version, random_inputs, verify_parity
from trainer.model.checkpoint import load_checkpoint, save_checkpoint
from trainer.model.network import NerNetwork
from trainer.model.tokenizer import subword_tokenizer

pytestmark = pytest.mark.slow


def versions(repo: Path) -> list[str]:
    return sorted(entry.name for entry in (repo / "postlens").iterdir() if entry.is_dir())


def test_a_version_holds_everything_serving_needs(exported_repo: Path, tiny_checkpoint: Path) -> None:
    model_root = exported_repo / "postlens"
    version_dir = model_root / "1"
    assert versions(exported_repo) == ["1"], "a staging folder was left behind"
    for name in ("network.onnx", "crf.npz", "config.yaml", "model_card.json", "model.py", "tokenizer"):
        assert (version_dir / name).exists(), f"{name} missing"
    assert (version_dir / "model.py").read_text() == (export.MODEL_SOURCE / "model.py").read_text()

    checkpoint_config = yaml.safe_load((tiny_checkpoint / "config.yaml").read_text())
    size = checkpoint_config["model"]["vision_encoder"]["image_size"]
    assert re.search(
        rf'name: "IMAGES"[^}}]*dims: \[ 4, {size}, {size}, 3 \]', (model_root / "config.pbtxt").read_text()
    )
    with np.load(version_dir / "crf.npz") as crf:
        assert list(crf["labels"]) == checkpoint_config["model"]["labels"]
        assert crf["transitions"].shape == (len(crf["labels"]),) * 2

    card = json.loads((version_dir / "model_card.json").read_text())
    assert card["source_checkpoint"] == str(tiny_checkpoint.resolve())
    assert card["checkpoint_version"] == checkpoint_config["version"]
    assert card["metrics"] == json.loads((tiny_checkpoint / "metrics.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{40}", card["git"]["commit"])
    assert card["libraries"]["onnxruntime"] == ort.__version__
    assert card["libraries"]["torch"] == torch.__version__
    checked = {(case["batch"], case["images"]) for case in card["parity"]["cases"]}
    assert {0, 4} <= {images for _, images in checked}


def test_onnx_runtime_matches_pytorch_on_shapes_the_export_never_saw(
    exported_repo: Path, tiny_checkpoint: Path
) -> None:
    network = load_checkpoint(tiny_checkpoint)[0]
    exported = ExportedModel.load(exported_repo / "postlens" / "1", ModelRef(name="test", version="1"))
    for seed, (batch, images, long) in enumerate(
        [(1, 0, True), (7, 4, False), (2, 1, True), (6, 0, False), (3, 3, False)], start=100
    ):
        inputs = random_inputs(exported.preprocessor, batch, images, seed, long)
        with torch.no_grad():
            expected = [output.numpy() for output in network(**{k: torch.from_numpy(v) for k, v in inputs.items()})]
        for name, want, got in zip(export.OUTPUT_NAMES, expected, exported.run(inputs), strict=True):
            assert got.shape == want.shape, f"{name}, batch {batch}, {images} images"
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=f"{name}, batch {batch}, {images} images")


def test_a_network_that_differs_from_its_onnx_file_is_refused_and_nothing_is_written(
    exported_repo: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Path(shutil.copytree(exported_repo, tmp_path / "repository"))

    def check_against_other_weights(network, version_dir):  # the ONNX file has the checkpoint's weights
        with torch.no_grad():
            network.emission.bias.add_(0.5)
        return verify_parity(network, version_dir)

    monkeypatch.setattr(export, "verify_parity", check_against_other_weights)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_model(tiny_checkpoint, repo)
    assert versions(repo) == ["1"]


def test_versions_are_numbered_and_never_overwritten(
    exported_repo: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    onnx_file = exported_repo / "postlens" / "1" / "network.onnx"
    written = onnx_file.stat().st_mtime_ns
    with pytest.raises(ExportError, match="exists already"):
        export_model(tiny_checkpoint, exported_repo, version=1)
    with pytest.raises(ExportError, match="positive"):
        export_model(tiny_checkpoint, exported_repo, version=0)
    assert onnx_file.stat().st_mtime_ns == written

    repo = Path(shutil.copytree(exported_repo, tmp_path / "repository"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.export",
            "--model",
            str(tiny_checkpoint),
            "--repo",
            str(repo),
            "--version",
            "7",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Triton not contacted" in result.stdout  # a temporary repository is nobody's serving repository
    assert versions(repo) == ["1", "7"]
    assert next_version(repo / "postlens") == 8


def test_a_checkpoint_of_another_image_size_is_refused_beside_existing_versions(
    exported_repo: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    repo = Path(shutil.copytree(exported_repo, tmp_path / "repository"))
    config = repo / "postlens" / "config.pbtxt"
    config.write_text(re.sub(r"dims: \[ 4, \d+, \d+, 3 \]", "dims: [ 4, 32, 32, 3 ]", config.read_text()))
    with pytest.raises(ExportError, match="32×32"):
        export_model(tiny_checkpoint, repo)
    assert versions(repo) == ["1"]


def test_a_second_model_is_named_after_its_folder(tiny_checkpoint: Path, tmp_path: Path) -> None:
    # Triton refuses a config whose name differs from its folder; a second served model needs its own name.
    version_dir = export_model(tiny_checkpoint, tmp_path / "repository", name="postlens-synthetic")
    assert version_dir == tmp_path / "repository" / "postlens-synthetic" / "1"
    config = (version_dir.parent / "config.pbtxt").read_text()
    assert 'name: "postlens-synthetic"' in config and 'name: "postlens"\n' not in config
    assert json.loads((version_dir / "model_card.json").read_text())["name"] == "postlens-synthetic"


@pytest.mark.parametrize(("shape", "chars"), [(False, True), (True, True)])
def test_word_features_are_extra_inputs_of_the_exported_network(tmp_path: Path, shape: bool, chars: bool) -> None:
    """Shape and char ids are computed by the served preprocessing and fed to ONNX Runtime by name, also when only
    the second feature is on; export refuses any parity mismatch, so a written version is a checked one."""
    torch.manual_seed(0)
    features = WordFeaturesConfig(shape=shape, chars=chars)
    network, tokenizer, config = NerNetwork.build(
        ModelConfig(fusion=FusionConfig(name="cross", hidden=32), word_features=features)
    )
    save_checkpoint(tmp_path / "checkpoint", {"model": config.model_dump(mode="json")}, network, tokenizer)
    version_dir = export_model(tmp_path / "checkpoint", tmp_path / "repo")
    session = ort.InferenceSession(str(version_dir / "network.onnx"))
    extra = [name for name, on in (("word_shape", shape), ("word_chars", chars)) if on]
    assert [i.name for i in session.get_inputs()] == [*INPUT_NAMES, *extra]
    exported = ExportedModel.load(version_dir, ModelRef(name="test", version="1"))
    size = exported.image_size
    texts = ["Obama visits Paris", "obama visits paris"]
    predictions = exported.predict(texts, np.zeros((2, 4, size, size, 3), np.uint8), np.zeros((2, 4), bool))
    assert len(predictions) == 2 and all(prediction.error is None for prediction in predictions)


def test_an_export_lacking_an_output_served_now_is_refused_with_the_remedy(exported_repo: Path, tmp_path: Path) -> None:
    """A version exported by an earlier PostLens (no region_boxes) fails to load with what to do, not per request."""
    old = tmp_path / "1"
    shutil.copytree(exported_repo / "postlens" / "1", old)
    network = onnx.load(str(old / "network.onnx"))
    kept = [output for output in network.graph.output if output.name != "region_boxes"]
    del network.graph.output[:]
    network.graph.output.extend(kept)
    onnx.save(network, str(old / "network.onnx"))
    with pytest.raises(ValueError, match=r"region_boxes.*re-export"):
        ExportedModel.load(old, ModelRef(name="old", version="1"))


@pytest.mark.parametrize(("family", "strategy"), [("detr", "cross"), ("blip", "cross"), ("resnet", "mpcfn")])
def test_every_vision_family_exports_its_region_boxes_with_parity(tmp_path: Path, family: str, strategy: str) -> None:
    """Tiny random models of the transformers families: export checks every output against PyTorch (region boxes
    included) on 0–4 images; served, DETR's boxes are its own per image, a grid family's are its cells."""
    torch.manual_seed(0)
    config = ModelConfig(
        vision_encoder=VisionEncoderConfig(family=family), fusion=FusionConfig(name=strategy, hidden=32)
    )
    network, tokenizer, config = NerNetwork.build(config)
    save_checkpoint(tmp_path / "checkpoint", {"model": config.model_dump(mode="json")}, network, tokenizer)
    version_dir = export_model(tmp_path / "checkpoint", tmp_path / "repo")  # raises when ONNX Runtime differs
    cases = json.loads((version_dir / "model_card.json").read_text())["parity"]["cases"]
    assert {0, 1, 4} <= {case["images"] for case in cases}
    session = ort.InferenceSession(str(version_dir / "network.onnx"))
    assert [output.name for output in session.get_outputs()] == list(export.OUTPUT_NAMES)

    exported = ExportedModel.load(version_dir, ModelRef(name="test", version="1"))
    size = exported.image_size
    images = np.random.default_rng(0).integers(0, 256, size=(2, 2, size, size, 3), dtype=np.uint8)
    inputs, _ = exported.preprocessor.encode(["Obama visits Paris", "a dog"], images, np.ones((2, 2), bool))
    boxes = exported.run(inputs)[export.OUTPUT_NAMES.index("region_boxes")]
    assert boxes.shape == (2, 2, config.vision_encoder.regions, 4)
    assert (boxes[..., :2] >= 0).all() and (boxes[..., :2] <= boxes[..., 2:]).all() and (boxes[..., 2:] <= 1).all()
    assert np.allclose(boxes[0, 0], boxes[1, 1]) == (family != "detr")


@pytest.mark.parametrize("family", [TINY_ROBERTA, TINY_SPANBERT])
def test_every_text_family_exports_with_parity(tmp_path: Path, family: str) -> None:
    """RoBERTa numbers positions from its padding index, SpanBERT has a tokenizer of its own: both export with
    ONNX Runtime matching PyTorch on 0–4 images, and the served model reads text with the saved tokenizer."""
    torch.manual_seed(0)
    config = ModelConfig(text_encoder=TextEncoderConfig(name=family), fusion=FusionConfig(name="cross", hidden=32))
    network, tokenizer, config = NerNetwork.build(config)
    save_checkpoint(tmp_path / "checkpoint", {"model": config.model_dump(mode="json")}, network, tokenizer)
    version_dir = export_model(tmp_path / "checkpoint", tmp_path / "repo")  # raises when ONNX Runtime differs
    cases = json.loads((version_dir / "model_card.json").read_text())["parity"]["cases"]
    assert {0, 1, 4} <= {case["images"] for case in cases}
    exported = ExportedModel.load(version_dir, ModelRef(name="test", version="1"))
    size = exported.image_size
    texts, no_images = (
        ["Obama visits Paris 🔥", "北京 at the game"],
        (np.zeros((2, 0, size, size, 3), np.uint8), np.zeros((2, 0), bool)),
    )
    served, _ = exported.preprocessor.encode(texts, *no_images)
    trained, _ = Preprocessor.from_config(config, subword_tokenizer(tokenizer)).encode(texts, *no_images)
    assert served.keys() == trained.keys() and all((served[name] == trained[name]).all() for name in served)
    assert all(prediction.error is None for prediction in exported.predict(texts, *no_images))
