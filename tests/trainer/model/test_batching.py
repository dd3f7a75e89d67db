"""Training targets from labeled examples: tags in the model's scheme, gold-box patches, relevance, unseen words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from postlens.schemas import Box
from trainer.data.examples import Example
from postlens.runtime.schemes import tags_from_spans
from postlens.runtime.words import word_tokenize
from trainer.model.batching import ExampleEncoder, box_patch_mask
from postlens.runtime.decode import TagScheme
from postlens.runtime.preprocess import Preprocessor
from trainer.model.tokenizer import load_tokenizer, subword_tokenizer

GRID = (4, 4)


def test_box_patch_mask_takes_the_cells_the_box_covers_at_least_half() -> None:
    mask = box_patch_mask((0.5, 0.25, 1.0, 0.75), GRID).reshape(GRID)
    assert np.argwhere(mask).tolist() == [[1, 2], [1, 3], [2, 2], [2, 3]]
    assert box_patch_mask((0.0, 0.0, 0.3, 0.2), GRID).reshape(GRID).sum() == 1  # 0.3 × 0.2 of a 0.25 grid


def example(tmp_path: Path, text: str, spans: list[tuple[int, int, str]], boxes: list[Box], images: int) -> Example:
    words = word_tokenize(text)
    paths = []
    for index in range(images):
        paths.append(str(tmp_path / f"{index}.png"))
        Image.new("RGB", (64, 64), "white").save(paths[-1])
    return Example(id=text[:5], text=text, words=words, tags=tags_from_spans(spans, len(words)), images=paths, boxes=boxes)


@pytest.mark.parametrize("scheme", ["bio", "bioes"])
def test_targets(tmp_path: Path, scheme: str) -> None:
    tokenizer = subword_tokenizer(load_tokenizer("tiny"))
    encoder = ExampleEncoder(
        Preprocessor(tokenizer, 64, (0.5,) * 3, (0.5,) * 3, 64, 64), TagScheme(scheme), GRID, 4, annotates_boxes=True
    )
    shown = example(
        tmp_path,
        "Tom Becker met staff of Acme Corp",
        [(0, 2, "PER"), (5, 7, "ORG")],
        [Box(entity=0, image_index=1, box=(0.0, 0.5, 0.5, 1.0))],
        images=2,
    )
    unshown = example(tmp_path, "Lyon is lovely", [(0, 1, "LOC")], [], images=1)
    textonly = example(tmp_path, "Lyon is lovely", [(0, 1, "LOC")], [], images=0)
    batch = encoder.encode([shown, unshown, textonly])
    targets = batch.targets
    labels = TagScheme(scheme).labels
    last = "I" if scheme == "bio" else "E"
    assert [labels[t] for t in targets.tags[0, :7]] == ["B-PER", f"{last}-PER", "O", "O", "O", "B-ORG", f"{last}-ORG"]
    patches = targets.box_patches.numpy()
    expected = box_patch_mask((0.0, 0.5, 0.5, 1.0), GRID)
    assert np.array_equal(patches[0, 0, 1], expected) and np.array_equal(patches[0, 1, 1], expected)
    assert patches[0, 0, 0].sum() == 0 and patches[0, 2:].sum() == 0 and patches[1:].sum() == 0
    assert targets.unseen_words[0].tolist()[:7] == [False, False, False, False, False, True, True]
    assert targets.unseen_words[1, 0] and not targets.unseen_words[2].any()  # no image: nothing to say
    assert targets.relevance.tolist() == [1.0, 0.0, 0.0]
    assert targets.relevance_known.tolist() == [True, True, False]
