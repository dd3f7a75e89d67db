"""Posts → the network's input arrays (docs/contracts.md), identically for training, prediction and serving.

Torch-free and transformers-free: sub-word tokenization runs on the Hugging Face ``tokenizers`` library directly, so
the served model loads neither. Texts are split by the shared word tokenizer; each word is represented by its first
sub-token (a URL word may be read as a placeholder: ``text_encoder.url_placeholder``). Words past ``max_words``, or
whose first sub-token falls past ``max_subtokens``, are not tagged (the words list returned says which were).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from postlens.runtime.config import ModelConfig, WordFeaturesConfig
from postlens.runtime.word_features import encode_word_features, feature_input_names
from postlens.runtime.words import Word, is_url, word_tokenize

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# Inputs whose axis 1 runs over sub-tokens, or over words (the others: over image slots).
SUBTOKEN_AXIS = frozenset({"input_ids", "attention_mask"})
WORD_AXIS = frozenset({"word_index", "word_mask", *feature_input_names(WordFeaturesConfig(shape=True, chars=True))})


@dataclass(frozen=True)
class SubwordTokenizer:
    """A fast tokenizer's pipeline (normalizer, pre-tokenizer, model, special tokens) and its padding token."""

    backend: Tokenizer
    pad_token: str

    @classmethod
    def load(cls, directory: Path) -> SubwordTokenizer:
        """The tokenizer a checkpoint or version folder saved (``tokenizer.json`` + ``tokenizer_config.json``)."""
        backend = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        pad_token = json.loads((directory / TOKENIZER_CONFIG_FILE).read_text()).get("pad_token")
        if isinstance(pad_token, dict):  # older tokenizer_config files store an AddedToken
            pad_token = pad_token.get("content")
        if not pad_token or backend.token_to_id(pad_token) is None:
            raise ValueError(f"{directory}: the tokenizer names no padding token it knows ({pad_token!r})")
        return cls(backend, pad_token)

    @property
    def vocabulary(self) -> dict[str, int]:
        return self.backend.get_vocab()

    def truncating(self, max_length: int) -> Tokenizer:
        """A copy that adds special tokens, truncates to ``max_length`` and pads a batch to its longest post."""
        # A copy: truncation and padding are settings of the Tokenizer object itself.
        backend = Tokenizer.from_str(self.backend.to_str())
        backend.enable_truncation(max_length)
        backend.enable_padding(pad_id=backend.token_to_id(self.pad_token), pad_token=self.pad_token)
        return backend


class Preprocessor:
    def __init__(
        self,
        tokenizer: SubwordTokenizer,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        max_words: int,
        max_subtokens: int,
        word_features: WordFeaturesConfig | None = None,
        url_placeholder: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self._subwords = tokenizer.truncating(max_subtokens)
        self.image_size = image_size
        self.mean = np.asarray(mean, dtype=np.float32).reshape(1, 1, 3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(1, 1, 3, 1, 1)
        self.max_words = max_words
        self.max_subtokens = max_subtokens
        self.word_features = word_features or WordFeaturesConfig()
        self.url_placeholder = url_placeholder

    @classmethod
    def from_config(cls, config: ModelConfig, tokenizer: SubwordTokenizer) -> Preprocessor:
        vision = config.vision_encoder
        if vision.image_size is None or vision.mean is None or vision.std is None:
            raise ValueError("the model config's vision encoder is not resolved (no image size/mean/std)")
        return cls(
            tokenizer,
            vision.image_size,
            vision.mean,
            vision.std,
            config.max_words,
            config.max_subtokens,
            config.word_features,
            config.text_encoder.url_placeholder,
        )

    def encode(
        self, texts: Sequence[str], images: np.ndarray, image_mask: np.ndarray
    ) -> tuple[dict[str, np.ndarray], list[list[Word]]]:
        """Raw texts (+ uint8 [B, N, S, S, 3] images, bool [B, N] mask) → forward inputs and the words tagged."""
        return self.encode_words([word_tokenize(text) for text in texts], images, image_mask)

    def encode_words(
        self, words: Sequence[Sequence[Word]], images: np.ndarray, image_mask: np.ndarray
    ) -> tuple[dict[str, np.ndarray], list[list[Word]]]:
        """Like :meth:`encode` for posts already split into words (training examples)."""
        truncated = [list(post_words[: self.max_words]) for post_words in words]
        encodings = self._subwords.encode_batch(
            [[self._encoder_text(word) for word in post_words] for post_words in truncated],
            is_pretokenized=True,
            add_special_tokens=True,
        )
        kept: list[list[Word]] = []
        first_subtoken: list[dict[int, int]] = []
        for post_words, encoding in zip(truncated, encodings, strict=True):
            firsts: dict[int, int] = {}
            for position, word_id in enumerate(encoding.word_ids):
                if word_id is not None and word_id not in firsts:
                    firsts[word_id] = position
            # Truncation cuts the tail; a word with no sub-token at all (rare symbols) points at [CLS] instead.
            kept.append(post_words[: max(firsts, default=-1) + 1])
            first_subtoken.append(firsts)
        width = max(1, max((len(post_words) for post_words in kept), default=0))
        word_index = np.zeros((len(kept), width), dtype=np.int64)
        word_mask = np.zeros((len(kept), width), dtype=bool)
        for row, (post_words, firsts) in enumerate(zip(kept, first_subtoken, strict=True)):
            word_index[row, : len(post_words)] = [firsts.get(i, 0) for i in range(len(post_words))]
            word_mask[row, : len(post_words)] = True
        inputs = {
            "input_ids": np.array([encoding.ids for encoding in encodings], dtype=np.int64),
            "attention_mask": np.array([encoding.attention_mask for encoding in encodings], dtype=np.int64),
            "word_index": word_index,
            "word_mask": word_mask,
            **self.pixels(images, image_mask),
            **encode_word_features(kept, width, self.word_features),
        }
        return inputs, kept

    @staticmethod
    def select(inputs: dict[str, np.ndarray], rows: np.ndarray, multiple: int = 1) -> dict[str, np.ndarray]:
        """The given rows of an encoded batch, padded only to their own longest post (sub-tokens and words), that
        length rounded up to a ``multiple`` (an engine that prepares its kernels per input shape then sees fewer
        shapes). The padding is masked, as the batch's own is, so it changes no post's result."""
        subtokens = _round_up(int(inputs["attention_mask"][rows].sum(axis=1).max(initial=0)), multiple)
        words = _round_up(int(inputs["word_mask"][rows].sum(axis=1).max(initial=0)), multiple)
        return {
            name: _fit_width(value[rows], subtokens)
            if name in SUBTOKEN_AXIS
            else _fit_width(value[rows], words)
            if name in WORD_AXIS
            else value[rows]
            for name, value in inputs.items()
        }

    def _encoder_text(self, word: Word) -> str:
        """What the sub-word encoder reads for ``word``: the word, or the URL placeholder for a URL."""
        return self.url_placeholder if self.url_placeholder is not None and is_url(word.text) else word.text

    def pixels(self, images: np.ndarray, image_mask: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 [B, N, S, S, 3] → normalized float32 [B, N, 3, S, S] (masked slots zeroed) and the bool mask."""
        images = np.asarray(images)
        if images.ndim != 5 or images.shape[2:] != (self.image_size, self.image_size, 3):
            raise ValueError(
                f"images must be uint8 [B, N, {self.image_size}, {self.image_size}, 3], got {images.shape}"
            )
        mask = np.asarray(image_mask, dtype=bool)
        scaled = images.transpose(0, 1, 4, 2, 3).astype(np.float32) / 255.0
        normalized = (scaled - self.mean) / self.std
        normalized *= mask[:, :, None, None, None]
        return {"pixel_values": normalized.astype(np.float32), "image_mask": mask}


def _round_up(length: int, multiple: int) -> int:
    """``length`` (at least 1) rounded up to a multiple of ``multiple``."""
    return -(-max(1, length) // multiple) * multiple


def _fit_width(array: np.ndarray, width: int) -> np.ndarray:
    """``array`` cut or zero-padded (masked padding: mask, ids and features are all 0 there) to ``width`` on axis 1."""
    if array.shape[1] >= width:
        return array[:, :width]
    return np.pad(array, [(0, 0), (0, width - array.shape[1])] + [(0, 0)] * (array.ndim - 2))
