"""The label audit: the serving model reads the new labels before anything is trained on them.

A batch of labels can agree with itself and still be wrong — a type mapping swapped in an annotation export, an
exporter that drops a type — and a gate that compares models only on a slice of that batch passes it. Where the model
is *confident* and the labels *systematically* say otherwise, the labels are the suspect. Each source is audited
apart (one annotator's or tool's labels: a broken source must not hide among good ones, nor condemn them), then what
no source condemned is audited as one batch. Two findings quarantine (thresholds: settings ``retrain_audit_*``):

- **type swap**: at least ``share`` of a type's gold spans, and at least ``min_spans`` of them, are spans the model
  predicts — the same characters — with confidence ≥ ``confidence`` as one *other* type (catches PER↔LOC and the
  like: a mapping error turns most of a type into another);
- **unlabeled**: at least ``share`` of the spans the model predicts with confidence ≥ ``confidence``, and at least
  ``min_spans`` of them, overlap no gold span (catches an exporter that drops a type, or labels with no entities).

Ordinary disagreement does not trigger them: where the model is simply wrong its errors spread over types and sit
at lower confidence (its confidences are calibrated), far below these shares on clean labels.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from pydantic import BaseModel, Field

from postlens.failures import LabelFailure
from postlens.schemas import PostPrediction, canonical_type
from trainer.retrain.labels import NewLabel

NO_PREDICTION = "none"  # the model predicts no entity of exactly that span
QUARANTINE_KIND = LabelFailure.QUARANTINED  # the dead-letter kind of a quarantined label


class AuditThresholds(BaseModel):
    confidence: float = Field(ge=0, le=1)
    share: float = Field(gt=0, le=1)
    min_spans: int = Field(ge=1)


class GroupAudit(BaseModel):
    """One source's labels (or the rest of the batch) against the model."""

    group: str  # a source name, or "batch"
    labels: int
    gold_spans: dict[str, int]  # per gold type
    # gold type → what the model predicts on exactly that span with confidence ≥ the threshold (a type), or "none"
    # (nothing confident there)
    confusion: dict[str, dict[str, int]]
    confident_spans: int  # spans the model predicts with confidence ≥ the threshold
    confident_unlabeled: int  # ... of which no gold span overlaps
    findings: list[str] = Field(default_factory=list)  # why it is quarantined; empty: clean

    @property
    def quarantined(self) -> bool:
        return bool(self.findings)


class AuditResult(BaseModel):
    thresholds: AuditThresholds
    bypassed: bool = False  # --no-audit: recorded, so lineage shows the labels went unaudited
    groups: list[GroupAudit] = Field(default_factory=list)
    quarantined_labels: int = 0
    quarantined_sources: list[str] = Field(default_factory=list)


def audit_group(
    group: str, labels: Sequence[NewLabel], predictions: Sequence[PostPrediction], thresholds: AuditThresholds
) -> GroupAudit:
    gold_spans: Counter[str] = Counter()
    confusion: dict[str, Counter[str]] = defaultdict(Counter)
    confident_spans = confident_unlabeled = 0
    for label, prediction in zip(labels, predictions, strict=True):
        gold = {(entity.start, entity.end): entity.type for entity in label.example.entities}
        confident = {
            (entity.start, entity.end): canonical_type(entity.type)
            for entity in prediction.entities
            if entity.confidence >= thresholds.confidence
        }
        for span, gold_type in gold.items():
            gold_spans[gold_type] += 1
            confusion[gold_type][confident.get(span, NO_PREDICTION)] += 1
        for start, end in confident:
            confident_spans += 1
            confident_unlabeled += not any(start < gold_end and gold_start < end for gold_start, gold_end in gold)
    findings = []
    for gold_type, predicted in sorted(confusion.items()):
        for other, count in predicted.most_common():
            if other in (gold_type, NO_PREDICTION):
                continue
            if count >= thresholds.min_spans and count >= thresholds.share * gold_spans[gold_type]:
                findings.append(
                    f"type swap: {count} of {gold_spans[gold_type]} {gold_type} spans "
                    f"({count / gold_spans[gold_type]:.0%}) are {other} to the model with confidence "
                    f"≥ {thresholds.confidence}"
                )
    if confident_unlabeled >= thresholds.min_spans and confident_unlabeled >= thresholds.share * confident_spans:
        findings.append(
            f"unlabeled: {confident_unlabeled} of the {confident_spans} spans the model finds with confidence "
            f"≥ {thresholds.confidence} ({confident_unlabeled / confident_spans:.0%}) overlap no labeled entity"
        )
    return GroupAudit(
        group=group,
        labels=len(labels),
        gold_spans=dict(sorted(gold_spans.items())),
        confusion={gold_type: dict(predicted.most_common()) for gold_type, predicted in sorted(confusion.items())},
        confident_spans=confident_spans,
        confident_unlabeled=confident_unlabeled,
        findings=findings,
    )


def audit(
    labels: Sequence[NewLabel], predictions: Sequence[PostPrediction], thresholds: AuditThresholds
) -> tuple[AuditResult, list[tuple[NewLabel, str]]]:
    """Audit each source, then the labels of the sources that passed as one batch → the result and the labels to
    quarantine, each with the reason (the finding and the confusion behind it)."""
    by_source: dict[str, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_source[label.source].append(index)
    result = AuditResult(thresholds=thresholds)
    quarantined: list[tuple[NewLabel, str]] = []

    def check(group: str, indices: Sequence[int]) -> bool:
        finding = audit_group(group, [labels[i] for i in indices], [predictions[i] for i in indices], thresholds)
        result.groups.append(finding)
        if finding.quarantined:
            reason = f"{group}: " + "; ".join(finding.findings) + f" (gold type → model: {finding.confusion})"
            quarantined.extend((labels[i], reason) for i in indices)
        return finding.quarantined

    passed = []
    for source, indices in sorted(by_source.items()):
        if check(source, indices):
            result.quarantined_sources.append(source)
        else:
            passed.extend(indices)
    if len(by_source) > 1 and passed:
        check("batch", sorted(passed))
    result.quarantined_labels = len(quarantined)
    return result, quarantined
