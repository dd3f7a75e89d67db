"""What to fine-tune and whether to promote it: the base checkpoint, the split of the labels by id hash, the
fine-tuning sets, and base and candidate scored on the same evaluation set."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from postlens.runtime.exported import CARD_FILE
from trainer.data.examples import Example
from trainer.evaluate import EvaluationReport, build_report, predict_all
from trainer.export import next_version
from trainer.model.checkpoint import read_config
from trainer.predict import Predictor
from trainer.run_config import RunConfig, apply_overrides

EVAL_BATCH_SIZE = 32

Decision = Literal["promote", "keep_base"]


class RetrainError(Exception):
    """The run cannot go on; the message says why. Nothing is exported or committed."""


class TooFewLabels(RetrainError):
    pass


class ModelScore(BaseModel):
    checkpoint: str
    version: str  # the checkpoint's weights hash
    f1: float  # entity micro F1 on the evaluation set
    report: dict  # the evaluation report (docs/contracts.md) on the evaluation set


def resolve_base(base: Path | None, repo: Path, model_name: str) -> Path:
    """``base`` itself, or the checkpoint the newest version of ``model_name`` in ``repo`` was exported from."""
    if base is not None:
        read_config(base)  # a checkpoint, or a clear error
        return base
    try:
        return _exported_from(repo / model_name)
    except RetrainError as error:
        raise RetrainError(f"{error}; pass --base DIR (a trainer.train checkpoint)") from None


def _exported_from(model_root: Path) -> Path:
    newest = next_version(model_root) - 1
    if newest < 1:
        raise RetrainError(f"{model_root} has no versions to start from")
    card_path = model_root / str(newest) / CARD_FILE
    try:
        card = json.loads(card_path.read_text())
        source, exported_weights = Path(card["source_checkpoint"]), str(card["checkpoint_version"])
    except (OSError, ValueError, KeyError) as error:
        raise RetrainError(f"cannot tell which checkpoint version {newest} came from ({card_path}: {error})") from None
    try:
        weights = str(read_config(source)["version"])
    except FileNotFoundError:
        raise RetrainError(f"version {newest} was exported from {source}, which is no longer a checkpoint") from None
    if weights != exported_weights:
        raise RetrainError(
            f"{source} holds weights {weights}, but version {newest} was exported from {exported_weights}"
        )
    return source


def fine_tune_config(base: Path, overrides: Sequence[str]) -> RunConfig:
    """The base's recorded run configuration with ``train``/``loss`` overrides; the architecture is the base's."""
    architecture = [override for override in overrides if override.split("=", 1)[0].split(".")[0] == "model"]
    if architecture:
        raise RetrainError(
            f"{', '.join(architecture)}: the model comes from the base checkpoint; set only train.*/loss.*"
        )
    recorded = {key: value for key, value in read_config(base).items() if key != "version"}
    try:
        return RunConfig.model_validate(apply_overrides(recorded, overrides))
    except ValueError as error:
        raise RetrainError(f"--set: {error}") from None


def id_position(label_id: str) -> float:
    """Where a label id falls in [0, 1) — a hash, so the same label always lands in the same slice."""
    return int.from_bytes(hashlib.sha256(label_id.encode("utf-8")).digest()[:8], "big") / 2**64


@dataclass
class Split:
    train: list[Example]
    tune: list[Example]
    holdout: list[Example]


def split_labels(examples: Sequence[Example], holdout: float, tune: float) -> Split:
    """Held out for the base-vs-candidate comparison: ids in [0, holdout); tune: [holdout, holdout + tune); the rest
    is trained on."""
    split = Split([], [], [])
    for example in examples:
        position = id_position(example.id)
        part = split.holdout if position < holdout else split.tune if position < holdout + tune else split.train
        part.append(example)
    return split


@dataclass
class FineTuningSets:
    train: list[Example]  # new labels (+ --extra-train)
    tune: list[Example]  # early stopping and calibration; may be empty with few labels
    evaluation: list[Example]  # held-out new labels (+ --valid): base and candidate are compared on these


def fine_tuning_sets(
    labels: Sequence[Example], valid: Sequence[Example], extra: Sequence[Example], holdout: float, tune: float
) -> FineTuningSets:
    split = split_labels(labels, holdout, tune)
    if not split.train or not (split.holdout or valid):
        raise TooFewLabels(
            f"{len(labels)} labels leave {len(split.holdout)} held out and {len(split.train)} to train on; "
            "send more labels" + ("" if valid else " or pass --valid")
        )
    return FineTuningSets(train=[*split.train, *extra], tune=split.tune, evaluation=[*split.holdout, *valid])


def decide(base_f1: float, candidate_f1: float, tolerance: float) -> Decision:
    """Promote a candidate that is not worse than the base by more than ``tolerance`` (entity F1)."""
    return "promote" if candidate_f1 >= base_f1 - tolerance else "keep_base"


def score(model_dir: Path, examples: Sequence[Example]) -> ModelScore:
    predictor = Predictor.load(model_dir)
    report: EvaluationReport = build_report(examples, predict_all(predictor, examples, EVAL_BATCH_SIZE)).report
    return ModelScore(
        checkpoint=str(Path(model_dir).resolve()),
        version=str(read_config(model_dir)["version"]),
        f1=report.entity.f1,
        report=report.to_json(),
    )
