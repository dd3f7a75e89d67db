"""Calibration on valid: the fitted temperature makes an over-confident model's entity confidences honest."""

from __future__ import annotations

import numpy as np

from postlens.runtime.decode import CrfParams, Decoder, Grounding, TagScheme
from postlens.schemas import ModelRef
from trainer.calibration import TEMPERATURES, decode_all, fit_temperature
from trainer.data.examples import Example
from trainer.evaluate import build_report
from trainer.predict import RawBatch

SCHEME = TagScheme("bio")


def overconfident_valid(posts: int = 120) -> tuple[list[Example], RawBatch, Decoder]:
    """Posts "Ann met Bob" whose network is sure (emission margins 3–6) that "Ann" is a person, while the gold
    says so for only about 60% of them."""
    rng = np.random.default_rng(0)
    tokens = ["Ann", "met", "Bob"]
    examples = [
        Example.from_tokens(f"p{i}", tokens, ["B-PER" if rng.random() < 0.6 else "O", "O", "O"]) for i in range(posts)
    ]
    emissions = np.zeros((posts, len(tokens), len(SCHEME.labels)))
    emissions[:, 0, SCHEME.index("B-PER")] = rng.uniform(3.0, 6.0, posts)
    emissions[:, 1:, SCHEME.index("O")] = 6.0
    raw = RawBatch(
        texts=[example.text for example in examples],
        words=[example.words for example in examples],
        emissions=emissions,
        word_mask=np.ones((posts, len(tokens)), bool),
        word_region_attention=np.zeros((posts, len(tokens), 0, 1)),
        image_mask=np.zeros((posts, 0), bool),
        image_relevance=np.zeros(posts),
        region_boxes=np.zeros((posts, 0, 1, 4)),
    )
    start, transitions, end = SCHEME.allowed()
    crf = CrfParams(*(np.where(allowed, 0.0, -1e4) for allowed in (start, transitions, end)))
    return examples, raw, Decoder(SCHEME, crf, Grounding(), ModelRef(name="postlens", version="t"))


def report_ece(examples: list[Example], raw: RawBatch, decoder: Decoder, temperature: float) -> float:
    """Valid ECE as `trainer.evaluate` reports it for the decoder at this temperature."""
    return build_report(examples, decode_all([raw], decoder.with_calibration(temperature=temperature))).report.ece


def test_the_fitted_temperature_cools_an_overconfident_model_to_the_best_reported_ece() -> None:
    examples, raw, decoder = overconfident_valid()
    temperature, before, after = fit_temperature([raw], examples, decoder)

    assert temperature > 1.0 and after < before / 2
    assert before == report_ece(examples, raw, decoder, 1.0)
    assert after == report_ece(examples, raw, decoder, temperature)  # what evaluate will report for the model
    assert all(round(report_ece(examples, raw, decoder, float(t)), 3) >= round(after, 3) for t in TEMPERATURES)


def test_a_well_calibrated_model_keeps_its_confidences() -> None:
    examples, raw, decoder = overconfident_valid()
    # Every "Ann" is a person in the gold, and the network is all but certain of it: nothing to correct.
    gold = [example.model_copy(update={"tags": ["B-PER", "O", "O"]}) for example in examples]
    emissions = raw.emissions.copy()
    emissions[:, 0, SCHEME.index("B-PER")] = 12.0
    sure = RawBatch(**{**raw.__dict__, "emissions": emissions})
    assert fit_temperature([sure], gold, decoder)[0] == 1.0
