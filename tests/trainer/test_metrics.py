import random

import numpy as np
import pytest
from seqeval.metrics import classification_report
from seqeval.scheme import IOB2

from postlens.runtime.schemes import convert
from trainer.metrics import (
    calibration,
    entity_scores,
    entity_scores_from_tags,
    grounding_accuracy,
    iou,
    region_matches,
    retrieval_recall,
    token_f1,
    type_confusion,
)

TWITTER_TYPES = ("PER", "LOC", "ORG", "OTHER")  # Twitter-2015 spelling; scored as MISC


def random_any_tags(rng: random.Random, length: int) -> list[str]:
    """Any BIO tags of the Twitter set, including invalid ones (I- after O or after another type)."""
    labels = ["O", "O", "O"] + [f"{p}-{t}" for t in TWITTER_TYPES for p in "BI"]
    return [rng.choice(labels) for _ in range(length)]


def random_valid_tags(rng: random.Random, length: int) -> list[str]:
    repaired = convert(random_any_tags(rng, length), "bio", "bio")  # valid IOB2, same spans
    return [tag.replace("MISC", "OTHER") for tag in repaired]


def seqeval_scores(gold, predicted, **mode) -> dict:
    report = classification_report(gold, predicted, output_dict=True, zero_division=0, **mode)
    return {("MISC" if key == "OTHER" else key): value for key, value in report.items()}


def assert_agrees(ours, theirs: dict) -> None:
    assert ours.precision == pytest.approx(theirs["micro avg"]["precision"])
    assert ours.recall == pytest.approx(theirs["micro avg"]["recall"])
    assert ours.f1 == pytest.approx(theirs["micro avg"]["f1-score"])
    for entity_type, scores in ours.per_type.items():
        if entity_type in theirs:  # seqeval lists only types present in gold
            assert scores.precision == pytest.approx(theirs[entity_type]["precision"])
            assert scores.recall == pytest.approx(theirs[entity_type]["recall"])
            assert scores.f1 == pytest.approx(theirs[entity_type]["f1-score"])


@pytest.mark.parametrize("seed", range(30))
def test_entity_scores_agree_with_seqeval_strict_iob2(seed: int) -> None:
    rng = random.Random(seed)
    gold = [random_valid_tags(rng, rng.randint(1, 20)) for _ in range(25)]
    # Predictions: the gold with some posts re-drawn, so there are hits, misses and spurious entities.
    predicted = [tags if rng.random() < 0.4 else random_valid_tags(rng, len(tags)) for tags in gold]
    assert_agrees(entity_scores_from_tags(gold, predicted), seqeval_scores(gold, predicted, mode="strict", scheme=IOB2))


@pytest.mark.parametrize("seed", range(30))
def test_invalid_sequences_score_like_conlleval(seed: int) -> None:
    rng = random.Random(seed)
    gold = [random_any_tags(rng, rng.randint(1, 15)) for _ in range(25)]
    predicted = [tags if rng.random() < 0.4 else random_any_tags(rng, len(tags)) for tags in gold]
    # seqeval's default mode is its port of conlleval
    assert_agrees(entity_scores_from_tags(gold, predicted), seqeval_scores(gold, predicted))


def test_twitter_fixture_against_seqeval_strict() -> None:
    gold = [
        ["O", "B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC"],
        ["B-OTHER", "I-OTHER", "O", "B-ORG", "O"],
        ["O", "O", "O"],
    ]
    predicted = [
        ["O", "B-PER", "I-PER", "O", "O", "B-LOC", "O"],  # LOC too short
        ["B-OTHER", "I-OTHER", "O", "B-PER", "O"],  # ORG typed as PER
        ["B-ORG", "O", "O"],  # spurious
    ]
    scores = entity_scores_from_tags(gold, predicted)
    assert (scores.precision, scores.recall) == (pytest.approx(2 / 5), pytest.approx(2 / 4))
    assert scores.per_type["MISC"].f1 == 1.0 and scores.per_type["LOC"].f1 == 0.0
    assert_agrees(scores, seqeval_scores(gold, predicted, mode="strict", scheme=IOB2))


def test_empty_predictions_give_zero_not_an_error() -> None:
    scores = entity_scores([[(0, 1, "PER")]], [[]])
    assert (scores.precision, scores.recall, scores.f1) == (0.0, 0.0, 0.0)


def test_token_f1_gives_partial_credit_by_word_and_type() -> None:
    gold = [[(0, 2, "PER"), (5, 6, "ORG")]]
    predicted = [[(1, 2, "PER"), (3, 4, "LOC"), (5, 6, "LOC")]]
    scores = token_f1(gold, predicted)  # hits: word 1; predicted words 3; gold words 3
    assert (scores.precision, scores.recall) == (pytest.approx(1 / 3), pytest.approx(1 / 3))


def test_ece_on_constructed_cases() -> None:
    assert calibration([0.9] * 10, [True] * 9 + [False]).ece == pytest.approx(0.0, abs=1e-12)
    assert calibration([1.0] * 5, [False] * 5).ece == pytest.approx(1.0)
    # Two bins of four: |0.5 - 0.25| and |1.0 - 0.95|, each weighted one half.
    mixed = calibration([0.25] * 4 + [0.95] * 4, [True, True, False, False] + [True] * 4)
    assert mixed.ece == pytest.approx(0.15)
    assert len(mixed.bins) == 15 and sum(b.count for b in mixed.bins) == 8
    occupied = [b for b in mixed.bins if b.count]
    assert (occupied[0].low <= 0.25 < occupied[0].high, occupied[0].accuracy) == (True, 0.5)
    assert occupied[1].high == pytest.approx(1.0) and occupied[1].confidence == pytest.approx(0.95)


def test_iou_and_the_region_rules() -> None:
    assert iou((0, 0, 0.5, 0.5), (0, 0, 0.5, 0.5)) == pytest.approx(1.0)
    assert iou((0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1)) == 0.0
    assert iou((0, 0, 0.5, 1), (0.25, 0, 0.75, 1)) == pytest.approx(1 / 3)
    box = (0.0, 0.0, 0.5, 0.5)
    half_overlapping = (0.0, 0.0, 0.5, 1.0)  # IoU exactly 0.5 counts
    assert region_matches([(0, box)], [(0, half_overlapping)])
    assert not region_matches([(0, box)], [(1, box)])  # right box, wrong image
    assert region_matches([(0, box)], [(0, (0.0, 0.0, 0.5, 0.26))])  # IoU 0.52
    assert not region_matches([(0, box)], [(0, (0.0, 0.0, 0.5, 0.24))])  # IoU 0.48
    assert region_matches([], [])  # both "no region"
    assert not region_matches([(0, box)], [])
    assert not region_matches([], [(0, box)])
    assert region_matches([(0, (0.5, 0.5, 1, 1)), (2, box)], [(2, box)])  # any of the entity's gold boxes


def test_grounding_counts_missed_and_mistyped_gold_as_wrong() -> None:
    box = (0.0, 0.0, 0.5, 0.5)
    gold = [[((0, 1, "PER"), ((0, box),)), ((3, 4, "LOC"), ()), ((6, 7, "ORG"), ((0, box),)), ((8, 9, "ORG"), ())]]
    predicted = [
        [
            ((0, 1, "PER"), ((0, box),)),  # right
            ((3, 4, "LOC"), ()),  # right: both no region
            ((6, 7, "PER"), ((0, box),)),  # wrong type
            ((11, 12, "LOC"), ((0, box),)),  # spurious: not counted
        ]
    ]  # (8, 9, ORG) missed
    assert grounding_accuracy(gold, predicted) == pytest.approx(2 / 4)


def test_retrieval_recall_on_constructed_embeddings() -> None:
    text = np.eye(4)
    assert retrieval_recall(text, text * 3.0) == {1: 1.0, 5: 1.0}  # scale does not matter (cosine)
    # Posts 2 and 3 have their images mostly swapped: each ranks its true partner second.
    swapped = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0.1, 0.9], [0, 0, 0.9, 0.1]])
    assert retrieval_recall(text, swapped, ks=(1, 2)) == {1: 0.5, 2: 1.0}
    constant = np.ones((10, 3))
    assert retrieval_recall(constant, constant) == {1: 0.0, 5: 0.0}  # ties count against
    rng = np.random.default_rng(0)
    noisy = rng.normal(size=(50, 16))
    recall = retrieval_recall(noisy, noisy + rng.normal(scale=0.3, size=noisy.shape))
    assert recall[1] > 0.9 and recall[5] >= recall[1]
    with pytest.raises(ValueError, match="shape"):
        retrieval_recall(np.ones((3, 2)), np.ones((4, 2)))


def test_type_confusion_counts_same_span_types_missed_and_spurious() -> None:
    gold = [[(0, 1, "PER"), (2, 3, "LOC"), (5, 6, "ORG")]]
    predicted = [[(0, 1, "PER"), (2, 3, "ORG"), (7, 8, "MISC")]]
    confusion = type_confusion(gold, predicted, ["PER", "LOC", "ORG", "MISC"])
    cell = {
        (g, p): confusion.counts[i][j] for i, g in enumerate(confusion.labels) for j, p in enumerate(confusion.labels)
    }
    assert {key: n for key, n in cell.items() if n} == {
        ("PER", "PER"): 1,
        ("LOC", "ORG"): 1,
        ("ORG", "O"): 1,
        ("O", "MISC"): 1,
    }
