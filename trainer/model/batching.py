"""Labeled examples → network inputs and training targets (tags in the model's scheme, each word's gold boxes).

Images are read once per file and kept (the synthetic and benchmark sets are small); the network sees exactly
what serving would send (:func:`postlens.runtime.images.to_model_pixels`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from postlens.runtime.decode import TagScheme
from postlens.runtime.images import load_images, stack_images
from postlens.runtime.preprocess import Preprocessor
from postlens.runtime.schemes import Span, spans_from_tags, tags_from_spans
from postlens.runtime.words import Word
from postlens.schemas import Box
from trainer.data.examples import Example
from trainer.model.losses import Targets


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]  # the forward() arguments
    words: list[list[Word]]  # the words the network tags, per post (after truncation)
    targets: Targets | None  # None for unlabeled examples

    @property
    def gold_targets(self) -> Targets:
        """The targets of a batch of labeled examples (what training reads)."""
        if self.targets is None:
            raise ValueError("a batch of unlabeled examples has no targets")
        return self.targets


def clip_spans(spans: Sequence[Span], length: int) -> list[Span]:
    """Spans cut to the first ``length`` words (the ones the network saw)."""
    return [(first, min(end, length), kind) for first, end, kind in spans if first < length]


class ExampleEncoder:
    def __init__(self, preprocessor: Preprocessor, scheme: TagScheme, max_images: int, annotates_boxes: bool) -> None:
        self.preprocessor = preprocessor
        self.scheme = scheme
        self.max_images = max_images
        self.annotates_boxes = annotates_boxes  # the dataset marks every depicted entity, so "no box" means none
        self._pixels: dict[str, np.ndarray] = {}

    def images(self, example: Example) -> np.ndarray:
        """uint8 [k, S, S, 3] for the example's first ``max_images`` images."""
        paths = example.images[: self.max_images]
        for path in paths:
            if path not in self._pixels:
                self._pixels[path] = load_images([path], self.preprocessor.image_size, 1)[0]
        size = self.preprocessor.image_size
        return np.stack([self._pixels[path] for path in paths]) if paths else np.zeros((0, size, size, 3), np.uint8)

    def encode(self, examples: Sequence[Example]) -> Batch:
        pixels, image_mask = stack_images([self.images(example) for example in examples], self.preprocessor.image_size)
        inputs, words = self.preprocessor.encode_words([example.words for example in examples], pixels, image_mask)
        tensors = {name: torch.from_numpy(value) for name, value in inputs.items()}
        labeled = all(example.tags is not None for example in examples)
        targets = self._targets(examples, words, inputs["word_mask"].shape[1], image_mask) if labeled else None
        return Batch(tensors, words, targets)

    def _targets(
        self, examples: Sequence[Example], words: list[list[Word]], width: int, image_mask: np.ndarray
    ) -> Targets:
        images = image_mask.shape[1]
        tags = np.zeros((len(examples), width), dtype=np.int64)
        word_boxes = np.zeros((len(examples), width, images, 4), dtype=np.float32)
        word_box_mask = np.zeros((len(examples), width, images), dtype=bool)
        unseen_words = np.zeros((len(examples), width), dtype=bool)
        relevance = np.zeros(len(examples), dtype=np.float32)
        known = image_mask.any(axis=1) & self.annotates_boxes
        for row, (example, kept) in enumerate(zip(examples, words, strict=True)):
            spans = spans_from_tags(example.gold_tags)
            kept_tags = tags_from_spans(clip_spans(spans, len(kept)), len(kept), self.scheme.name)
            tags[row, : len(kept)] = [self.scheme.index(tag) for tag in kept_tags]
            visible = self._visible_boxes(example.boxes, image_mask[row])
            for box in visible:
                first, end, _ = spans[box.entity]
                word_boxes[row, first : min(end, len(kept)), box.image_index] = box.box
                word_box_mask[row, first : min(end, len(kept)), box.image_index] = True
                relevance[row] = 1.0
            if known[row]:
                shown = {box.entity for box in visible}
                for first, end, _ in (span for index, span in enumerate(spans) if index not in shown):
                    unseen_words[row, first : min(end, len(kept))] = True
        return Targets(
            tags=torch.from_numpy(tags),
            word_boxes=torch.from_numpy(word_boxes),
            word_box_mask=torch.from_numpy(word_box_mask),
            unseen_words=torch.from_numpy(unseen_words),
            relevance=torch.from_numpy(relevance),
            relevance_known=torch.from_numpy(known),
        )

    @staticmethod
    def _visible_boxes(boxes: Sequence[Box], image_mask: np.ndarray) -> list[Box]:
        return [box for box in boxes if box.image_index < len(image_mask) and image_mask[box.image_index]]
