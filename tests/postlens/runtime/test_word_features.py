"""Word-shape classes and character ids: what the network gets back of the casing that the uncased tokenizer drops."""

from __future__ import annotations

import numpy as np
import pytest

from postlens.runtime.config import WordFeaturesConfig
from postlens.runtime.word_features import WORD_SHAPES, char_ids, encode_word_features, feature_input_names, word_shape
from postlens.runtime.words import word_tokenize


@pytest.mark.parametrize(
    ("word", "shape"),
    [
        ("football", "lower"),
        ("Football", "title"),
        ("I", "title"),
        ("NFL", "upper"),
        ("iPhone", "mixed"),
        ("McDonald", "mixed"),
        ("2015", "number"),
        ("3.5", "number"),
        ("3rd", "alphanumeric"),
        ("...", "punctuation"),
        ('"', "punctuation"),
        ("@nytimes", "mention"),
        ("#RedSox", "hashtag"),
        ("https://t.co/abc", "url"),
        ("WWW.Example.com", "url"),  # as the word tokenizer, case-blind
        ("🎉", "emoji"),
        ("🇫🇷", "emoji"),
        ("東京", "uncased"),
        ("Zürich", "title"),
    ],
)
def test_word_shapes(word: str, shape: str) -> None:
    assert WORD_SHAPES[word_shape(word)] == shape


def test_char_ids_are_bounded_deterministic_and_keep_both_ends() -> None:
    buckets = 300
    words = ["Obama", "Zürich", "東京🎉", "Supercalifragilistic"]
    for word in words:
        ids = char_ids(word, 8, buckets)
        assert ids == char_ids(word, 8, buckets)
        assert len(ids) == min(len(word), 8) and all(1 <= i < buckets for i in ids)
    assert char_ids("Obama", 8, buckets) == [ord(c) for c in "Obama"]  # cased: "O" and "o" differ
    assert char_ids("Supercalifragilistic", 8, buckets) == char_ids("Supeistic", 8, buckets)[:4] + char_ids(
        "stic", 8, buckets
    )


def test_encoded_features_are_padded_to_the_word_width() -> None:
    config = WordFeaturesConfig(shape=True, chars=True, max_chars=6)
    words = [word_tokenize("Obama visits NYC"), word_tokenize("hi")]
    features = encode_word_features(words, 4, config)
    assert set(features) == set(feature_input_names(config)) == {"word_shape", "word_chars"}
    assert features["word_shape"].shape == (2, 4) and features["word_chars"].shape == (2, 4, 6)
    assert [WORD_SHAPES[i] for i in features["word_shape"][0]] == ["title", "lower", "upper", "padding"]
    assert (features["word_shape"][1, 1:] == 0).all() and (features["word_chars"][1, 1:] == 0).all()
    np.testing.assert_array_equal(features["word_chars"][1, 0], [ord("h"), ord("i"), 0, 0, 0, 0])


def test_disabled_features_add_no_inputs() -> None:
    config = WordFeaturesConfig(chars=True)
    assert feature_input_names(config) == ("word_chars",)
    assert encode_word_features([word_tokenize("x")], 1, WordFeaturesConfig()) == {}


def test_features_into_the_encoder_without_a_feature_are_refused() -> None:
    with pytest.raises(ValueError, match="into_encoder needs shape or chars"):
        WordFeaturesConfig(into_encoder=True)
    assert WordFeaturesConfig(chars=True, into_encoder=True).enabled
