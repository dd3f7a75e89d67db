"""The seed papers' strategies (mpcfn, mgips, smcl): their shared visual-prefix encoder reduces to the plain text
encoder without visual tokens; each trains end to end (every fusion weight gets a gradient, auxiliary losses
included) on posts with 0, 1 and 4 images; their knobs are checked by name; each paper-ablation switch removes its
component and leaves a working strategy."""

from __future__ import annotations

import pytest
import torch

from postlens.runtime.config import FusionConfig, ModelConfig
from postlens.runtime.preprocess import Preprocessor
from tests.fixtures_model import SEED_STRATEGIES
from tests.trainer.model.inputs import no_targets, random_batch
from trainer.model.fusion import FusionInputs
from trainer.model.fusion.base import encode_text
from trainer.model.fusion.visual_prefix import encode_text_with_visual_prefix
from trainer.model.losses import LossConfig, total_loss
from trainer.model.network import NerNetwork
from trainer.model.tokenizer import subword_tokenizer
from trainer.run_config import resolve_config

TEXTS = ["Jordan is trending right now", "Visited the old town of Lake Como today", "Madison at the game", "no names"]


def build(strategy: str, **knobs) -> tuple[NerNetwork, Preprocessor]:
    torch.manual_seed(0)
    network, tokenizer, config = NerNetwork.build(ModelConfig(fusion=FusionConfig(name=strategy, hidden=32, **knobs)))
    return network, Preprocessor.from_config(config, subword_tokenizer(tokenizer))


def test_a_visual_prefix_of_nothing_leaves_the_text_encoder_as_it_is() -> None:
    network, preprocessor = build("text")
    network.eval()
    inputs = random_batch(preprocessor, TEXTS, 0)
    fusion_inputs = FusionInputs(
        inputs["input_ids"],
        inputs["attention_mask"],
        inputs["word_index"],
        inputs["word_mask"],
        inputs["image_mask"],
        None,
        None,
    )
    layers = network.config.text_encoder.architecture["num_hidden_layers"]
    batch, width = inputs["input_ids"].shape[0], network.text_encoder.hidden_size
    masked_prefix = [torch.randn(batch, 3, width) for _ in range(layers)]  # present but masked: no effect either
    with torch.no_grad():
        plain, _ = encode_text(network.text_encoder, fusion_inputs)
        prefixed, _ = encode_text_with_visual_prefix(
            network.text_encoder, fusion_inputs, masked_prefix, torch.zeros(batch, 3, dtype=torch.bool)
        )
    torch.testing.assert_close(prefixed, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strategy", SEED_STRATEGIES)
@pytest.mark.parametrize("images", [0, 1, 4])
def test_forward_backward_with_auxiliary_losses(strategy: str, images: int) -> None:
    network, preprocessor = build(strategy)
    network.train()
    inputs = random_batch(preprocessor, TEXTS, images)
    output = network.encode(**inputs)
    config = LossConfig(grounding=1.0, relevance=1.0, contrastive=0.1)
    loss, parts = total_loss(config, network, output, no_targets(inputs), inputs["word_mask"], inputs["image_mask"])
    loss.backward()
    assert torch.isfinite(loss)
    assert set(network.fusion.auxiliary_weights) <= set(parts)  # every auxiliary loss is weighed in
    gradients = {name: p.grad for name, p in network.named_parameters() if p.requires_grad}
    assert all(torch.isfinite(g).all() for g in gradients.values() if g is not None)
    if images == 4:  # every part of the strategy takes part in training
        missing = [
            name for name, g in gradients.items() if name.startswith("fusion.") and (g is None or not g.abs().sum())
        ]
        assert not missing, missing


def test_auxiliary_losses_exist_only_in_training() -> None:
    network, preprocessor = build("smcl")
    inputs = random_batch(preprocessor, TEXTS, 2)
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


def fusion_parameters(network: NerNetwork) -> int:
    return sum(parameter.numel() for parameter in network.fusion.parameters())


# Each paper-ablation switch (off) and the fusion submodule it removes.
SWITCHES = [
    ("mpcfn", {"correlation_gate": False}, "correlation_gate"),
    ("mpcfn", {"dynamic_gate": False}, "dynamic_gate"),
    ("mpcfn", {"cross_fusion": False}, "cross_fusion"),
    ("mgips", {"interweave": False}, "interweave"),
    ("mgips", {"adaptive_gate": False}, "adaptive_gate"),
    ("mgips", {"row_grained": False}, "interweave.text_guided.row_vector"),
    ("mgips", {"column_grained": False}, "interweave.text_guided.column_vector"),
    ("smcl", {"alignment_encoder": False}, "alignment"),
    ("smcl", {"refinement_encoder": False}, "refinement"),
    ("smcl", {"image_guidance": False}, "layer_tokens"),
]


@pytest.mark.parametrize(("strategy", "switch", "component"), SWITCHES, ids=[next(iter(s[1])) for s in SWITCHES])
def test_a_switched_off_component_is_not_built_and_the_rest_still_trains(
    strategy: str, switch: dict, component: str
) -> None:
    full, _ = build(strategy)
    ablated, preprocessor = build(strategy, **switch)
    full_names = {name for name, _ in full.fusion.named_parameters()}
    ablated_names = {name for name, _ in ablated.fusion.named_parameters()}
    assert any(name.startswith(component) for name in full_names)
    assert not any(name.startswith(component) for name in ablated_names)
    assert fusion_parameters(ablated) < fusion_parameters(full)
    # Still a working strategy: forward and backward on 0 and 4 images, outputs shaped as the exporter expects.
    ablated.train()
    for images in (0, 4):
        inputs = random_batch(preprocessor, TEXTS, images)
        output = ablated.encode(**inputs)
        loss = output.emissions.sum() + output.word_region_attention.sum() + output.image_relevance.sum()
        loss.backward()
        assert output.word_region_attention.shape[:3] == (*inputs["word_mask"].shape, images)
        assert torch.isfinite(output.emissions).all()


def test_both_smcl_encoders_off_leaves_no_subspace_loss() -> None:
    network, preprocessor = build("smcl", alignment_encoder=False, refinement_encoder=False)
    assert network.train().encode(**random_batch(preprocessor, TEXTS, 2)).auxiliary_losses == {}
    network, preprocessor = build("smcl", alignment_encoder=False)
    assert set(network.train().encode(**random_batch(preprocessor, TEXTS, 2)).auxiliary_losses) == {"difference"}


def test_mgips_needs_one_granularity() -> None:
    with pytest.raises(ValueError, match="row- or the column-grained"):
        build("mgips", row_grained=False, column_grained=False)


@pytest.mark.parametrize(
    ("strategy", "loss_name"), [("mgips", "implicit_positive"), ("smcl", "similarity"), ("smcl", "difference")]
)
def test_an_auxiliary_loss_weighed_zero_drops_out_of_the_objective(strategy: str, loss_name: str) -> None:
    network, preprocessor = build(strategy)
    network.train()
    inputs = random_batch(preprocessor, TEXTS, 2)
    output = network.encode(**inputs)
    targets, masks = no_targets(inputs), (inputs["word_mask"], inputs["image_mask"])
    full, parts = total_loss(LossConfig(), network, output, targets, *masks)
    without, _ = total_loss(LossConfig(auxiliary={loss_name: 0.0}), network, output, targets, *masks)
    weight = network.fusion.auxiliary_weights[loss_name]
    assert parts[loss_name] > 0
    assert float((full - without).detach()) == pytest.approx(weight * parts[loss_name], abs=1e-5)  # float32 sums
