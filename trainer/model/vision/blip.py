"""Family ``blip``: BLIP's vision tower (a ViT); its patch tokens are the regions on the patch grid, the pooled
embedding is the layer-normed [CLS] (BLIP's own pooler output).

A hub id loads the vision part of a whole BLIP checkpoint (``Salesforce/blip-image-captioning-base``): its
``vision_model.`` weights, the text side left out. ``tiny`` is a 2-layer 64-px tower for tests.
"""

from __future__ import annotations

import torch
from transformers import BlipVisionConfig, BlipVisionModel
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from postlens.runtime.config import VisionEncoderConfig
from trainer.model.vision.base import GridEncoder, VisionFeatures
from trainer.model.vision.transformers_family import TINY_IMAGE_SIZE, TransformersFamily, build_model, resolved_config

BLIP = TransformersFamily(
    config_class=BlipVisionConfig,
    model_class=BlipVisionModel,
    tiny=lambda: {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": TINY_IMAGE_SIZE,
        "patch_size": 16,
    },
    mean=tuple(OPENAI_CLIP_MEAN),
    std=tuple(OPENAI_CLIP_STD),
    load_options={"key_mapping": {r"^vision_model\.": ""}},  # a whole BLIP checkpoint → its vision tower
)


class BlipEncoder(GridEncoder):
    def __init__(self, model: BlipVisionModel) -> None:
        image_size, patch_size = model.config.image_size, model.config.patch_size
        if not isinstance(image_size, int) or not isinstance(patch_size, int):
            raise ValueError(f"a BLIP vision tower with square images and patches only; got {image_size}, {patch_size}")
        super().__init__((image_size // patch_size, image_size // patch_size))
        self.model = model
        self.region_dim = self.pooled_dim = model.config.hidden_size
        self.image_size = image_size

    def encode_images(self, images: torch.Tensor) -> VisionFeatures:
        output = self.model(pixel_values=images)
        return self.grid_features(output.last_hidden_state[:, 1:], output.pooler_output)  # [CLS] first


def build_blip(config: VisionEncoderConfig, pretrained: bool) -> tuple[BlipEncoder, VisionEncoderConfig]:
    model, architecture = build_model(config, BLIP, pretrained)
    encoder = BlipEncoder(model)
    return encoder, resolved_config(config, BLIP, architecture, encoder.image_size, grid=encoder.grid)
