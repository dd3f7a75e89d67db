"""Which image regions a word should attend to: the regions its entity's gold box covers.

A region belongs to a gold box when the box covers at least :data:`BOX_REGION_COVERAGE` of the region's area. For
a grid those are the cells the box mostly covers; for DETR the regions are its predicted boxes, so the targets
follow the network's output (taken detached: the boxes are what the words should find, not something to move).
"""

from __future__ import annotations

import torch

BOX_REGION_COVERAGE = 0.5


def covered_regions(word_boxes: torch.Tensor, word_box_mask: torch.Tensor, region_boxes: torch.Tensor) -> torch.Tensor:
    """[B, W, N, P] 1.0 where word w's gold box in image n (``word_boxes`` [B, W, N, 4] where ``word_box_mask``
    [B, W, N]) covers region p (``region_boxes`` [B, N, P, 4]); boxes are normalized x0, y0, x1, y1."""
    # float64: cell edges such as k/7 decide coverage exactly as the grid rule on paper does.
    gold = word_boxes.detach().to(torch.float64)[:, :, :, None, :]  # [B, W, N, 1, 4]
    regions = region_boxes.detach().to(torch.float64)[:, None]  # [B, 1, N, P, 4]
    width = (torch.minimum(gold[..., 2], regions[..., 2]) - torch.maximum(gold[..., 0], regions[..., 0])).clamp(min=0)
    height = (torch.minimum(gold[..., 3], regions[..., 3]) - torch.maximum(gold[..., 1], regions[..., 1])).clamp(min=0)
    area = (regions[..., 2] - regions[..., 0]) * (regions[..., 3] - regions[..., 1])
    covered = (width * height >= BOX_REGION_COVERAGE * area) & (area > 0)  # a degenerate region belongs to no box
    return (covered & word_box_mask[..., None]).to(region_boxes.dtype)
