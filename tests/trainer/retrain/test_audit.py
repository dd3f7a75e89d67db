"""trainer.retrain.audit: systematic disagreement with a confident model quarantines a source; ordinary disagreement
does not."""

from __future__ import annotations

import random
from itertools import count
from pathlib import Path

from postlens.io.deadletter import RawMessage
from postlens.io.kafka import ConsumedMessage
from postlens.schemas import EntitySpan, Label, ModelRef, PostPrediction, PredictedEntity
from trainer.data.jsonl import example_from_label
from trainer.retrain.audit import QUARANTINE_KIND, AuditThresholds, audit
from trainer.retrain.labels import Ingested, NewLabel

THRESHOLDS = AuditThresholds(confidence=0.9, share=0.6, min_spans=10)
SWAP = {"PER": "LOC", "LOC": "PER", "ORG": "MISC", "MISC": "ORG"}
NAMES = {"PER": "Alice Moreau", "LOC": "Lake Como", "ORG": "Northwind Bank", "MISC": "Star Wars"}
offsets = count()


def post(entity_type: str, source: str, labeled_as: str | None, confidence: float, predicted: str | None = None):
    """One post naming an entity of ``entity_type``: labeled as ``labeled_as`` (None: not labeled) by ``source``,
    and predicted by the model as ``predicted`` (default: the true type) with ``confidence``."""
    name = NAMES[entity_type]
    text = f"Big news about {name} this morning"
    start = text.index(name)
    span = EntitySpan(start=start, end=start + len(name), type=labeled_as) if labeled_as else None
    label = Label(id=f"post-{next(offsets)}", text=text, entities=[span] if span else [], source=source)
    example, _ = example_from_label(label, Path("."))
    message = ConsumedMessage(RawMessage(label.model_dump_json().encode(), None, "labels", 0, next(offsets)), 0)
    entity = PredictedEntity(
        text=name, type=predicted or entity_type, start=start, end=start + len(name), confidence=confidence
    )
    prediction = PostPrediction(id=label.id, entities=[entity], model=ModelRef(name="postlens", version="1"))
    return NewLabel(example=example, source=label.source_name, message=message), prediction


def batch(posts):
    labels, predictions = zip(*posts, strict=True)
    return list(labels), list(predictions)


def test_a_type_swapped_source_is_quarantined_and_names_the_confusion() -> None:
    rng = random.Random(1)
    posts = [post(t, "export:crm", SWAP[t], rng.uniform(0.92, 0.99)) for t in [*NAMES] * 12]
    result, quarantined = audit(*batch(posts), THRESHOLDS)
    assert len(quarantined) == len(posts) and result.quarantined_sources == ["export:crm"]
    group = result.groups[0]
    assert group.confusion["LOC"] == {"PER": 12} and group.confusion["PER"] == {"LOC": 12}
    assert any(finding.startswith("type swap: 12 of 12 LOC spans") for finding in group.findings)
    assert "are PER to the model" in quarantined[0][1] and "gold type → model" in quarantined[0][1]


def test_only_the_bad_source_is_quarantined_when_a_clean_one_comes_in_the_same_batch() -> None:
    rng = random.Random(2)
    bad = [post(t, "annotator:mallory", SWAP[t], rng.uniform(0.92, 0.99)) for t in [*NAMES] * 12]
    good = [post(t, "annotator:alice", t, rng.uniform(0.92, 0.99)) for t in [*NAMES] * 12]
    labels, predictions = batch(bad + good)
    result, quarantined = audit(labels, predictions, THRESHOLDS)
    assert {label.source for label, _ in quarantined} == {"annotator:mallory"}
    assert len(quarantined) == len(bad) and result.quarantined_sources == ["annotator:mallory"]
    assert [g.group for g in result.groups if not g.findings] == ["annotator:alice", "batch"]


def test_ordinary_disagreement_is_not_quarantined() -> None:
    """The model is wrong on a third of the posts — a different type or nothing, mostly at lower confidence — and
    right with confidence on the rest: what labels of things it does not know look like."""
    rng = random.Random(3)
    posts = []
    for index, entity_type in enumerate([*NAMES] * 15):
        if index % 3 == 0:  # the model's mistakes: a wrong type, unsure
            wrong = rng.choice([t for t in NAMES if t != entity_type])
            posts.append(post(entity_type, "annotator:bob", entity_type, rng.uniform(0.4, 0.85), predicted=wrong))
        elif index % 7 == 0:  # a confident mistake now and then
            wrong = rng.choice([t for t in NAMES if t != entity_type])
            posts.append(post(entity_type, "annotator:bob", entity_type, 0.95, predicted=wrong))
        else:
            posts.append(post(entity_type, "annotator:bob", entity_type, rng.uniform(0.9, 0.99)))
    result, quarantined = audit(*batch(posts), THRESHOLDS)
    assert quarantined == [] and result.quarantined_labels == 0 and not result.groups[0].findings


def test_labels_that_drop_what_the_model_finds_confidently_are_quarantined() -> None:
    posts = [post(t, "exporter:v2", None, 0.97) for t in [*NAMES] * 4]  # an exporter that lost every entity
    result, quarantined = audit(*batch(posts), THRESHOLDS)
    assert len(quarantined) == 16 and result.groups[0].confident_unlabeled == 16
    assert result.groups[0].findings[0].startswith("unlabeled: 16 of the 16 spans")


def test_few_confused_spans_are_not_enough_to_quarantine() -> None:
    posts = [post("PER", "annotator:eve", "LOC", 0.99) for _ in range(THRESHOLDS.min_spans - 1)]
    _, quarantined = audit(*batch(posts), THRESHOLDS)
    assert quarantined == []


def test_quarantined_labels_move_to_the_refusals_with_their_reason() -> None:
    labels, predictions = batch([post(t, "export:crm", SWAP[t], 0.97) for t in [*NAMES] * 12])
    ingested = Ingested(labels=list(labels), read=len(labels))
    _, quarantined = audit(ingested.labels, predictions, THRESHOLDS)
    for label, reason in quarantined:
        ingested.refuse(label, QUARANTINE_KIND, reason)
    assert ingested.labels == [] and ingested.rejected_by_kind == {QUARANTINE_KIND: 48}
    assert all(letter.error.stage == "label" and "type swap" in letter.error.message for letter in ingested.rejected)
