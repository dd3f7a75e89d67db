"""The seed papers' strategies trained on the small synthetic set with tiny encoders: each settles from the image
what text alone cannot (ambiguous names), is not hurt by irrelevant images, and exports to ONNX with parity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures_model import SEED_STRATEGIES
from tests.trainer.test_train import evaluate, train_tiny
from trainer.evaluate import EvaluationReport
from trainer.export import PARITY_TOLERANCE, export_model

pytestmark = pytest.mark.slow

# The seed strategies need a few more epochs than `cross` before the image "clicks"; the same budget for `text`.
BUDGET = ("train.epochs=30", "train.patience=10")


@pytest.fixture(scope="module")
def text_report(synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> EvaluationReport:
    return evaluate(train_tiny(synthetic, tmp_path_factory.mktemp("text"), "text", *BUDGET), synthetic)


@pytest.fixture(scope="module", params=SEED_STRATEGIES)
def trained(request, synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, EvaluationReport]:
    model_dir = train_tiny(synthetic, tmp_path_factory.mktemp(request.param), request.param, *BUDGET)
    return model_dir, evaluate(model_dir, synthetic)


def test_the_image_settles_what_text_cannot(
    trained: tuple[Path, EvaluationReport], text_report: EvaluationReport
) -> None:
    report = trained[1]
    assert report.subsets["ambiguous"].entity.f1 >= text_report.subsets["ambiguous"].entity.f1 + 0.2
    assert report.subsets["irrelevant_image"].entity.f1 >= text_report.subsets["irrelevant_image"].entity.f1
    assert report.grounding.accuracy > text_report.grounding.accuracy


def test_exports_with_parity(trained: tuple[Path, EvaluationReport], tmp_path: Path) -> None:
    version_dir = export_model(trained[0], tmp_path / "repository")  # raises when ONNX Runtime differs
    cases = json.loads((version_dir / "model_card.json").read_text())["parity"]["cases"]
    assert {0, 1, 4} <= {case["images"] for case in cases}
    assert max(case["max_abs_error"] for case in cases) <= PARITY_TOLERANCE
