import random

import pytest

from postlens.runtime.schemes import (
    SCHEMES,
    Span,
    convert,
    detect_scheme,
    is_valid,
    labels_for,
    spans_from_tags,
    tags_from_spans,
    to_scheme,
)

TYPES = ("PER", "LOC", "ORG", "MISC")


def random_spans(rng: random.Random, length: int) -> list[Span]:
    spans, position = [], 0
    while position < length:
        position += rng.randint(0, 3)
        end = min(length, position + rng.randint(1, 4))
        if position < end:
            spans.append((position, end, rng.choice(TYPES)))
        position = end
    return spans


@pytest.mark.parametrize("seed", range(200))
def test_conversion_between_any_schemes_is_lossless(seed: int) -> None:
    rng = random.Random(seed)
    length = rng.randint(0, 25)
    spans = random_spans(rng, length)
    for source in SCHEMES:
        tags = tags_from_spans(spans, length, source)
        assert is_valid(tags, source)
        assert spans_from_tags(tags, source) == spans
        for target in SCHEMES:
            converted = convert(tags, source, target)
            assert is_valid(converted, target)
            assert convert(converted, target, source) == tags


def test_scheme_tags_look_as_documented() -> None:
    bio = ["B-PER", "I-PER", "I-PER", "O", "B-LOC", "B-LOC"]
    assert to_scheme(bio, "bioes") == ["B-PER", "I-PER", "E-PER", "O", "S-LOC", "S-LOC"]
    assert to_scheme(bio, "bmes") == ["B-PER", "M-PER", "E-PER", "O", "S-LOC", "S-LOC"]


def test_other_is_read_as_misc() -> None:
    assert spans_from_tags(["B-OTHER", "I-OTHER"]) == [(0, 2, "MISC")]
    assert convert(["B-OTHER", "I-OTHER", "O"], "bio", "bio") == ["B-MISC", "I-MISC", "O"]


@pytest.mark.parametrize(
    ("tags", "scheme", "spans"),
    [
        (["O", "I-PER", "I-PER"], "bio", [(1, 3, "PER")]),  # I after O begins an entity
        (["B-PER", "I-LOC"], "bio", [(0, 1, "PER"), (1, 2, "LOC")]),  # type change begins another
        (["B-PER", "O"], "bioes", [(0, 1, "PER")]),  # never ended: still an entity
        (["O", "E-ORG"], "bioes", [(1, 2, "ORG")]),  # E without B: a one-word entity
        (["B-PER", "E-PER", "I-PER", "E-PER"], "bioes", [(0, 2, "PER"), (2, 4, "PER")]),
        (["M-LOC", "E-LOC"], "bmes", [(0, 2, "LOC")]),
    ],
)
def test_invalid_sequences_are_read_the_conlleval_way(tags: list[str], scheme: str, spans: list[Span]) -> None:
    assert not is_valid(tags, scheme)
    assert spans_from_tags(tags, scheme) == spans
    assert is_valid(convert(tags, scheme, scheme), scheme)  # repaired, same spans


def test_tags_foreign_to_the_scheme_are_rejected() -> None:
    with pytest.raises(ValueError, match="E-PER"):
        spans_from_tags(["E-PER"], "bio")
    with pytest.raises(ValueError, match="unknown tagging scheme"):
        labels_for("iob1")


def test_overlapping_spans_are_rejected() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        tags_from_spans([(0, 2, "PER"), (1, 3, "LOC")], 4)


def test_label_lists_and_scheme_detection() -> None:
    assert labels_for("bio", ["PER", "OTHER"]) == ["O", "B-PER", "I-PER", "B-MISC", "I-MISC"]
    assert len(labels_for("bioes")) == 1 + 4 * 4
    assert detect_scheme(["O", "B-PER", "I-PER"]) == "bio"
    assert detect_scheme(["S-PER"]) == "bioes"
    assert detect_scheme(["B-PER", "M-PER", "E-PER"]) == "bmes"
