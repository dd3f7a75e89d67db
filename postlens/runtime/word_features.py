"""Per-word inputs that an uncased sub-word tokenizer loses: a word-shape class and the word's own characters.

Torch-free (NumPy only): serving computes them exactly as training does. Both are fixed-shape per word —
``word_shape`` int64 [B, W] and ``word_chars`` int64 [B, W, C] with C = ``max_chars`` — and 0 is padding in both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import regex

from postlens.runtime.config import WordFeaturesConfig
from postlens.runtime.words import Word, is_url

WORD_SHAPES = (
    "padding",
    "lower",  # football
    "title",  # Football, I
    "upper",  # NFL
    "mixed",  # iPhone, McDonald
    "number",  # 2015, 3.5
    "alphanumeric",  # 3rd, A380
    "punctuation",  # ..., "
    "mention",  # @nytimes
    "hashtag",  # #RedSox
    "url",
    "emoji",
    "uncased",  # scripts without capitals (CJK, Arabic…)
)
_SHAPE_INDEX = {name: index for index, name in enumerate(WORD_SHAPES)}
_EMOJI = regex.compile(r"[0-9#*]\uFE0F?\u20E3|\p{Extended_Pictographic}|\p{Regional_Indicator}")
LATIN1 = 256  # code points below this keep their own char id


def word_shape(text: str) -> int:
    """The shape class of one word (an index into :data:`WORD_SHAPES`)."""
    if is_url(text):
        return _SHAPE_INDEX["url"]
    if len(text) > 1 and text[0] in "@#":
        return _SHAPE_INDEX["mention" if text[0] == "@" else "hashtag"]
    if _EMOJI.match(text):
        return _SHAPE_INDEX["emoji"]
    letters = [char for char in text if char.isalpha()]
    if any(char.isdigit() for char in text):
        return _SHAPE_INDEX["alphanumeric" if letters else "number"]
    if not letters:
        return _SHAPE_INDEX["punctuation"]
    cased = [char for char in letters if char.isupper() or char.islower()]
    if not cased:
        return _SHAPE_INDEX["uncased"]
    if all(char.islower() for char in cased):
        return _SHAPE_INDEX["lower"]
    if all(char.isupper() for char in cased):
        return _SHAPE_INDEX["upper" if len(cased) > 1 else "title"]
    if cased[0].isupper() and all(char.islower() for char in cased[1:]):
        return _SHAPE_INDEX["title"]
    return _SHAPE_INDEX["mixed"]


def char_ids(text: str, max_chars: int, buckets: int) -> list[int]:
    """≤ ``max_chars`` ids in [1, buckets): Latin-1 code points as they are, any other hashed by its code point (so
    the id is the same on every machine and run). A longer word keeps its start and its end (prefixes, suffixes)."""
    if len(text) > max_chars:
        text = text[: max_chars // 2] + text[len(text) - (max_chars - max_chars // 2) :]
    return [code if code < LATIN1 else LATIN1 + code % (buckets - LATIN1) for code in map(ord, text)]


def feature_input_names(config: WordFeaturesConfig) -> tuple[str, ...]:
    """The network inputs the enabled features add, in the order of the network's arguments."""
    return tuple(name for name, enabled in (("word_shape", config.shape), ("word_chars", config.chars)) if enabled)


def encode_word_features(
    words: Sequence[Sequence[Word]], width: int, config: WordFeaturesConfig
) -> dict[str, np.ndarray]:
    """The enabled feature arrays for posts' tagged words, padded to ``width`` words."""
    features: dict[str, np.ndarray] = {}
    if config.shape:
        shapes = np.zeros((len(words), width), dtype=np.int64)
        for row, post_words in enumerate(words):
            shapes[row, : len(post_words)] = [word_shape(word.text) for word in post_words]
        features["word_shape"] = shapes
    if config.chars:
        chars = np.zeros((len(words), width, config.max_chars), dtype=np.int64)
        for row, post_words in enumerate(words):
            for column, word in enumerate(post_words):
                ids = char_ids(word.text, config.max_chars, config.char_buckets)
                chars[row, column, : len(ids)] = ids
        features["word_chars"] = chars
    return features
