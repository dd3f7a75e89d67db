import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from postlens.schemas import ModelRef, Post, PostPrediction, PredictedEntity, Region
from trainer.data.examples import Example
from trainer.data.jsonl import read_jsonl
from trainer.data.load import load_examples
from trainer.evaluate import build_report, main, summary_table, write_plots
from trainer.synth import generate

MODEL = ModelRef(name="test", version="0")


def oracle(example: Example, confidence: float = 0.9, wrong_type: bool = False) -> PostPrediction:
    """The gold answer as a prediction (optionally with every type wrong)."""
    entities = []
    for index, entity in enumerate(example.entities):
        regions = [Region(image_index=b.image_index, box=b.box, score=0.8) for b in example.boxes if b.entity == index]
        entity_type = (
            {"PER": "LOC", "LOC": "ORG", "ORG": "PER", "MISC": "PER"}[entity.type] if wrong_type else entity.type
        )
        entities.append(
            PredictedEntity(
                text=example.text[entity.start : entity.end],
                type=entity_type,
                start=entity.start,
                end=entity.end,
                confidence=confidence,
                regions=regions,
            )
        )
    return PostPrediction(id=example.id, entities=entities, model=MODEL)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, 200, seed=11)
    return out / "test.jsonl"


def test_perfect_predictions_score_perfectly(synthetic: Path) -> None:
    examples, _ = read_jsonl(synthetic)
    evaluation = build_report(examples, [oracle(e) for e in examples], embeddings=(np.eye(20), np.eye(20)))
    report = evaluation.report.to_json()
    assert report["n_posts"] == len(examples) == 30
    assert report["entity"]["f1"] == 1.0 and report["token"]["f1"] == 1.0
    assert report["grounding"]["accuracy"] == 1.0
    assert report["alignment"] == {"recall@1": 1.0, "recall@5": 1.0}
    assert report["ece"] == pytest.approx(0.1)  # always right at 0.9 confidence
    assert set(report["subsets"]) == {"ambiguous", "irrelevant_image", "multi_image", "no_image"}
    assert "grounding" not in report["subsets"]["no_image"] and report["subsets"]["ambiguous"]["entity"]["f1"] == 1.0
    assert set(report["entity"]["per_type"]) <= {"PER", "LOC", "ORG", "MISC"}


def test_wrong_types_and_lost_regions_show_in_entities_grounding_and_confusion(synthetic: Path) -> None:
    examples, _ = read_jsonl(synthetic)
    predictions = [oracle(e, wrong_type="ambiguous" in e.subsets) for e in examples]
    for prediction, example in zip(predictions, examples, strict=True):
        if "multi_image" in example.subsets:
            for entity in prediction.entities:
                entity.regions = []
    report = build_report(examples, predictions).report
    assert report.subsets["ambiguous"].entity.f1 == 0.0
    assert report.subsets["irrelevant_image"].entity.f1 == 1.0
    assert report.subsets["multi_image"].grounding.accuracy < 0.5  # depicted names lost their regions
    assert report.subsets["irrelevant_image"].grounding.accuracy == 1.0  # "no region" on both sides
    assert 0 < report.entity.f1 < 1 and report.alignment is None
    confusion = build_report(examples, predictions).confusion
    off_diagonal = sum(row[j] for i, row in enumerate(confusion.counts) for j in range(len(row)) if i != j)
    assert off_diagonal == sum(len(e.entities) for e in examples if "ambiguous" in e.subsets)


def test_text_only_data_has_no_grounding_alignment_or_subsets(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("IMGID:1\nJordan\tB-PER\nrocks\tO\n\nIMGID:2\nParis\tB-LOC\n", encoding="utf-8")
    examples = load_examples(tmp_path / "t.txt")
    predictions = [oracle(examples[0]), PostPrediction(id="2", model=MODEL)]
    report = build_report(examples, predictions).report.to_json()
    assert set(report) == {"n_posts", "entity", "token", "ece"}
    assert report["entity"]["recall"] == 0.5 and report["entity"]["precision"] == 1.0


def test_mismatched_or_unlabeled_inputs_are_refused(synthetic: Path) -> None:
    examples, _ = read_jsonl(synthetic)
    with pytest.raises(ValueError, match="30 examples but 29"):
        build_report(examples, [oracle(e) for e in examples[1:]])
    with pytest.raises(ValueError, match="in the place of"):
        build_report(examples[:2], [oracle(examples[1]), oracle(examples[0])])
    unlabeled = Example(id="u", text="hi", words=[], tags=None)
    with pytest.raises(ValueError, match="no labels"):
        build_report([unlabeled], [PostPrediction(id="u", model=MODEL)])


def test_plots_and_summary(synthetic: Path, tmp_path: Path) -> None:
    examples, _ = read_jsonl(synthetic)
    predictions = [oracle(e, confidence=0.7, wrong_type=i % 3 == 0) for i, e in enumerate(examples)]
    evaluation = build_report(examples, predictions)
    written = write_plots(evaluation, examples, predictions, tmp_path / "plots")
    assert [p.name for p in written] == ["confusion.png", "reliability.png", "grounding.png"]
    for path in written:
        with Image.open(path) as picture:
            assert picture.width > 300
    table = summary_table(evaluation.report)
    assert "ambiguous" in table and "grounding" in table and "ECE" in table


def test_cli_writes_the_report_json(synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    gold = {e.id: e for e in read_jsonl(synthetic)[0]}

    class OraclePredictor:  # stands in for the trained model: answers from the gold labels
        @classmethod
        def load(cls, model_dir: Path) -> "OraclePredictor":
            return cls()

        def predict(self, posts: list[Post], images=None) -> list[PostPrediction]:
            return [oracle(gold[post.id]) for post in posts]

        def embed(self, posts: list[Post], images=None) -> tuple[np.ndarray, np.ndarray]:
            rows = np.eye(len(gold))[[list(gold).index(post.id) for post in posts]]
            return rows, rows

    monkeypatch.setitem(sys.modules, "trainer.predict", types.SimpleNamespace(Predictor=OraclePredictor))
    main(
        [
            "--model",
            str(tmp_path),
            "--data",
            str(synthetic),
            "--json",
            str(tmp_path / "m.json"),
            "--plots",
            str(tmp_path / "p"),
            "--batch-size",
            "7",
        ]
    )
    report = json.loads((tmp_path / "m.json").read_text())
    assert set(report) == {"n_posts", "entity", "token", "grounding", "alignment", "ece", "subsets"}
    assert report["entity"]["f1"] == 1.0 and report["alignment"] == {"recall@1": 1.0, "recall@5": 1.0}
    assert "entity P 1.000" in capsys.readouterr().out
    assert (tmp_path / "p" / "grounding.png").is_file()
