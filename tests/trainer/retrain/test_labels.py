"""trainer.retrain.labels: label validation and refusals, the latest label per id, label images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from postlens.io.deadletter import RawMessage
from postlens.io.kafka import ConsumedMessage
from postlens.schemas import Label
from postlens.settings import Settings
from trainer.retrain.labels import InvalidLabel, LabelImages, label_example, latest_by_id, parse_label


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, "empty"),
        (b"\xff\xfe", "invalid_json"),
        (b'{"id": "a", "text": "\xff", "entities": []}', "invalid_json"),
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "schema"),
        (b'{"text": "no id", "entities": []}', "schema"),
        (b'{"id": "a", "text": "Paris", "entities": [{"start": 0, "end": 9, "type": "LOC"}]}', "schema"),
        (b'{"id": "a", "text": "Paris", "entities": [{"start": 0, "end": 5, "type": "CITY"}]}', "schema"),
        (b'{"id": "a", "tokens": ["Paris", "rocks"], "tags": ["B-LOC"]}', "schema"),
        (b'{"id": "a", "text": "Paris"}', "schema"),
    ],
)
def test_invalid_label_messages_are_refused_with_a_reason(value: bytes | None, kind: str) -> None:
    with pytest.raises(InvalidLabel) as refused:
        parse_label(value)
    assert refused.value.kind == kind and str(refused.value)


def test_both_label_forms_become_examples(tmp_path: Path) -> None:
    spans = parse_label(
        b'{"id": 7, "text": "Jordan visited Paris", "entities": [{"start": 15, "end": 20, "type": "LOC"}]}'
    )
    tags = parse_label(b'{"id": "8", "tokens": ["Jordan", "visited", "Paris"], "tags": ["B-PER", "O", "B-LOC"]}')
    span_example, notes = label_example(spans, tmp_path, max_text_chars=100)
    tag_example, _ = label_example(tags, tmp_path, max_text_chars=100)
    assert span_example.id == "7" and [(e.start, e.end, e.type) for e in span_example.entities] == [(15, 20, "LOC")]
    assert [e.type for e in tag_example.entities] == ["PER", "LOC"] and notes == []


def test_labels_the_model_cannot_take_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidLabel) as empty:
        label_example(Label(id="e", text="   ", entities=[]), tmp_path, max_text_chars=100)
    with pytest.raises(InvalidLabel) as long:
        label_example(Label(id="l", text="word " * 30, entities=[]), tmp_path, max_text_chars=100)
    with pytest.raises(InvalidLabel) as tags:
        label_example(Label(id="t", tokens=["a", "b"], tags=["B-PER", "X-LOC"]), tmp_path, max_text_chars=100)
    assert (empty.value.kind, long.value.kind, tags.value.kind) == ("empty_text", "oversize", "conversion")


def test_a_span_inside_a_word_is_widened_and_reported(tmp_path: Path) -> None:
    label = Label(id="w", text="Obama spoke", entities=[{"start": 0, "end": 4, "type": "PER"}])
    example, notes = label_example(label, tmp_path, max_text_chars=100)
    assert [(e.start, e.end) for e in example.entities] == [(0, 5)] and len(notes) == 1


def message(offset: int, timestamp: int) -> ConsumedMessage:
    return ConsumedMessage(RawMessage(b"{}", None, "labels", 0, offset), timestamp)


def test_the_latest_label_per_id_wins() -> None:
    first = Label(id="b", text="Paris", entities=[{"start": 0, "end": 5, "type": "PER"}])
    fixed = Label(id="b", text="Paris", entities=[{"start": 0, "end": 5, "type": "LOC"}])
    other = Label(id="a", text="Rome", entities=[])
    kept, superseded = latest_by_id([(message(0, 100), first), (message(1, 100), other), (message(2, 101), fixed)])
    assert superseded == 1
    assert [label.id for _, label in kept] == ["a", "b"] and kept[1][1].entities[0].type == "LOC"
    # Order of arrival does not matter: time, then offset, decides.
    kept, _ = latest_by_id([(message(2, 101), fixed), (message(0, 100), first)])
    assert kept[0][1].entities[0].type == "LOC"


async def test_local_label_images_become_model_pixels_and_stay_inside_the_root(
    tmp_path: Path, settings: Settings
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    Image.new("RGB", (100, 50), "red").save(root / "red.png")
    (root / "notes.txt").write_text("not an image")
    images = LabelImages(settings, image_size=32, root=root, out=tmp_path / "work")
    try:
        [local] = await images.localize([str(root / "red.png")])
        with Image.open(local) as image:
            pixels = np.asarray(image)
        assert pixels.shape == (32, 32, 3) and (pixels[..., 0] > 250).all()
        kinds = {}
        for reference in (tmp_path / "outside.png", root / "missing.png", root / "notes.txt"):
            with pytest.raises(InvalidLabel) as refused:
                await images.localize([str(reference)])
            kinds[reference.name] = refused.value.kind
    finally:
        await images.close()
    assert kinds == {
        "outside.png": "image_outside_root",
        "missing.png": "image_missing",
        "notes.txt": "image_not_image",
    }
