"""The seed papers' strategies (mpcfn, mgips, smcl): their shared visual-prefix encoder reduces to the plain text
encoder without visual tokens; each trains end to end (every fusion weight gets a gradient, auxiliary losses
included) on posts with 0, 1 and 4 images; their knobs are checked by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from postlens.runtime.config import FusionConfig, ModelConfig
from postlens.runtime.preprocess import Preprocessor
from trainer.model.fusion import FusionInputs
from trainer.model.fusion.base import encode_text
from trainer.model.fusion.visual_prefix import encode_text_with_visual_prefix
from trainer.model.losses import LossConfig, Targets, total_loss
from trainer.model.network import NerNetwork
from trainer.model.tokenizer import subword_tokenizer
from trainer.run_config import resolve_config

SEED_STRATEGIES = ("mpcfn", "mgips", "smcl")
TEXTS = ["Jordan is trending right now", "Visited the old town of Lake Como today", "Madison at the game", "no names"]


def build(strategy: str, **knobs) -> tuple[NerNetwork, Preprocessor]:
    torch.manual_seed(0)
    network, tokenizer, config = NerNetwork.build(ModelConfig(fusion=FusionConfig(name=strategy, hidden=32, **knobs)))
    return network, Preprocessor.from_config(config, subword_tokenizer(tokenizer))


def encoded(preprocessor: Preprocessor, images: int) -> dict[str, torch.Tensor]:
    size = preprocessor.image_size
    pixels = np.random.default_rng(images).integers(0, 256, size=(len(TEXTS), images, size, size, 3), dtype=np.uint8)
    mask = np.ones((len(TEXTS), images), dtype=bool)
    if images:
        mask[1, 1:] = False  # ragged image counts
    inputs, _ = preprocessor.encode(TEXTS, pixels, mask)
    return {name: torch.from_numpy(value) for name, value in inputs.items()}


def test_a_visual_prefix_of_nothing_leaves_the_text_encoder_as_it_is() -> None:
    network, preprocessor = build("text")
    network.eval()
    inputs = encoded(preprocessor, 0)
    fusion_inputs = FusionInputs(inputs["input_ids"], inputs["attention_mask"], inputs["word_index"], inputs["word_mask"], inputs["image_mask"], None, None)
    layers = network.config.text_encoder.architecture["num_hidden_layers"]
    batch, width = inputs["input_ids"].shape[0], network.text_encoder.hidden_size
    masked_prefix = [torch.randn(batch, 3, width) for _ in range(layers)]  # present but masked: no effect either
    with torch.no_grad():
        plain, _ = encode_text(network.text_encoder, fusion_inputs)
        prefixed, _ = encode_text_with_visual_prefix(network.text_encoder, fusion_inputs, masked_prefix, torch.zeros(batch, 3, dtype=torch.bool))
    torch.testing.assert_close(prefixed, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strategy", SEED_STRATEGIES)
@pytest.mark.parametrize("images", [0, 1, 4])
def test_forward_backward_with_auxiliary_losses(strategy: str, images: int) -> None:
    network, preprocessor = build(strategy)
    network.train()
    inputs = encoded(preprocessor, images)
    output = network.encode(**inputs)
    batch, words = inputs["word_mask"].shape
    targets = Targets(
        tags=torch.zeros(batch, words, dtype=torch.long),
        box_patches=torch.zeros_like(output.word_patch_attention),
        unseen_words=torch.zeros(batch, words, dtype=torch.bool),
        relevance=torch.zeros(batch),
        relevance_known=torch.zeros(batch, dtype=torch.bool),
    )
    config = LossConfig(grounding=1.0, relevance=1.0, contrastive=0.1)
    loss, parts = total_loss(config, network, output, targets, inputs["word_mask"], inputs["image_mask"])
    loss.backward()
    assert torch.isfinite(loss)
    assert set(network.fusion.auxiliary_weights) <= set(parts)  # every auxiliary loss is weighed in
    gradients = {name: p.grad for name, p in network.named_parameters() if p.requires_grad}
    assert all(torch.isfinite(g).all() for g in gradients.values() if g is not None)
    if images == 4:  # every part of the strategy takes part in training
        missing = [name for name, g in gradients.items() if name.startswith("fusion.") and (g is None or not g.abs().sum())]
        assert not missing, missing


def test_auxiliary_losses_exist_only_in_training() -> None:
    network, preprocessor = build("smcl")
    inputs = encoded(preprocessor, 2)
    assert set(network.train().encode(**inputs).auxiliary_losses) == {"similarity", "difference"}
    assert network.eval().encode(**inputs).auxiliary_losses == {}


def test_knobs_are_set_by_name_and_a_misspelt_one_is_refused() -> None:
    config = resolve_config("tiny", "mgips", ["model.fusion.ips_top_k=2", "loss.auxiliary.implicit_positive=0.5"])
    network, _, _ = NerNetwork.build(config.model)
    assert network.fusion.knob("ips_top_k") == 2 and config.loss.auxiliary == {"implicit_positive": 0.5}
    with pytest.raises(ValueError, match="no setting ips_topk"):
        NerNetwork.build(resolve_config("tiny", "mgips", ["model.fusion.ips_topk=2"]).model)


@pytest.mark.parametrize("preset", SEED_STRATEGIES)
def test_paper_presets_validate(preset: str) -> None:
    config = resolve_config(preset)
    assert config.model.fusion.name == preset
