"""Family ``detr``: DETR's object queries. Each query's decoder state is a region token and its predicted box (DETR's
box head, per image) is the region's box; the pooled embedding is the mean of the transformer encoder's states.

Why that pool: it covers every location of the image once, with the encoder's global context, while most of the
queries answer "no object" and their mean would mostly describe empty slots; it has the region tokens' width.

A hub id loads ``DetrForObjectDetection`` (``facebook/detr-resnet-50``) whose box head is trained; the boxes are not
trained here (targets use them detached), and the ``detr`` preset freezes the whole detector
(``train.freeze_vision_encoder``) so the boxes stay the objects it finds: fine-tuning would move the query states its
head reads. Unset, the input size is
DETR's 800 px training scale (64 px for ``tiny``: a 1-layer DETR on a 2-stage ResNet, random boxes, tests only).
"""

from __future__ import annotations

import torch
from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig
from transformers.image_transforms import center_to_corners_format
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from postlens.runtime.config import VisionEncoderConfig
from trainer.model.vision.base import VisionEncoder, VisionFeatures
from trainer.model.vision.transformers_family import TransformersFamily, build_model, input_size, resolved_config

PAPER_IMAGE_SIZE = 800  # DETR's training images: shortest side 800

DETR = TransformersFamily(
    config_class=DetrConfig,
    model_class=DetrForObjectDetection,
    tiny=lambda: {
        "backbone_config": ResNetConfig(
            embedding_size=16,
            hidden_sizes=[16, 32],
            depths=[1, 1],
            layer_type="basic",
            out_features=["stage2"],  # type: ignore[call-arg]  # the backbone mixin takes it, outside the signature
        ),
        "d_model": 32,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64,
        "num_queries": 8,
        "num_labels": 2,
    },
    mean=tuple(IMAGENET_DEFAULT_MEAN),
    std=tuple(IMAGENET_DEFAULT_STD),
)


class DetrEncoder(VisionEncoder):
    def __init__(self, model: DetrForObjectDetection, image_size: int) -> None:
        super().__init__()
        self.model = model
        self.regions = model.config.num_queries
        self.region_dim = self.pooled_dim = model.config.d_model
        self.image_size = image_size

    def encode_images(self, images: torch.Tensor) -> VisionFeatures:
        output = self.model(pixel_values=images)
        # pred_boxes are (cx, cy, w, h) in [0, 1]; corners may stick out of the image, so they are clipped to it.
        boxes = torch.as_tensor(center_to_corners_format(output.pred_boxes)).clamp(0.0, 1.0)
        return VisionFeatures(output.last_hidden_state, output.encoder_last_hidden_state.mean(dim=1), boxes)


def build_detr(config: VisionEncoderConfig, pretrained: bool) -> tuple[DetrEncoder, VisionEncoderConfig]:
    model, architecture = build_model(config, DETR, pretrained)
    encoder = DetrEncoder(model, input_size(config, PAPER_IMAGE_SIZE))
    return encoder, resolved_config(config, DETR, architecture, encoder.image_size, queries=encoder.regions)
