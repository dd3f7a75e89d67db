"""Family ``resnet`` (MPCFN, seed 001): a ResNet's last feature map; its cells are the local regions on a grid
(7×7 at 224 px), their global average pool is the global image feature.

A hub id loads a transformers ResNet (``microsoft/resnet-101``, the paper's depth; the classifier head left out).
Any square input size works (the grid follows it); unset, the paper's 224 px (64 px for ``tiny``, a 3-stage basic
ResNet with a 4×4 grid).
"""

from __future__ import annotations

import torch
from transformers import ResNetConfig, ResNetModel
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from postlens.runtime.config import VisionEncoderConfig
from trainer.model.vision.base import GridEncoder, VisionFeatures
from trainer.model.vision.transformers_family import TransformersFamily, build_model, input_size, resolved_config

PAPER_IMAGE_SIZE = 224  # MPCFN §3.2: images resized to 224 × 224

RESNET = TransformersFamily(
    config_class=ResNetConfig,
    model_class=ResNetModel,
    tiny=lambda: {"embedding_size": 16, "hidden_sizes": [16, 32, 64], "depths": [1, 1, 1], "layer_type": "basic"},
    mean=tuple(IMAGENET_DEFAULT_MEAN),
    std=tuple(IMAGENET_DEFAULT_STD),
)


def feature_grid(model: ResNetModel, image_size: int) -> tuple[int, int]:
    """Rows and columns of the last feature map for ``image_size`` inputs (the strides decide; one blank pass)."""
    with torch.no_grad():
        features = model(pixel_values=torch.zeros(1, 3, image_size, image_size)).last_hidden_state
    return features.shape[2], features.shape[3]


class ResNetEncoder(GridEncoder):
    def __init__(self, model: ResNetModel, image_size: int) -> None:
        super().__init__(feature_grid(model, image_size))
        self.model = model
        if not model.config.hidden_sizes:
            raise ValueError("a ResNet without stages (config.hidden_sizes is empty)")
        self.region_dim = self.pooled_dim = model.config.hidden_sizes[-1]
        self.image_size = image_size

    def encode_images(self, images: torch.Tensor) -> VisionFeatures:
        output = self.model(pixel_values=images)
        cells = output.last_hidden_state.flatten(2).transpose(1, 2)  # [M, C, h, w] → [M, h·w, C], row-major
        return self.grid_features(cells, output.pooler_output.flatten(1))


def build_resnet(config: VisionEncoderConfig, pretrained: bool) -> tuple[ResNetEncoder, VisionEncoderConfig]:
    model, architecture = build_model(config, RESNET, pretrained)
    encoder = ResNetEncoder(model, input_size(config, PAPER_IMAGE_SIZE))
    return encoder, resolved_config(config, RESNET, architecture, encoder.image_size, grid=encoder.grid)
