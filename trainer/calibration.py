"""Calibration after training, on the set the run selects on (its dev slice, or valid): a temperature for the CRF
scores, so entity confidences mean what they say, and the grounding threshold (region score × image relevance) that
maximises grounding accuracy there."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from postlens.runtime.config import ModelConfig
from postlens.runtime.decode import Decoder
from postlens.schemas import PostPrediction
from trainer.data.examples import Example
from trainer.evaluate import entity_correctness, gold_grounding, gold_spans, predicted_grounding, predicted_spans
from trainer.metrics import calibration, grounding_accuracy
from trainer.predict import RawBatch

TEMPERATURES = np.geomspace(0.5, 4.0, 31)
# An ECE at or below this needs no temperature (a near-perfect calibration set carries little signal).
WELL_CALIBRATED_ECE = 0.02


def decode_all(raws: Sequence[RawBatch], decoder: Decoder) -> list[PostPrediction]:
    return [prediction for raw in raws for prediction in raw.decode(decoder)]


def fit_temperature(
    raws: Sequence[RawBatch], examples: Sequence[Example], decoder: Decoder
) -> tuple[float, float, float]:
    """The temperature with the lowest entity-confidence ECE on ``examples`` → (temperature, ECE before, after).

    1 when they are already well calibrated; among near-equal ECEs the temperature closest to 1 wins, so a
    small set does not push confidences around for nothing. The entities themselves do not depend on the
    temperature (it scales every CRF score alike), so they are found and scored against gold once; each
    temperature recomputes only their confidences.
    """
    spans = [decoder.spans(raw.emissions, raw.word_mask) for raw in raws]
    predictions = decode_all(raws, decoder)
    correct = entity_correctness([gold_spans(e) for e in examples], [predicted_spans(p) for p in predictions])

    def ece(temperature: float) -> float:
        scaled = decoder.with_calibration(temperature=temperature)
        confidences = [
            confidence
            for raw, raw_spans in zip(raws, spans, strict=True)
            for post in scaled.confidences(raw.emissions, raw.word_mask, raw_spans)
            for confidence in post
        ]
        return calibration(confidences, correct).ece if confidences else 0.0

    before = ece(1.0)
    if before <= WELL_CALIBRATED_ECE:
        return 1.0, before, before
    _, _, best = min((round(ece(float(t)), 3), abs(np.log(t)), float(t)) for t in TEMPERATURES)
    return best, before, ece(best)


def fit_grounding_threshold(
    raws: Sequence[RawBatch], examples: Sequence[Example], decoder: Decoder
) -> tuple[float, float]:
    """The evidence threshold (region score × image relevance) maximising grounding accuracy on ``examples`` →
    (threshold, accuracy). Candidates lie midway between observed evidence values, so the choice is not on a knife
    edge."""
    predictions = decode_all(raws, decoder.with_calibration(threshold=0.0))
    with_images = [i for i, example in enumerate(examples) if example.images]
    gold = [gold_grounding(examples[i]) for i in with_images]
    evidence = sorted(
        {region.score * p.image_relevance for p in predictions for entity in p.entities for region in entity.regions}
    )
    points = [0.0, *evidence, 1.0 + 1e-9]
    candidates = sorted({(low + high) / 2 for low, high in itertools.pairwise(points)} | {0.0})

    def accuracy(threshold: float) -> float:
        kept = [_drop_weak_regions(predictions[i], threshold) for i in with_images]
        return grounding_accuracy(gold, [predicted_grounding(p) for p in kept])

    scores = [accuracy(threshold) for threshold in candidates]
    best = int(np.argmax(scores))
    return float(candidates[best]), float(scores[best])


def _drop_weak_regions(prediction: PostPrediction, threshold: float) -> PostPrediction:
    entities = [
        entity.model_copy(
            update={"regions": [r for r in entity.regions if r.score * prediction.image_relevance >= threshold]}
        )
        for entity in prediction.entities
    ]
    return prediction.model_copy(update={"entities": entities})


def calibrate(
    model_config: ModelConfig, raws: Sequence[RawBatch], examples: Sequence[Example], decoder: Decoder, grounds: bool
) -> tuple[ModelConfig, dict[str, float]]:
    """Fit the confidence temperature (and, for a grounding model on box-annotated data, the region threshold) on
    ``examples`` → the model config with them recorded, and what was fitted (scores on ``examples``)."""
    temperature, ece_before, ece_after = fit_temperature(raws, examples, decoder)
    decode = model_config.decode.model_copy(update={"temperature": temperature})
    calibrated = {"temperature": temperature, "ece_before": ece_before, "ece_after": ece_after}
    if grounds:
        threshold, accuracy = fit_grounding_threshold(raws, examples, decoder.with_calibration(temperature=temperature))
        decode = decode.model_copy(update={"grounding_threshold": threshold})
        calibrated.update(grounding_threshold=threshold, grounding_accuracy=accuracy)
    return model_config.model_copy(update={"decode": decode}), calibrated
