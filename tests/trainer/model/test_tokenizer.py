"""The torch-free preprocessing tokenizes exactly as the transformers tokenizer training saves beside a checkpoint,
for every text encoder family (BERT/MiniLM uncased WordPiece, RoBERTa byte-level BPE, SpanBERT cased WordPiece), and
the real families' hub files load the way their models were trained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, pre_tokenizers
from transformers import AutoConfig, PreTrainedTokenizerBase

from postlens.runtime.config import MINILM, TINY_ROBERTA, TINY_SPANBERT
from postlens.runtime.preprocess import Preprocessor, SubwordTokenizer
from postlens.runtime.words import word_tokenize
from trainer.model.tokenizer import load_tokenizer, subword_tokenizer

FAMILIES = (MINILM, TINY_ROBERTA, TINY_SPANBERT)
TEXTS = [
    "RT @JayKenMinaj : Me outside of where George Zimmerman got shot at . You know God is so good .",
    "Visited Lake Como 🇮🇹 with my fam #travel http://t.co/xyz ... amazing!!!",
    "北京 is lovely — ÉCOLE Polytechnique, naïve café, O'Neill's AT&T",
    "Антидисэстаблишментарианизм 👨‍👩‍👧 ﷽ x\u0301 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "x",
]
# Any code point a post's text can hold (UTF-8: no lone surrogates), controls, format characters and unassigned ones
# included: the word tokenizer drops some and keeps others as one-character words.
any_text = st.text(st.characters(codec="utf-8", exclude_categories=()), max_size=60)
# Words the word tokenizer could never emit (spaces, empty, controls inside) still encode the same on both sides.
any_words = st.lists(st.text(st.characters(codec="utf-8", exclude_categories=()), max_size=8), min_size=1, max_size=12)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> PreTrainedTokenizerBase:
    return load_tokenizer(request.param)


def assert_same_encoding(
    hf: PreTrainedTokenizerBase, tokenizer: SubwordTokenizer, words: list[list[str]], max_length: int
) -> None:
    expected = hf(words, is_split_into_words=True, truncation=True, max_length=max_length, padding=True)
    encodings = tokenizer.truncating(max_length).encode_batch(words, is_pretokenized=True)
    assert [encoding.ids for encoding in encodings] == expected["input_ids"]
    assert [encoding.attention_mask for encoding in encodings] == expected["attention_mask"]
    assert [encoding.word_ids for encoding in encodings] == [expected.word_ids(row) for row in range(len(words))]


@pytest.mark.parametrize("max_subtokens", [8, 64])
def test_saved_tokenizer_gives_the_transformers_encoding(
    family: PreTrainedTokenizerBase, tmp_path: Path, max_subtokens: int
) -> None:
    family.save_pretrained(tmp_path)  # what a checkpoint and an exported version hold
    words = [[word.text for word in word_tokenize(text)] for text in TEXTS]
    for tokenizer in (SubwordTokenizer.load(tmp_path), subword_tokenizer(family)):
        assert_same_encoding(family, tokenizer, words, max_subtokens)


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(any_text, min_size=1, max_size=4), max_length=st.integers(4, 48))
def test_any_post_encodes_as_transformers_does(
    family: PreTrainedTokenizerBase, texts: list[str], max_length: int
) -> None:
    words = [[word.text for word in word_tokenize(text)] for text in texts]
    assert_same_encoding(family, subword_tokenizer(family), words, max_length)


@settings(max_examples=60, deadline=None)
@given(words=st.lists(any_words, min_size=1, max_size=3), max_length=st.integers(4, 48))
def test_any_words_encode_as_transformers_does(
    family: PreTrainedTokenizerBase, words: list[list[str]], max_length: int
) -> None:
    assert_same_encoding(family, subword_tokenizer(family), words, max_length)


def test_roberta_words_each_start_with_a_prefix_space_and_pad_with_id_1() -> None:
    hf = load_tokenizer(TINY_ROBERTA)
    encoding = hf([["Zimmerman", "🎉", "北京"], ["x"]], is_split_into_words=True, padding=True)
    tokens = hf.convert_ids_to_tokens(encoding["input_ids"][0])
    firsts = [tokens[encoding.word_ids(0).index(word)] for word in range(3)]
    assert all(token.startswith("Ġ") for token in firsts)  # as inside a sentence, not as its first word
    assert len(tokens) > 5  # the emoji and the Han characters are several byte-level pieces each
    assert (tokens[0], tokens[-1]) == ("<s>", "</s>")
    assert hf.pad_token_id == 1 and encoding["input_ids"][1][-1] == 1


def test_spanbert_keeps_case_on_both_sides() -> None:
    hf = load_tokenizer(TINY_SPANBERT)
    words = [["Apple"], ["apple"], ["APPLE"]]
    expected = hf(words, is_split_into_words=True, padding=True)["input_ids"]
    runtime = [
        encoding.ids for encoding in subword_tokenizer(hf).truncating(16).encode_batch(words, is_pretokenized=True)
    ]
    assert runtime == expected
    assert len({tuple(ids) for ids in expected}) == 3


def hub_layout(tokenizer: PreTrainedTokenizerBase, model_type: str, directory: Path) -> Path:
    """The tokenizer as roberta-base / SpanBERT publish it: the model files (vocab.json + merges.txt, or vocab.txt)
    beside the model's config.json, no tokenizer_config.json."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.backend_tokenizer.model.save(str(directory))
    AutoConfig.for_model(model_type, vocab_size=len(tokenizer)).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("with_tokenizer_json", [False, True])
def test_roberta_hub_files_load_with_a_prefix_space(tmp_path: Path, with_tokenizer_json: bool) -> None:
    trained = load_tokenizer(TINY_ROBERTA)
    directory = hub_layout(trained, "roberta", tmp_path)
    if with_tokenizer_json:  # roberta-base's tokenizer.json says add_prefix_space: false
        published = Tokenizer.from_str(trained.backend_tokenizer.to_str())
        published.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        published.save(str(directory / "tokenizer.json"))
    words = [[word.text for word in word_tokenize(text)] for text in TEXTS]
    assert (
        load_tokenizer(str(directory))(words, is_split_into_words=True)["input_ids"]
        == trained(words, is_split_into_words=True)["input_ids"]
    )


def test_spanbert_hub_files_lowercase_unless_told_not_to(tmp_path: Path) -> None:
    # Why the spanbert preset sets lowercase: false (the hub files do not say the vocabulary is cased).
    directory = hub_layout(load_tokenizer(TINY_SPANBERT), "bert", tmp_path / "hub")
    assert load_tokenizer(str(directory)).tokenize("Apple") == load_tokenizer(str(directory)).tokenize("apple")
    cased = load_tokenizer(str(directory), lowercase=False)
    assert cased.tokenize("Apple") != cased.tokenize("apple")
    cased.save_pretrained(tmp_path / "saved")  # a checkpoint's copy stays cased without being told
    saved = SubwordTokenizer.load(tmp_path / "saved").backend
    assert saved.encode("Apple").ids != saved.encode("apple").ids


def test_preprocessing_leaves_the_training_tokenizer_untouched() -> None:
    hf = load_tokenizer(MINILM)
    before = hf(["a b c d e f g h i j"], truncation=False)["input_ids"]
    preprocessor = Preprocessor(subword_tokenizer(hf), 8, (0.5,) * 3, (0.5,) * 3, max_words=64, max_subtokens=4)
    inputs, _ = preprocessor.encode(
        ["a b c d e f g h i j"], np.zeros((1, 0, 8, 8, 3), np.uint8), np.zeros((1, 0), bool)
    )
    assert inputs["input_ids"].shape == (1, 4)
    assert hf(["a b c d e f g h i j"], truncation=False)["input_ids"] == before
