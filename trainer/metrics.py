"""Evaluation metrics (the report: docs/contracts.md), NumPy only. Each takes plain per-post span lists so training
and evaluation share it.

Definitions:

- **Entity P/R/F1** — micro over all posts, an entity counts when its start, end and type equal a gold entity's
  (CoNLL/seqeval convention; from tags, invalid sequences are read as conlleval does, see
  :mod:`postlens.runtime.schemes`). Per type the same, restricted to one type.
- **Token F1** — over words: a word is labelled with the type of the entity covering it (B/I prefixes ignored)
  or nothing; precision = words whose predicted type equals the gold type / words with a predicted type,
  recall = the same / words with a gold type. It gives partial credit to half-found entities.
- **Grounding accuracy** — over gold entities in posts with at least one image: a gold entity counts when a
  predicted entity has its exact span and type *and* the region matches — the prediction's best region is in the
  same image as one of the entity's gold boxes with IoU ≥ 0.5, or neither has a region. Missed or mistyped gold
  entities count as wrong; spurious predictions are left to entity precision.
- **Alignment recall@k** — retrieval within the set: post i's text embedding should rank post i's image embedding
  among the top k by cosine similarity, and vice versa; the two directions are averaged. Ties count against.
- **ECE** — over predicted entities: confidence vs. "exactly matches a gold span and type", 15 equal-width bins
  ``[b/15, (b+1)/15)`` (the last also holds confidence 1);
  ECE = Σ_bins (n_bin / n) · |accuracy_bin − mean confidence_bin|.
- **Type confusion** — gold type × predicted type for entities with the same span; a ``O`` column counts gold
  entities whose span was not predicted (missed), a ``O`` row predicted spans that are not gold (spurious).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel

from postlens.runtime.schemes import OUTSIDE, Scheme, Span, spans_from_tags

# (image index, [x0, y0, x1, y1] normalized)
ImageBox = tuple[int, tuple[float, float, float, float]]
# An entity with its regions: every gold box of a gold entity, or a prediction's best region (none = "no region").
GroundedSpan = tuple[Span, tuple[ImageBox, ...]]
CALIBRATION_BINS = 15
GROUNDING_IOU = 0.5


class PRF(BaseModel):
    precision: float
    recall: float
    f1: float


class EntityScores(PRF):
    per_type: dict[str, PRF]


def prf(true_positives: int, predicted: int, gold: int) -> PRF:
    """Precision, recall and F1 with the convention that an empty denominator gives 0."""
    precision = true_positives / predicted if predicted else 0.0
    recall = true_positives / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PRF(precision=precision, recall=recall, f1=f1)


def entity_scores(gold: Sequence[Sequence[Span]], predicted: Sequence[Sequence[Span]]) -> EntityScores:
    """Exact-match entity scores, micro over posts and per type; spans are ``(start, end, type)`` per post."""
    _same_length(gold, predicted)
    hits: Counter[str] = Counter()
    n_gold: Counter[str] = Counter()
    n_predicted: Counter[str] = Counter()
    for gold_spans, predicted_spans in zip(gold, predicted, strict=True):
        gold_set, predicted_set = set(gold_spans), set(predicted_spans)
        n_gold.update(span[2] for span in gold_set)
        n_predicted.update(span[2] for span in predicted_set)
        hits.update(span[2] for span in gold_set & predicted_set)
    overall = prf(sum(hits.values()), sum(n_predicted.values()), sum(n_gold.values()))
    per_type = {t: prf(hits[t], n_predicted[t], n_gold[t]) for t in sorted(n_gold.keys() | n_predicted.keys())}
    return EntityScores(**overall.model_dump(), per_type=per_type)


def entity_scores_from_tags(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], scheme: Scheme = "bio"
) -> EntityScores:
    return entity_scores(
        [spans_from_tags(tags, scheme) for tags in gold], [spans_from_tags(tags, scheme) for tags in predicted]
    )


def token_f1(gold: Sequence[Sequence[Span]], predicted: Sequence[Sequence[Span]]) -> PRF:
    """Word-level scores; spans here must be word-indexed ``(first_word, end_word, type)``."""
    _same_length(gold, predicted)

    def word_types(spans: Sequence[Span]) -> dict[int, str]:
        return {index: entity_type for start, end, entity_type in spans for index in range(start, end)}

    hits = n_gold = n_predicted = 0
    for gold_spans, predicted_spans in zip(gold, predicted, strict=True):
        gold_words, predicted_words = word_types(gold_spans), word_types(predicted_spans)
        n_gold += len(gold_words)
        n_predicted += len(predicted_words)
        hits += sum(predicted_words.get(index) == entity_type for index, entity_type in gold_words.items())
    return prf(hits, n_predicted, n_gold)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two [x0, y0, x1, y1] boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    intersection = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    return intersection / union if union > 0 else 0.0


def region_matches(gold_regions: Sequence[ImageBox], predicted_regions: Sequence[ImageBox]) -> bool:
    """Both "no region", or the best predicted region overlaps a gold box of the same image with IoU ≥ 0.5."""
    if not gold_regions or not predicted_regions:
        return not gold_regions and not predicted_regions
    image, box = predicted_regions[0]
    return any(image == gold_image and iou(box, gold_box) >= GROUNDING_IOU for gold_image, gold_box in gold_regions)


def grounding_accuracy(gold: Sequence[Sequence[GroundedSpan]], predicted: Sequence[Sequence[GroundedSpan]]) -> float:
    """Share of gold entities found with the right span, type and region (see the module docstring)."""
    _same_length(gold, predicted)
    correct = total = 0
    for gold_entities, predicted_entities in zip(gold, predicted, strict=True):
        regions_by_span = dict(predicted_entities)
        for span, gold_regions in gold_entities:
            total += 1
            correct += span in regions_by_span and region_matches(gold_regions, regions_by_span[span])
    return correct / total if total else 0.0


def retrieval_recall(
    text_embeddings: np.ndarray, image_embeddings: np.ndarray, ks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """Recall@k of text→image and image→text retrieval (row i of each matrix is one pair), averaged."""
    if text_embeddings.shape != image_embeddings.shape or text_embeddings.ndim != 2:
        raise ValueError(
            f"need two [n, d] matrices of one shape, got {text_embeddings.shape} and {image_embeddings.shape}"
        )

    def normalized(matrix: np.ndarray) -> np.ndarray:
        matrix = matrix.astype(np.float64)
        return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)

    similarity = normalized(text_embeddings) @ normalized(image_embeddings).T
    true_scores = np.diag(similarity)
    # Rank of the true partner = how many other candidates score at least as high (ties count against).
    others = ~np.eye(len(similarity), dtype=bool)
    text_to_image = ((similarity >= true_scores[:, None]) & others).sum(axis=1)
    image_to_text = ((similarity >= true_scores[None, :]) & others).sum(axis=0)
    return {k: float(((text_to_image < k).mean() + (image_to_text < k).mean()) / 2) for k in ks}


class CalibrationBin(BaseModel):
    low: float
    high: float
    count: int
    accuracy: float | None  # None for an empty bin
    confidence: float | None


class Calibration(BaseModel):
    ece: float
    bins: list[CalibrationBin]


def calibration(confidences: Sequence[float], correct: Sequence[bool], n_bins: int = CALIBRATION_BINS) -> Calibration:
    """Expected calibration error and the reliability-diagram data (equal-width bins over [0, 1])."""
    confidence = np.asarray(confidences, dtype=np.float64)
    outcome = np.asarray(correct, dtype=np.float64)
    if confidence.shape != outcome.shape:
        raise ValueError(f"{confidence.size} confidences but {outcome.size} outcomes")
    # Bin b holds [b/n, (b+1)/n); confidence 1 goes to the last bin.
    index = np.clip(np.floor(confidence * n_bins).astype(int), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        members = index == b
        count = int(members.sum())
        accuracy = mean_confidence = None
        if count:
            accuracy, mean_confidence = float(outcome[members].mean()), float(confidence[members].mean())
            ece += count / confidence.size * abs(accuracy - mean_confidence)
        bins.append(
            CalibrationBin(
                low=b / n_bins, high=(b + 1) / n_bins, count=count, accuracy=accuracy, confidence=mean_confidence
            )
        )
    return Calibration(ece=ece, bins=bins)


class Confusion(BaseModel):
    labels: list[str]  # entity types, then OUTSIDE ("no entity with this span")
    counts: list[list[int]]  # counts[gold label][predicted label]


def type_confusion(
    gold: Sequence[Sequence[Span]], predicted: Sequence[Sequence[Span]], types: Sequence[str]
) -> Confusion:
    _same_length(gold, predicted)
    labels = [*types, OUTSIDE]
    position = {label: i for i, label in enumerate(labels)}
    counts = np.zeros((len(labels), len(labels)), dtype=int)
    for gold_spans, predicted_spans in zip(gold, predicted, strict=True):
        gold_types = {(start, end): entity_type for start, end, entity_type in gold_spans}
        predicted_types = {(start, end): entity_type for start, end, entity_type in predicted_spans}
        for extent in gold_types.keys() | predicted_types.keys():
            gold_label = gold_types.get(extent, OUTSIDE)
            predicted_label = predicted_types.get(extent, OUTSIDE)
            counts[position[gold_label], position[predicted_label]] += 1
    return Confusion(labels=labels, counts=counts.tolist())


def _same_length(gold: Sequence, predicted: Sequence) -> None:
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold posts but {len(predicted)} predicted")
