"""Training end to end on a small synthetic set with tiny encoders: the image-aware model settles what text cannot,
grounds entities in the right region, and a fixed seed gives the same model twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from postlens.schemas import Post
from trainer.data.carried import DataOrigin, read_set
from trainer.data.examples import Example
from trainer.data.load import load_examples
from trainer.data.split import carve_dev
from trainer.evaluate import EvaluationReport, build_report
from trainer.model.checkpoint import load_checkpoint
from trainer.model.network import NerNetwork
from trainer.predict import Predictor
from trainer.run_config import TrainConfig, resolve_config
from trainer.train import build_optimizer, train


def train_tiny(data: Path, out: Path, strategy: str, *overrides: str) -> Path:
    config = resolve_config("tiny", strategy, overrides)
    train(config, load_examples(data / "train.jsonl"), load_examples(data / "valid.jsonl"), out, progress=False)
    return out


def evaluate(model_dir: Path, data: Path) -> EvaluationReport:
    return evaluate_on(model_dir, load_examples(data / "test.jsonl"))


def evaluate_on(model_dir: Path, examples: list[Example]) -> EvaluationReport:
    predictions = Predictor.load(model_dir).predict([Post(id=e.id, text=e.text, images=e.images) for e in examples])
    return build_report(examples, predictions).report


@pytest.fixture(scope="module")
def reports(synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, EvaluationReport]]:
    trained = {}
    for strategy in ("text", "cross"):
        model_dir = train_tiny(synthetic, tmp_path_factory.mktemp(strategy), strategy)
        trained[strategy] = (model_dir, evaluate(model_dir, synthetic))
    return trained


@pytest.mark.slow
def test_cross_attention_settles_what_text_cannot(reports: dict[str, tuple[Path, EvaluationReport]]) -> None:
    text, cross = reports["text"][1], reports["cross"][1]
    # Ambiguous names: only the image tells PER from LOC from ORG.
    assert cross.subsets["ambiguous"].entity.f1 >= text.subsets["ambiguous"].entity.f1 + 0.3
    # Where the text settles the type, both do well.
    assert text.subsets["no_image"].entity.f1 >= 0.9 and cross.subsets["no_image"].entity.f1 >= 0.9
    assert cross.grounding.accuracy >= 0.8
    assert cross.ece <= 0.1


@pytest.mark.slow
def test_a_bf16_forward_pass_trains_as_well_and_saves_fp32_weights(
    synthetic: Path, tmp_path: Path, reports: dict[str, tuple[Path, EvaluationReport]]
) -> None:
    model_dir = train_tiny(synthetic, tmp_path, "cross", "train.bf16_autocast=true")
    bf16, fp32 = evaluate(model_dir, synthetic), reports["cross"][1]
    assert bf16.subsets["ambiguous"].entity.f1 >= fp32.subsets["ambiguous"].entity.f1 - 0.05
    assert bf16.grounding.accuracy >= 0.8
    network = load_checkpoint(model_dir)[0]
    assert {parameter.dtype for parameter in network.parameters()} == {torch.float32}


@pytest.mark.slow
def test_checkpoint_rebuilds_without_the_training_setup(reports: dict[str, tuple[Path, EvaluationReport]]) -> None:
    model_dir = reports["cross"][0]
    config = yaml.safe_load((model_dir / "config.yaml").read_text())
    model = config["model"]
    assert model["labels"][0] == "O" and "B-PER" in model["labels"]
    assert model["word_tokenizer_version"] and model["text_encoder"]["architecture"]
    assert model["vision_encoder"]["image_size"] == 64 and model["vision_encoder"]["grid"] == [4, 4]
    assert 0 < model["decode"]["grounding_threshold"] < 1
    assert (model_dir / "tokenizer" / "tokenizer.json").is_file()
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["selected_on"] == "valid" and metrics["dev"] is None  # the tiny preset carves no dev slice
    assert metrics["valid"]["entity"]["f1"] == max(record["selection_f1"] for record in metrics["history"])
    assert (model_dir / "training_curve.png").stat().st_size > 0


@pytest.mark.slow
def test_same_seed_same_model(synthetic: Path, tmp_path: Path) -> None:
    first = train_tiny(synthetic, tmp_path / "first", "text", "train.epochs=2")
    second = train_tiny(synthetic, tmp_path / "second", "text", "train.epochs=2")
    first_metrics = json.loads((first / "metrics.json").read_text())
    second_metrics = json.loads((second / "metrics.json").read_text())
    assert first_metrics["version"] == second_metrics["version"]  # hash of the weights
    assert [r["loss"] for r in first_metrics["history"]] == [r["loss"] for r in second_metrics["history"]]
    examples = load_examples(synthetic / "test.jsonl")
    posts = [Post(id=e.id, text=e.text, images=e.images) for e in examples]
    assert Predictor.load(first).predict(posts) == Predictor.load(second).predict(posts)


def test_a_dev_slice_selects_and_calibrates_while_valid_is_only_scored(synthetic: Path, tmp_path: Path) -> None:
    overrides = ["train.epochs=3", "train.dev_share=0.25", "train.average_last=2"]
    train_examples = load_examples(synthetic / "train.jsonl")[:96]
    valid_examples = load_examples(synthetic / "valid.jsonl")[:32]
    files = [DataOrigin(path="first", posts=12), DataOrigin(path="second", posts=20)]  # valid read from two files
    config = resolve_config("tiny", "text", overrides)
    train(config, train_examples, valid_examples, tmp_path, progress=False, valid_files=files)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    dev_posts = len(carve_dev(train_examples, 0.25)[1])
    assert metrics["selected_on"] == "dev" and metrics["selection_posts"] == dev_posts
    assert metrics["trained_posts"] + dev_posts == len(train_examples)
    candidates = metrics["candidates"]
    assert candidates["average_last_2"]["epochs"] == [2, 3] and metrics["kept"] in candidates
    assert candidates["best_epoch"]["selection_f1"] == max(r["selection_f1"] for r in metrics["history"])
    kept = candidates[metrics["kept"]]
    assert kept["selection_f1"] == max(candidate["selection_f1"] for candidate in candidates.values())
    assert metrics["dev"]["entity"]["f1"] == kept["selection_f1"]
    # valid is scored as the checkpoint predicts it, and carried as the reference set retraining gates on
    assert metrics["valid"]["entity"]["f1"] == kept["valid_f1"] == evaluate_on(tmp_path, valid_examples).entity.f1
    assert [e.id for e in read_set(tmp_path, "reference")] == [e.id for e in valid_examples]
    second = evaluate_on(tmp_path, valid_examples[12:]).entity.f1
    assert metrics["valid_by_file"]["second"]["entity"]["f1"] == kept["valid_f1_by_file"]["second"] == second


def test_frozen_word_embeddings_stay_as_built_while_the_rest_learns(synthetic: Path, tmp_path: Path) -> None:
    config = resolve_config("tiny", "text", ["train.epochs=1", "train.freeze_word_embeddings=true"])
    examples = load_examples(synthetic / "train.jsonl")[:16]
    torch.manual_seed(config.seed)  # train() seeds the same way before it builds the network
    built, _, _ = NerNetwork.build(config.model)
    train(config, examples, examples, tmp_path, progress=False)
    trained = load_checkpoint(tmp_path)[0]

    def table(network: NerNetwork) -> torch.Tensor:
        return network.text_encoder.model.get_input_embeddings().weight

    assert torch.equal(table(trained), table(built))
    assert not torch.equal(trained.emission.weight, built.emission.weight)


def test_a_frozen_detector_keeps_its_boxes_while_the_fusion_learns(synthetic: Path, tmp_path: Path) -> None:
    overrides = ["train.epochs=1", "train.freeze_vision_encoder=true", "model.vision_encoder.family=detr"]
    config = resolve_config("tiny", "cross", overrides)
    examples = load_examples(synthetic / "train.jsonl")[:16]
    torch.manual_seed(config.seed)  # train() seeds the same way before it builds the network
    built, _, _ = NerNetwork.build(config.model)
    train(config, examples, examples, tmp_path, progress=False)
    trained = load_checkpoint(tmp_path)[0].eval()
    size = trained.vision_encoder.image_size
    pixels = torch.rand(2, 1, 3, size, size)
    with torch.no_grad():
        assert torch.equal(trained.vision_encoder(pixels).boxes, built.eval().vision_encoder(pixels).boxes)
    parameters = zip(trained.fusion.parameters(), built.fusion.parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in parameters)


def test_learning_rate_by_part_with_the_vision_encoder_on_its_own_or_the_encoder_rate() -> None:
    parts = torch.nn.ModuleDict(
        {name: torch.nn.Linear(2, 2) for name in ("text_encoder", "vision_encoder", "crf", "fusion")}
    )

    def rates(config: TrainConfig) -> dict[str, float]:
        optimizer, _ = build_optimizer(parts, config, total_steps=10)
        by_parameter = {id(p): group["initial_lr"] for group in optimizer.param_groups for p in group["params"]}
        return {name: by_parameter[id(module.weight)] for name, module in parts.items()}

    base = {"lr": 1e-3, "encoder_lr": 5e-5, "crf_lr": 1e-2}
    assert rates(TrainConfig(**base)) == {"text_encoder": 5e-5, "vision_encoder": 5e-5, "crf": 1e-2, "fusion": 1e-3}
    assert rates(TrainConfig(**base, vision_lr=3e-5))["vision_encoder"] == 3e-5
    assert resolve_config("mgips").train.vision_lr == 3e-5  # MGIPS-CL §4.3: CLIP at 3e-5, BERT at 5e-5
