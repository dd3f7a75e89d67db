"""Building the transformers model of a vision family (blip, detr, resnet) the way the text encoder is built: the
recorded ``architecture`` with random weights (a checkpoint's state dict goes over it), the tiny random config, or
a hub id / local directory with its weights; and the pixel normalization that goes with it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from transformers import AutoImageProcessor, PretrainedConfig, PreTrainedModel

from postlens.runtime.config import TINY, VisionEncoderConfig

TINY_IMAGE_SIZE = 64  # the tiny models' input (the synthetic data's images)


ModelT = TypeVar("ModelT", bound=PreTrainedModel)


@dataclass(frozen=True)
class TransformersFamily(Generic[ModelT]):
    config_class: type[PretrainedConfig]
    model_class: type[ModelT]
    tiny: Callable[[], dict[str, Any]]  # config fields of the tiny random model (``config.tiny`` goes over them)
    mean: tuple[float, ...]  # normalization of the tiny model (a named model's comes from its processor)
    std: tuple[float, ...]
    load_options: dict[str, Any] = field(default_factory=dict)  # extra from_pretrained arguments


def build_model(
    config: VisionEncoderConfig, family: TransformersFamily[ModelT], pretrained: bool
) -> tuple[ModelT, dict[str, Any]]:
    """The model and its architecture (the HF config dict to record)."""
    if not pretrained and config.architecture is not None:
        model = family.model_class(family.config_class.from_dict(config.architecture))
    elif config.name == TINY:
        model = family.model_class(family.config_class(**{**family.tiny(), **config.tiny}))
    else:
        model = family.model_class.from_pretrained(config.name, **family.load_options)
    architecture = {key: value for key, value in model.config.to_dict().items() if not key.startswith("_")}
    return model, architecture


def input_size(config: VisionEncoderConfig, paper_size: int) -> int:
    """A convolutional family's square input size: as configured; unset, the tiny models' or the paper's."""
    if config.image_size is not None:
        return config.image_size
    return TINY_IMAGE_SIZE if config.name == TINY else paper_size


def resolved_config(
    config: VisionEncoderConfig,
    family: TransformersFamily[Any],
    architecture: dict[str, Any],
    image_size: int,
    **regions: Any,
) -> VisionEncoderConfig:
    """``config`` with what serving and rebuilding need filled in; ``regions`` is ``grid=…`` or ``queries=…``."""
    mean, std = normalization(config, family)
    return config.model_copy(
        update={"architecture": architecture, "image_size": image_size, "mean": mean, "std": std, **regions}
    )


def normalization(
    config: VisionEncoderConfig, family: TransformersFamily[Any]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Pixel mean and std: as recorded, the tiny model's, or the named model's image processor's."""
    if config.mean is not None and config.std is not None:
        return config.mean, config.std
    if config.name == TINY:
        return family.mean, family.std
    processor = AutoImageProcessor.from_pretrained(config.name)
    return tuple(processor.image_mean), tuple(processor.image_std)
