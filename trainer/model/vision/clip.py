"""Family ``clip``: an open_clip vision transformer; its patch tokens are the regions, on the patch grid.

Any open_clip ViT works by name and pretrained tag or weights path (``ViT-B-32`` + ``laion2b_s34b_b79k``); the
``postlens-tiny-vit`` config shipped beside this module (64 px, 16 px patches, 2 layers) is for tests and the
synthetic data, trained from scratch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import open_clip
import torch

from postlens.runtime.config import VisionEncoderConfig
from trainer.model.vision.base import GridEncoder, VisionFeatures

_CONFIG_DIR = Path(__file__).resolve().parent / "open_clip_configs"
open_clip.add_model_config(_CONFIG_DIR)


class ClipEncoder(GridEncoder):
    def __init__(self, visual: Any) -> None:
        """``visual``: an open_clip vision tower (open_clip ships no types: its attributes are checked here)."""
        if not hasattr(visual, "grid_size") or not hasattr(visual, "output_tokens"):
            raise ValueError(f"{type(visual).__name__} gives no patch tokens; use an open_clip ViT model")
        rows, columns = visual.grid_size
        super().__init__((rows, columns))
        visual.output_tokens = True
        self.visual = visual
        self.region_dim = visual.transformer.width
        self.pooled_dim = visual.output_dim
        self.image_size = visual.image_size[0]

    def encode_images(self, images: torch.Tensor) -> VisionFeatures:
        pooled, tokens = self.visual(images)
        return self.grid_features(tokens, pooled)


def build_clip(config: VisionEncoderConfig, pretrained: bool) -> tuple[ClipEncoder, VisionEncoderConfig]:
    clip = open_clip.create_model(config.name, pretrained=config.pretrained if pretrained else None)
    encoder = ClipEncoder(clip.visual)
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
