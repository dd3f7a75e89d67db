"""Model inputs shared by the network tests: posts with random images (ragged counts) and all-"O" targets."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from postlens.runtime.preprocess import Preprocessor
from trainer.model.losses import Targets


def random_batch(preprocessor: Preprocessor, texts: Sequence[str], images: int) -> dict[str, torch.Tensor]:
    """``texts`` with ``images`` random images each, except the second post, which has one (ragged image counts)."""
    size = preprocessor.image_size
    pixels = np.random.default_rng(images).integers(0, 256, size=(len(texts), images, size, size, 3), dtype=np.uint8)
    mask = np.ones((len(texts), images), dtype=bool)
    if images:
        mask[1, 1:] = False
    inputs, _ = preprocessor.encode(list(texts), pixels, mask)
    return {name: torch.from_numpy(value) for name, value in inputs.items()}


def no_targets(inputs: dict[str, torch.Tensor]) -> Targets:
    """All-"O" tags, no boxes, no known relevance."""
    batch, words = inputs["word_mask"].shape
    images = inputs["image_mask"].shape[1]
    return Targets(
        tags=torch.zeros(batch, words, dtype=torch.long),
        word_boxes=torch.zeros(batch, words, images, 4),
        word_box_mask=torch.zeros(batch, words, images, dtype=torch.bool),
        unseen_words=torch.zeros(batch, words, dtype=torch.bool),
        relevance=torch.zeros(batch),
        relevance_known=torch.zeros(batch, dtype=torch.bool),
    )
