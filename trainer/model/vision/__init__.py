"""Vision encoders, one module per family (``VisionEncoderConfig.family``); all give region tokens with boxes and
a pooled embedding (:mod:`trainer.model.vision.base`)."""

from __future__ import annotations

from collections.abc import Callable

from postlens.runtime.config import VisionEncoderConfig, VisionFamily
from trainer.model.vision.base import VisionEncoder, VisionFeatures
from trainer.model.vision.blip import build_blip
from trainer.model.vision.clip import build_clip
from trainer.model.vision.detr import build_detr
from trainer.model.vision.resnet import build_resnet

_BUILDERS: dict[VisionFamily, Callable[[VisionEncoderConfig, bool], tuple[VisionEncoder, VisionEncoderConfig]]] = {
    "clip": build_clip,
    "blip": build_blip,
    "detr": build_detr,
    "resnet": build_resnet,
}


def build_vision_encoder(
    config: VisionEncoderConfig, pretrained: bool = True
) -> tuple[VisionEncoder, VisionEncoderConfig]:
    """The encoder and the config with its preprocessing and regions filled in. ``pretrained=False`` builds the
    recorded architecture only (a checkpoint's state dict is loaded over it)."""
    return _BUILDERS[config.family](config, pretrained)


__all__ = ["VisionEncoder", "VisionFeatures", "build_vision_encoder"]
