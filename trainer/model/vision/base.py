"""What every vision encoder family gives: per image, region tokens with a normalized box each, and a pooled
embedding. Grid families (clip, blip, resnet) have fixed cell boxes; DETR predicts its boxes per image."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class VisionFeatures:
    regions: torch.Tensor  # [..., P, region_dim] region tokens
    pooled: torch.Tensor  # [..., pooled_dim] the whole image
    boxes: torch.Tensor  # [..., P, 4] each region's box: x0, y0, x1, y1 normalized to the image, 0 ≤ x0 ≤ x1 ≤ 1


class VisionEncoder(nn.Module):
    """[B, N, 3, S, S] pixels → :class:`VisionFeatures` with leading dims [B, N]. A family implements
    :meth:`encode_images` on a flat batch of images and sets the sizes below."""

    region_dim: int  # D of the region tokens
    pooled_dim: int  # E of the pooled embedding
    regions: int  # P, regions per image
    image_size: int  # S, the square input size

    def encode_images(self, images: torch.Tensor) -> VisionFeatures:
        """[M, 3, S, S] → regions [M, P, D], pooled [M, E], boxes [M, P, 4]."""
        raise NotImplementedError

    def forward(self, pixel_values: torch.Tensor) -> VisionFeatures:
        batch, images = pixel_values.shape[0], pixel_values.shape[1]
        flat = pixel_values.flatten(0, 1)
        # One blank image rides along so the batch is never empty (posts without images); its output is dropped.
        blank = torch.zeros(1, 3, self.image_size, self.image_size, dtype=flat.dtype, device=flat.device)
        features = self.encode_images(torch.cat([flat, blank], dim=0))
        return VisionFeatures(
            regions=features.regions[:-1].reshape(batch, images, self.regions, self.region_dim),
            pooled=features.pooled[:-1].reshape(batch, images, self.pooled_dim),
            boxes=features.boxes[:-1].reshape(batch, images, self.regions, 4),
        )


def grid_boxes(grid: tuple[int, int]) -> torch.Tensor:
    """The cells of a ``grid`` (rows, columns) as boxes [rows·columns, 4], row-major like the feature maps."""
    rows, columns = grid
    row_edges = torch.arange(rows + 1, dtype=torch.float64) / rows
    column_edges = torch.arange(columns + 1, dtype=torch.float64) / columns
    top, left = torch.meshgrid(row_edges[:-1], column_edges[:-1], indexing="ij")
    bottom, right = torch.meshgrid(row_edges[1:], column_edges[1:], indexing="ij")
    return torch.stack([left, top, right, bottom], dim=-1).reshape(rows * columns, 4).to(torch.float32)


class GridEncoder(VisionEncoder):
    """A family whose regions are the cells of a fixed grid over the image."""

    cell_boxes: torch.Tensor  # a buffer (registered below), declared for type checkers

    def __init__(self, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid
        self.regions = grid[0] * grid[1]
        # Derived from the grid, so not saved: checkpoints from before region boxes existed load as they are.
        self.register_buffer("cell_boxes", grid_boxes(grid), persistent=False)

    def grid_features(self, regions: torch.Tensor, pooled: torch.Tensor) -> VisionFeatures:
        """Features of [M, P, D] cell tokens and [M, E] pooled embeddings, with the cell boxes."""
        return VisionFeatures(regions, pooled, self.cell_boxes.expand(regions.shape[0], -1, -1))
