"""Training targets from labeled examples: tags in the model's scheme, each word's gold boxes, relevance, unseen
words."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from postlens.runtime.decode import TagScheme
from postlens.runtime.preprocess import Preprocessor
from postlens.runtime.schemes import tags_from_spans
from postlens.runtime.words import word_tokenize
from postlens.schemas import Box
from trainer.data.examples import Example
from trainer.model.batching import ExampleEncoder
from trainer.model.tokenizer import load_tokenizer, subword_tokenizer


def example(tmp_path: Path, text: str, spans: list[tuple[int, int, str]], boxes: list[Box], images: int) -> Example:
    words = word_tokenize(text)
    paths = []
    for index in range(images):
        paths.append(str(tmp_path / f"{index}.png"))
        Image.new("RGB", (64, 64), "white").save(paths[-1])
    return Example(
        id=text[:5], text=text, words=words, tags=tags_from_spans(spans, len(words)), images=paths, boxes=boxes
    )


@pytest.mark.parametrize("scheme", ["bio", "bioes"])
def test_targets(tmp_path: Path, scheme: str) -> None:
    tokenizer = subword_tokenizer(load_tokenizer("tiny"))
    encoder = ExampleEncoder(
        Preprocessor(tokenizer, 64, (0.5,) * 3, (0.5,) * 3, 64, 64), TagScheme(scheme), 4, annotates_boxes=True
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
    boxes, has_box = targets.word_boxes.numpy(), targets.word_box_mask.numpy()
    assert has_box[0, :2, 1].all() and has_box.sum() == 2  # "Tom Becker" in image 1, nothing else
    assert boxes[0, 0, 1].tolist() == boxes[0, 1, 1].tolist() == [0.0, 0.5, 0.5, 1.0]
    assert not boxes[~has_box].any()
    assert targets.unseen_words[0].tolist()[:7] == [False, False, False, False, False, True, True]
    assert targets.unseen_words[1, 0] and not targets.unseen_words[2].any()  # no image: nothing to say
    assert targets.relevance.tolist() == [1.0, 0.0, 0.0]
    assert targets.relevance_known.tolist() == [True, True, False]
