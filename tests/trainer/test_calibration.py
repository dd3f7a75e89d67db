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


def overconfident_valid(posts: int = 120) -> tuple[list[Example], list[RawBatch], Decoder]:
    """Posts "Ann met Bob" in two batches, whose network is sure (emission margins 3–6) that "Ann" is a person,
    and in every third post "Bob" too, while the gold says so for only about 60% of them."""
    rng = np.random.default_rng(0)
    tokens = ["Ann", "met", "Bob"]
    gold = [["B-PER" if rng.random() < 0.6 else "O", "O", "B-PER" if rng.random() < 0.6 else "O"] for _ in range(posts)]
    examples = [Example.from_tokens(f"p{i}", tokens, tags) for i, tags in enumerate(gold)]
    emissions = np.zeros((posts, len(tokens), len(SCHEME.labels)))
    emissions[:, :, SCHEME.index("O")] = 6.0
    emissions[:, 0, SCHEME.index("B-PER")] = rng.uniform(9.0, 12.0, posts)
    emissions[::3, 2, SCHEME.index("B-PER")] = rng.uniform(9.0, 12.0, len(emissions[::3]))

    def batch(rows: slice) -> RawBatch:
        size = len(examples[rows])
        return RawBatch(
            texts=[example.text for example in examples[rows]],
            words=[example.words for example in examples[rows]],
            emissions=emissions[rows],
            word_mask=np.ones((size, len(tokens)), bool),
            word_region_attention=np.zeros((size, len(tokens), 0, 1)),
            image_mask=np.zeros((size, 0), bool),
            image_relevance=np.zeros(size),
            region_boxes=np.zeros((size, 0, 1, 4)),
        )

    start, transitions, end = SCHEME.allowed()
    crf = CrfParams(*(np.where(allowed, 0.0, -1e4) for allowed in (start, transitions, end)))
    # A decoder at some other temperature already: the fit does not start from it.
    decoder = Decoder(SCHEME, crf, Grounding(), ModelRef(name="postlens", version="t"), temperature=2.0)
    return examples, [batch(slice(0, posts // 2)), batch(slice(posts // 2, posts))], decoder


def report_ece(examples: list[Example], raws: list[RawBatch], decoder: Decoder, temperature: float) -> float:
    """Valid ECE as `trainer.evaluate` reports it for the decoder at this temperature."""
    return build_report(examples, decode_all(raws, decoder.with_calibration(temperature=temperature))).report.ece


def test_the_fitted_temperature_cools_an_overconfident_model_to_the_best_reported_ece() -> None:
    examples, raws, decoder = overconfident_valid()
    temperature, before, after = fit_temperature(raws, examples, decoder)

    assert temperature > 1.0 and after < before / 2
    assert before == report_ece(examples, raws, decoder, 1.0)
    assert after == report_ece(examples, raws, decoder, temperature)  # what evaluate will report for the model
    assert all(round(report_ece(examples, raws, decoder, float(t)), 3) >= round(after, 3) for t in TEMPERATURES)


def test_a_well_calibrated_model_keeps_its_confidences() -> None:
    examples, raws, decoder = overconfident_valid()
    # Every entity the network finds is a gold one, and it is all but certain of each: nothing to correct.
    found = [post_spans for raw in raws for post_spans in decoder.spans(raw.emissions, raw.word_mask)]
    gold = [
        example.model_copy(
            update={"tags": ["B-PER" if any(first == i for first, _, _ in spans) else "O" for i in range(3)]}
        )
        for example, spans in zip(examples, found, strict=True)
    ]
    sure = [RawBatch(**{**raw.__dict__, "emissions": raw.emissions * 2}) for raw in raws]
    assert fit_temperature(sure, gold, decoder)[0] == 1.0
