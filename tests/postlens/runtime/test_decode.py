"""Decoding whole posts: entity text/offsets from words, span confidences, and grounded regions from attention."""

from __future__ import annotations

import numpy as np
import pytest

from postlens.runtime.decode import CrfParams, Decoder, Grounding, TagScheme, ground_span
from postlens.schemas import ModelRef

GRID = (4, 4)


def cell_boxes(images: int = 2) -> np.ndarray:
    """[N, P, 4] the GRID's cells as region boxes (what a grid family's network outputs), row-major."""
    rows, columns = GRID
    top, left = np.meshgrid(np.arange(rows) / rows, np.arange(columns) / columns, indexing="ij")
    cells = np.stack([left, top, left + 1 / columns, top + 1 / rows], axis=-1).reshape(rows * columns, 4)
    return np.broadcast_to(cells, (images, rows * columns, 4))


def attention_on(cells: list[tuple[int, int]], image: int, images: int = 2, mass: float = 0.9) -> np.ndarray:
    """[N, P] attention spreading ``mass`` evenly over the given (row, column) cells of one image."""
    attention = np.zeros((images, GRID[0] * GRID[1]))
    for row, column in cells:
        attention[image, row * GRID[1] + column] = mass / len(cells)
    return attention


def test_box_encloses_the_attended_patches_of_the_most_attended_image() -> None:
    words = np.stack([attention_on([(1, 2), (1, 3), (2, 2), (2, 3)], image=1)] * 2)  # two words, same focus
    region = ground_span(words, cell_boxes(), np.array([True, True]), 0, 1, Grounding())
    assert region.image_index == 1
    assert region.box == pytest.approx((0.5, 0.25, 1.0, 0.75))
    assert region.score == pytest.approx(0.9)


def test_weak_patches_stay_out_of_the_box_and_masked_images_never_win() -> None:
    attention = attention_on([(0, 0)], image=0, mass=0.6) + attention_on([(3, 3)], image=0, mass=0.1)
    attention += attention_on([(2, 2)], image=1, mass=0.3)
    region = ground_span(attention[None], cell_boxes(), np.array([True, True]), 0, 0, Grounding(box_fraction=0.5))
    assert region.image_index == 0 and region.box == pytest.approx((0.0, 0.0, 0.25, 0.25))
    masked = ground_span(attention[None], cell_boxes(), np.array([False, True]), 0, 0, Grounding())
    assert masked.image_index == 1
    assert ground_span(np.zeros((1, 0, 16)), np.zeros((0, 16, 4)), np.zeros(0, bool), 0, 0, Grounding()) is None


def test_the_box_encloses_detected_objects_boxes_of_any_shape() -> None:
    """Regions that are not grid cells (DETR's object queries): overlapping, nested, in any order."""
    objects = np.array(
        [
            [[0.10, 0.20, 0.40, 0.90], [0.30, 0.10, 0.55, 0.50], [0.60, 0.60, 0.95, 0.95], [0.0, 0.0, 1.0, 1.0]],
            [[0.20, 0.20, 0.30, 0.30], [0.05, 0.70, 0.15, 0.80], [0.50, 0.00, 0.60, 0.10], [0.0, 0.0, 0.0, 0.0]],
        ]
    )
    attention = np.zeros((1, 2, 4))
    attention[0, 0] = [0.30, 0.20, 0.05, 0.10]  # the first two objects of image 0 are at ≥ half the peak
    attention[0, 1] = [0.10, 0.0, 0.0, 0.0]
    region = ground_span(attention, objects, np.array([True, True]), 0, 0, Grounding(box_fraction=0.5))
    assert region.image_index == 0
    assert region.box == pytest.approx((0.10, 0.10, 0.55, 0.90))  # the union of the two objects' boxes
    assert region.score == pytest.approx(0.65)
    peak_only = ground_span(attention, objects, np.array([True, True]), 0, 0, Grounding(box_fraction=1.0))
    assert peak_only.box == pytest.approx((0.10, 0.20, 0.40, 0.90))
    second = ground_span(attention, objects, np.array([False, True]), 0, 0, Grounding())
    assert second.image_index == 1 and second.box == pytest.approx((0.20, 0.20, 0.30, 0.30))


def make_decoder(threshold: float = 0.5, temperature: float = 1.0) -> Decoder:
    scheme = TagScheme("bio")
    size = len(scheme.labels)
    allowed_start, allowed, allowed_end = scheme.allowed()
    crf = CrfParams(
        start=np.where(allowed_start, 0.0, -1e4),
        transitions=np.where(allowed, 0.0, -1e4),
        end=np.where(allowed_end, 0.0, -1e4),
    )
    assert crf.transitions.shape == (size, size)
    return Decoder(scheme, crf, Grounding(threshold=threshold), ModelRef(name="postlens", version="t"), temperature)


def test_decode_gives_entities_with_offsets_confidence_and_region() -> None:
    text = "Met Tom Becker in Lyon"
    offsets = [(0, 3), (4, 7), (8, 14), (15, 17), (18, 22)]
    scheme = TagScheme("bio")
    emissions = np.zeros((1, 6, len(scheme.labels)))  # one padding word at the end
    for word, tag in enumerate(["O", "B-PER", "I-PER", "O", "B-LOC"]):
        emissions[0, word, scheme.index(tag)] = 6.0
    mask = np.array([[True] * 5 + [False]])
    attention = np.zeros((1, 6, 2, 16))
    attention[0, 1:3] = attention_on([(0, 0), (0, 1), (1, 0), (1, 1)], image=0)  # "Tom Becker" is shown
    attention[0, 4] = attention_on([(3, 3)], image=1, mass=0.05)  # "Lyon" barely looked at

    images, relevance = np.ones((1, 2), bool), np.array([0.95])
    [prediction] = make_decoder().decode(
        [text], [offsets], emissions, mask, attention, images, relevance, cell_boxes()[None]
    )
    tom, lyon = prediction.entities
    assert (tom.text, tom.type, tom.start, tom.end) == ("Tom Becker", "PER", 4, 14)
    assert (lyon.text, lyon.type) == ("Lyon", "LOC")
    assert tom.confidence > 0.95
    assert tom.regions[0].image_index == 0 and tom.regions[0].box == pytest.approx((0.0, 0.0, 0.5, 0.5))
    assert lyon.regions == []  # evidence 0.05 × 0.95 is under the threshold
    assert prediction.image_relevance == pytest.approx(0.95)

    [cooler] = make_decoder(temperature=3.0).decode(
        [text], [offsets], emissions, mask, attention, images, relevance, cell_boxes()[None]
    )
    assert [e.text for e in cooler.entities] == ["Tom Becker", "Lyon"]  # temperature never changes the tags…
    assert cooler.entities[0].confidence < tom.confidence  # …only how sure they are
