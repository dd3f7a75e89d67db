"""What to fine-tune and whether to promote it: the base checkpoint, the split of the labels by id hash, the
fine-tuning sets, and base and candidate scored on the same evaluation set."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from postlens.runtime.exported import CARD_FILE
from trainer.data.carried import sample
from trainer.data.examples import Example
from trainer.data.split import hash_position
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
    model_root = repo / model_name
    newest = newest_version(model_root)
    if newest is None:
        raise RetrainError(f"{model_root} has no versions to start from; pass --base DIR (a trainer.train checkpoint)")
    try:
        return exported_from(model_root, newest)
    except RetrainError as error:
        raise RetrainError(f"{error}; pass --base DIR (a trainer.train checkpoint)") from None


def newest_version(model_root: Path) -> int | None:
    """The newest version of a Triton model — the one it serves (version policy "latest 1") — or None."""
    newest = next_version(model_root) - 1
    return newest if newest >= 1 else None


def read_card(model_root: Path, version: int) -> dict:
    card_path = model_root / str(version) / CARD_FILE
    try:
        return json.loads(card_path.read_text())
    except (OSError, ValueError) as error:
        raise RetrainError(f"version {version} has no readable model card ({card_path}: {error})") from None


def exported_from(model_root: Path, version: int) -> Path:
    """The checkpoint ``version`` was exported from, checked to still hold the same weights."""
    card = read_card(model_root, version)
    try:
        source, exported_weights = Path(card["source_checkpoint"]), str(card["checkpoint_version"])
    except KeyError as error:
        raise RetrainError(
            f"cannot tell which checkpoint version {version} came from (its card lacks {error})"
        ) from None
    try:
        weights = str(read_config(source)["version"])
    except FileNotFoundError:
        raise RetrainError(f"version {version} was exported from {source}, which is no longer a checkpoint") from None
    if weights != exported_weights:
        raise RetrainError(
            f"{source} holds weights {weights}, but version {version} was exported from {exported_weights}"
        )
    return source


LEARNING_RATES = ("lr", "encoder_lr", "vision_lr", "crf_lr")


def fine_tune_config(base: Path, overrides: Sequence[str], lr_scale: float = 1.0) -> RunConfig:
    """The base's recorded run configuration, its learning rates times ``lr_scale``, with ``train``/``loss``
    overrides (which win); the architecture is the base's. No dev slice is carved (``train.dev_share`` 0): fine-tuning
    selects on the labels' own tune slice."""
    architecture = [override for override in overrides if override.split("=", 1)[0].split(".")[0] == "model"]
    if architecture:
        raise RetrainError(
            f"{', '.join(architecture)}: the model comes from the base checkpoint; set only train.*/loss.*"
        )
    recorded = {key: value for key, value in read_config(base).items() if key != "version"}
    train = recorded.get("train", {})
    scaled = {name: train[name] * lr_scale for name in LEARNING_RATES if train.get(name) is not None}
    try:
        train = {**train, **scaled, "dev_share": 0.0}
        return RunConfig.model_validate(apply_overrides({**recorded, "train": train}, overrides))
    except ValueError as error:
        raise RetrainError(f"--set: {error}") from None


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
        position = hash_position(example.id)
        part = split.holdout if position < holdout else split.tune if position < holdout + tune else split.train
        part.append(example)
    return split


@dataclass
class FineTuningSets:
    new: list[Example]  # new labels trained on
    extra: list[Example]  # --extra-train
    replay: list[Example]  # drawn from the base's replay sample (against forgetting)
    tune: list[Example]  # early stopping and calibration; may be empty with few labels
    evaluation: list[Example]  # held-out new labels (+ --valid): base and candidate are compared on these

    @property
    def train(self) -> list[Example]:
        return [*self.new, *self.extra, *self.replay]


def fine_tuning_sets(
    labels: Sequence[Example],
    valid: Sequence[Example],
    extra: Sequence[Example],
    holdout: float,
    tune: float,
    replay_pool: Sequence[Example] = (),
    replay_share: float = 0.0,
    seed: int = 0,
) -> FineTuningSets:
    """The split of the new labels, with ``replay_share`` of the training posts drawn from ``replay_pool``."""
    split = split_labels(labels, holdout, tune)
    if not split.train or not (split.holdout or valid):
        raise TooFewLabels(
            f"{len(labels)} labels leave {len(split.holdout)} held out and {len(split.train)} to train on; "
            "send more labels" + ("" if valid else " or pass --valid")
        )
    replay = sample(replay_pool, replay_size(len(split.train), replay_share, len(replay_pool)), seed)
    return FineTuningSets(
        new=split.train, extra=list(extra), replay=replay, tune=split.tune, evaluation=[*split.holdout, *valid]
    )


def decide(gates: Sequence[GateResult]) -> Decision:
    """Promote a candidate only when it passes every gate."""
    return "promote" if all(gate.passed for gate in gates) else "keep_base"


class GateResult(BaseModel):
    """One comparison of base and candidate on one evaluation set."""

    gate: Literal["new_labels", "reference"]
    posts: int
    base_f1: float
    candidate_f1: float
    base_per_type: dict[str, float]
    candidate_per_type: dict[str, float]
    tolerance: float  # overall entity F1 the candidate may lose
    type_margin: float | None = None  # per-type entity F1 it may lose (reference gate)
    gated_types: list[str] = Field(default_factory=list)  # types with enough gold spans to be gated on their own
    passed: bool
    reasons: list[str] = Field(default_factory=list)  # why it did not pass, naming the gate (and the type)


def _per_type_f1(score: ModelScore) -> dict[str, float]:
    return {name: scores["f1"] for name, scores in score.report["entity"]["per_type"].items()}


def new_label_gate(base: ModelScore, candidate: ModelScore, posts: int, tolerance: float) -> GateResult:
    """(a) Not worse than the base on the held-out new labels (+ ``--valid``) by more than ``tolerance``."""
    reasons = []
    if candidate.f1 < base.f1 - tolerance:
        reasons.append(
            f"new-labels gate: candidate entity F1 {candidate.f1:.3f} < base {base.f1:.3f} − tolerance {tolerance}"
        )
    return GateResult(
        gate="new_labels", posts=posts, base_f1=base.f1, candidate_f1=candidate.f1,
        base_per_type=_per_type_f1(base), candidate_per_type=_per_type_f1(candidate), tolerance=tolerance,
        passed=not reasons, reasons=reasons,
    )  # fmt: skip


def reference_gate(
    base: ModelScore,
    candidate: ModelScore,
    reference: Sequence[Example],
    tolerance: float,
    type_margin: float,
    min_type_spans: int,
) -> GateResult:
    """(b) Not worse than the base on the reference set by more than ``tolerance`` overall, nor by more than
    ``type_margin`` on any type with at least ``min_type_spans`` gold spans there (fewer make a type's F1 too noisy
    to gate on alone; its errors still count overall)."""
    support = Counter(entity.type for example in reference for entity in example.entities)
    gated = sorted(name for name, count in support.items() if count >= min_type_spans)
    base_types, candidate_types = _per_type_f1(base), _per_type_f1(candidate)
    reasons = []
    if candidate.f1 < base.f1 - tolerance:
        reasons.append(
            f"reference gate: candidate entity F1 {candidate.f1:.3f} < base {base.f1:.3f} − tolerance {tolerance}"
        )
    for name in gated:
        before, after = base_types.get(name, 0.0), candidate_types.get(name, 0.0)
        if after < before - type_margin:
            reasons.append(
                f"reference gate: type {name} falls from F1 {before:.3f} to {after:.3f} "
                f"(more than the margin {type_margin}; {support[name]} gold spans)"
            )
    return GateResult(
        gate="reference", posts=len(reference), base_f1=base.f1, candidate_f1=candidate.f1,
        base_per_type=base_types, candidate_per_type=candidate_types, tolerance=tolerance, type_margin=type_margin,
        gated_types=gated, passed=not reasons, reasons=reasons,
    )  # fmt: skip


def replay_size(new_posts: int, share: float, available: int) -> int:
    """How many replay posts make ``share`` of a fine-tuning set with ``new_posts`` new ones (at most ``available``)."""
    return min(available, round(new_posts * share / (1 - share))) if share > 0 else 0


def score(model_dir: Path, examples: Sequence[Example]) -> ModelScore:
    predictor = Predictor.load(model_dir)
    report: EvaluationReport = build_report(examples, predict_all(predictor, examples, EVAL_BATCH_SIZE)).report
    return ModelScore(
        checkpoint=str(Path(model_dir).resolve()),
        version=str(read_config(model_dir)["version"]),
        f1=report.entity.f1,
        report=report.to_json(),
    )
