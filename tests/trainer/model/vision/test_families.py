"""Every vision encoder family (clip, blip, detr, resnet) on a tiny random config runs the whole network with `cross`
and a seed strategy on posts with 0, 1 and 4 images, forward and backward, with valid region boxes; grid families
give their cells, DETR its predicted boxes (and grounding targets follow them); a checkpoint's recorded
architecture rebuilds the same network; a named model loads from a local directory as a hub id would."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from transformers import (
    AutoImageProcessor,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    ConvNextImageProcessor,
    DetrImageProcessor,
    ResNetForImageClassification,
)

from postlens.runtime.config import TINY, FusionConfig, ModelConfig, VisionEncoderConfig
from postlens.runtime.preprocess import Preprocessor
from tests.trainer.model.inputs import random_batch
from tests.trainer.model.test_fusion_seeds import TEXTS
from trainer.model.losses import LossConfig, Targets, total_loss
from trainer.model.network import NerNetwork
from trainer.model.region_targets import covered_regions
from trainer.model.tokenizer import subword_tokenizer
from trainer.model.vision import build_vision_encoder
from trainer.model.vision.base import grid_boxes
from trainer.model.vision.blip import BLIP
from trainer.model.vision.detr import DETR
from trainer.model.vision.resnet import RESNET

FAMILIES = ("clip", "blip", "detr", "resnet")
IMAGE_SIZE = 64  # the convolutional families take any size; the tiny ViTs are built for 64 px


def vision_config(family: str, **fields) -> VisionEncoderConfig:
    size = {} if family == "clip" else {"image_size": IMAGE_SIZE}
    return VisionEncoderConfig(family=family, **size, **fields)


def build(family: str, strategy: str) -> tuple[NerNetwork, Preprocessor]:
    torch.manual_seed(0)
    config = ModelConfig(vision_encoder=vision_config(family), fusion=FusionConfig(name=strategy, hidden=32))
    network, tokenizer, resolved = NerNetwork.build(config)
    return network, Preprocessor.from_config(resolved, subword_tokenizer(tokenizer))


def targets_with_one_box(inputs: dict[str, torch.Tensor]) -> Targets:
    """The first word of every post is shown in its first image, in the image's top-left quarter."""
    batch, words = inputs["word_mask"].shape
    images = inputs["image_mask"].shape[1]
    word_boxes = torch.zeros(batch, words, images, 4)
    word_box_mask = torch.zeros(batch, words, images, dtype=torch.bool)
    if images:
        word_boxes[:, 0, 0] = torch.tensor([0.0, 0.0, 0.5, 0.5])
        word_box_mask[:, 0, 0] = True
    has_images = inputs["image_mask"].any(dim=1)
    return Targets(
        tags=torch.zeros(batch, words, dtype=torch.long),
        word_boxes=word_boxes,
        word_box_mask=word_box_mask,
        unseen_words=torch.zeros(batch, words, dtype=torch.bool),
        relevance=has_images.float(),
        relevance_known=has_images,
    )


def assert_valid_boxes(boxes: torch.Tensor) -> None:
    x0, y0, x1, y1 = boxes.unbind(-1)
    assert ((0 <= x0) & (x0 <= x1) & (x1 <= 1) & (0 <= y0) & (y0 <= y1) & (y1 <= 1)).all()


@pytest.fixture(
    scope="module", params=[(family, strategy) for family in FAMILIES for strategy in ("cross", "mpcfn")], ids=str
)
def network(request) -> tuple[NerNetwork, Preprocessor]:
    return build(*request.param)


@pytest.mark.parametrize("images", [0, 1, 4])
def test_forward_backward_with_valid_region_boxes(network: tuple[NerNetwork, Preprocessor], images: int) -> None:
    net, preprocessor = network
    net.train()
    inputs = random_batch(preprocessor, TEXTS, images)
    output = net.encode(**inputs)
    batch, words = inputs["word_mask"].shape
    regions = net.config.vision_encoder.regions
    assert output.word_region_attention.shape == (batch, words, images, regions)
    assert output.region_boxes.shape == (batch, images, regions, 4)
    assert_valid_boxes(output.region_boxes)
    config = LossConfig(grounding=1.0, relevance=1.0, contrastive=0.1)
    loss, _ = total_loss(config, net, output, targets_with_one_box(inputs), inputs["word_mask"], inputs["image_mask"])
    loss.backward()
    assert torch.isfinite(loss)
    gradients = [p.grad for p in net.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in gradients)
    if images:  # the image reaches the loss through the vision encoder
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.vision_encoder.parameters())
    net.zero_grad()


@pytest.mark.parametrize("family", ["clip", "blip", "resnet"])
def test_grid_families_regions_are_their_cells(family: str) -> None:
    encoder, config = build_vision_encoder(vision_config(family))
    pixels = torch.randn(2, 3, 3, config.image_size, config.image_size)
    features = encoder(pixels)
    assert config.grid is not None and config.queries is None and encoder.regions == config.regions
    assert torch.equal(features.boxes, grid_boxes(config.grid).expand(2, 3, -1, -1))
    assert features.regions.shape == (2, 3, config.regions, encoder.region_dim)
    assert features.pooled.shape == (2, 3, encoder.pooled_dim)


def test_detr_regions_are_its_object_queries_with_boxes_per_image() -> None:
    encoder, config = build_vision_encoder(vision_config("detr"))
    features = encoder(torch.randn(2, 3, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert config.grid is None and config.queries == encoder.regions == DETR.tiny()["num_queries"]
    assert features.regions.shape == (2, 3, config.queries, encoder.region_dim)
    assert_valid_boxes(features.boxes)
    assert not torch.allclose(features.boxes[0, 0], features.boxes[1, 2])  # data-dependent


def test_detr_grounding_targets_follow_its_predicted_boxes_and_leave_them_untrained() -> None:
    net, preprocessor = build("detr", "cross")
    net.train()
    inputs = random_batch(preprocessor, TEXTS, 2)
    output = net.encode(**inputs)
    targets = targets_with_one_box(inputs)
    targets.word_boxes[:, 0, 0] = output.region_boxes.detach()[
        :, 0, 3
    ]  # the gold box is where query 3 found its object
    box_regions = covered_regions(targets.word_boxes, targets.word_box_mask, output.region_boxes)
    assert box_regions[:, 0, 0, 3].all()
    loss, parts = total_loss(
        LossConfig(crf=0.0, grounding=1.0), net, output, targets, inputs["word_mask"], inputs["image_mask"]
    )
    loss.backward()
    assert parts["grounding"] > 0
    head = net.vision_encoder.model.bbox_predictor
    assert all(p.grad is None for p in head.parameters())  # the boxes give the targets' geometry; they are not trained


@pytest.mark.parametrize("family", ["blip", "detr", "resnet"])
def test_a_checkpoint_rebuilds_from_the_recorded_architecture(family: str) -> None:
    torch.manual_seed(0)
    encoder, config = build_vision_encoder(vision_config(family))
    rebuilt, again = build_vision_encoder(
        VisionEncoderConfig.model_validate(config.model_dump(mode="json")), pretrained=False
    )
    rebuilt.load_state_dict(encoder.state_dict())
    assert again == config
    pixels = torch.randn(1, 2, 3, config.image_size, config.image_size)
    with torch.no_grad():
        first, second = encoder.eval()(pixels), rebuilt.eval()(pixels)
    torch.testing.assert_close(first.regions, second.regions)
    torch.testing.assert_close(first.boxes, second.boxes)


def saved_blip(directory: Path) -> nn.Module:
    """A whole tiny BLIP captioning model (vision and text) as a hub checkpoint holds it → its vision tower."""
    text = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "vocab_size": 99,
    }
    model = BlipForConditionalGeneration(BlipConfig(vision_config=BLIP.tiny(), text_config=text))
    model.save_pretrained(directory)
    BlipImageProcessor().save_pretrained(directory)
    return model.vision_model


def saved_resnet(directory: Path) -> nn.Module:
    """An image classifier, as ``microsoft/resnet-101`` is → its ResNet."""
    model = ResNetForImageClassification(RESNET.config_class(**RESNET.tiny()))
    model.save_pretrained(directory)
    ConvNextImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6]).save_pretrained(directory)
    return model.resnet


def saved_detr(directory: Path) -> nn.Module:
    model = DETR.model_class(DETR.config_class(**DETR.tiny()))
    model.save_pretrained(directory)
    DetrImageProcessor(image_mean=[0.3, 0.2, 0.1], image_std=[0.6, 0.5, 0.4]).save_pretrained(directory)
    return model


@pytest.mark.parametrize(("family", "save"), [("blip", saved_blip), ("resnet", saved_resnet), ("detr", saved_detr)])
def test_a_named_model_loads_its_weights_and_normalization(family: str, save, tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = save(tmp_path)
    encoder, config = build_vision_encoder(vision_config(family, name=str(tmp_path)))
    weights = dict(encoder.model.named_parameters())
    for name, parameter in reference.named_parameters():
        assert torch.equal(weights[name], parameter), name
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert config.mean == pytest.approx(processor.image_mean) and config.std == pytest.approx(processor.image_std)


def test_the_config_names_the_family_tiny_model_and_refuses_an_open_clip_tag_elsewhere() -> None:
    assert VisionEncoderConfig().family == "clip"  # checkpoints from before families existed
    assert VisionEncoderConfig(family="detr").name == TINY
    with pytest.raises(ValidationError, match="open_clip tag"):
        VisionEncoderConfig(family="resnet", pretrained="openai")
