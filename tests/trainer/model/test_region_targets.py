"""Grounding targets: a region belongs to a gold box when the box covers at least half of it — the grid rule for
grid cells, and the same rule on DETR's predicted boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.model.region_targets import BOX_REGION_COVERAGE, covered_regions
from trainer.model.vision.base import grid_boxes


def covered(box: tuple[float, float, float, float], regions: torch.Tensor) -> np.ndarray:
    """[P] bool: the regions [P, 4] one word's gold box covers."""
    word_boxes = torch.tensor(box, dtype=torch.float32).reshape(1, 1, 1, 4)
    return covered_regions(word_boxes, torch.ones(1, 1, 1, dtype=torch.bool), regions[None, None]).numpy()[0, 0, 0] > 0


def grid_rule(box: tuple[float, float, float, float], grid: tuple[int, int]) -> np.ndarray:
    """The grid rule as written before regions had boxes: covered height × width in cell units ≥ the coverage."""
    rows, columns = grid
    x0, y0, x1, y1 = box
    top, left = np.arange(rows) / rows, np.arange(columns) / columns
    height = np.clip(np.minimum(top + 1 / rows, y1) - np.maximum(top, y0), 0, None) * rows
    width = np.clip(np.minimum(left + 1 / columns, x1) - np.maximum(left, x0), 0, None) * columns
    return (height[:, None] * width[None, :] >= BOX_REGION_COVERAGE).reshape(-1)


def test_grid_cells_the_box_covers_at_least_half() -> None:
    cells = grid_boxes((4, 4))
    assert np.argwhere(covered((0.5, 0.25, 1.0, 0.75), cells).reshape(4, 4)).tolist() == [
        [1, 2],
        [1, 3],
        [2, 2],
        [2, 3],
    ]
    assert covered((0.0, 0.0, 0.3, 0.2), cells).sum() == 1  # 0.3 × 0.2 of a 0.25 grid


@pytest.mark.parametrize("grid", [(4, 4), (7, 7), (2, 3)])
def test_on_a_grid_the_rule_is_the_grid_rule(grid: tuple[int, int]) -> None:
    rng = np.random.default_rng(grid[0])
    corners = np.sort(rng.random((200, 2, 2)), axis=1)  # x0 ≤ x1, y0 ≤ y1
    aligned = [
        (c / grid[1], r / grid[0], (c + 2) / grid[1], (r + 1) / grid[0])
        for r in range(grid[0])
        for c in range(grid[1] - 1)
    ]
    boxes = [(float(a[0, 0]), float(a[0, 1]), float(a[1, 0]), float(a[1, 1])) for a in corners] + aligned
    cells = grid_boxes(grid)
    for box in boxes:
        assert np.array_equal(covered(box, cells), grid_rule(box, grid)), box


def test_detected_boxes_are_covered_by_area_share() -> None:
    objects = torch.tensor(
        [
            [0.2, 0.2, 0.4, 0.4],  # inside the gold box
            [0.5, 0.2, 0.7, 0.4],  # exactly half inside
            [0.55, 0.2, 0.75, 0.4],  # a quarter inside
            [0.0, 0.0, 1.0, 1.0],  # the whole image: mostly outside
            [0.3, 0.3, 0.3, 0.3],  # degenerate: belongs to no box
        ]
    )
    assert covered((0.1, 0.1, 0.6, 0.6), objects).tolist() == [True, True, False, False, False]


def test_only_words_with_a_gold_box_in_that_image_get_targets_and_nothing_is_differentiated() -> None:
    regions = torch.rand(2, 3, 5, 2).sort(dim=-1).values  # [B, N, P, (low, high)]
    region_boxes = torch.stack([regions[..., 0], regions[..., 0], regions[..., 1], regions[..., 1]], dim=-1)
    region_boxes.requires_grad_(True)
    word_boxes = torch.tensor([0.0, 0.0, 1.0, 1.0]).expand(2, 4, 3, 4)
    mask = torch.zeros(2, 4, 3, dtype=torch.bool)
    mask[0, 1, 2] = True
    targets = covered_regions(word_boxes, mask, region_boxes)
    assert targets.shape == (2, 4, 3, 5) and not targets.requires_grad
    assert targets[0, 1, 2].sum() == 5 and targets.sum() == 5  # the whole image covers every region of image 2
