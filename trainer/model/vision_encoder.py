"""Image encoder: an open_clip vision transformer giving patch tokens and a pooled embedding per image.

Any open_clip ViT works by name and pretrained tag or weights path (``ViT-B-32`` + ``laion2b_s34b_b79k``); the
``postlens-tiny-vit`` config shipped beside this module (64 px, 16 px patches, 2 layers) is for tests and the
synthetic data, trained from scratch.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
from torch import nn

from postlens.runtime.config import VisionEncoderConfig

_CONFIG_DIR = Path(__file__).resolve().parent / "open_clip_configs"
open_clip.add_model_config(_CONFIG_DIR)


class VisionEncoder(nn.Module):
    """[B, N, 3, S, S] pixels → patch tokens [B, N, P, D] and pooled embeddings [B, N, E]."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        if not hasattr(visual, "grid_size") or not hasattr(visual, "output_tokens"):
            raise ValueError(f"{type(visual).__name__} gives no patch tokens; use an open_clip ViT model")
        visual.output_tokens = True
        self.visual = visual
        self.grid = tuple(visual.grid_size)
        self.patch_dim = visual.transformer.width
        self.pooled_dim = visual.output_dim
        self.image_size = visual.image_size[0]

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, images = pixel_values.shape[0], pixel_values.shape[1]
        flat = pixel_values.flatten(0, 1)
        # One blank image rides along so the batch is never empty (posts without images); its output is dropped.
        blank = torch.zeros(1, 3, self.image_size, self.image_size, dtype=flat.dtype, device=flat.device)
        flat = torch.cat([flat, blank], dim=0)
        pooled, tokens = self.visual(flat)
        patches = self.grid[0] * self.grid[1]
        tokens = tokens[:-1].reshape(batch, images, patches, self.patch_dim)
        pooled = pooled[:-1].reshape(batch, images, self.pooled_dim)
        return tokens, pooled


def build_vision_encoder(config: VisionEncoderConfig, pretrained: bool = True) -> tuple[VisionEncoder, VisionEncoderConfig]:
    """The encoder and the config with its preprocessing filled in. ``pretrained=False`` builds the architecture
    only (a checkpoint's state dict is loaded over it)."""
    clip = open_clip.create_model(config.name, pretrained=config.pretrained if pretrained else None)
    encoder = VisionEncoder(clip.visual)
    preprocess = clip.visual.preprocess_cfg
    resolved = config.model_copy(
        update={
            "image_size": encoder.image_size,
            "mean": tuple(preprocess["mean"]),
            "std": tuple(preprocess["std"]),
            "grid": encoder.grid,
        }
    )
    return encoder, resolved
