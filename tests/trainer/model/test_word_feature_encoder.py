"""The network with word-shape and character features: casing reaches the emissions, gradients reach the features,
and with the features off the network is the plain one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from postlens.runtime.config import FusionConfig, ModelConfig, WordFeaturesConfig
from postlens.runtime.preprocess import Preprocessor
from trainer.model.network import NerNetwork, word_to_first_tokens
from trainer.model.tokenizer import subword_tokenizer


def build(shape: bool, chars: bool) -> tuple[NerNetwork, Preprocessor]:
    torch.manual_seed(0)
    config = ModelConfig(
        fusion=FusionConfig(name="cross", hidden=32), word_features=WordFeaturesConfig(shape=shape, chars=chars)
    )
    network, tokenizer, resolved = NerNetwork.build(config)
    return network, Preprocessor.from_config(resolved, subword_tokenizer(tokenizer))


def encode(preprocessor: Preprocessor, texts: list[str]) -> dict[str, torch.Tensor]:
    size = preprocessor.image_size
    images, mask = np.zeros((len(texts), 0, size, size, 3), np.uint8), np.zeros((len(texts), 0), bool)
    inputs, _ = preprocessor.encode(texts, images, mask)
    return {name: torch.from_numpy(value) for name, value in inputs.items()}


@pytest.mark.parametrize(("shape", "chars"), [(False, False), (True, False), (False, True), (True, True)])
def test_casing_reaches_the_emissions_only_through_the_features(shape: bool, chars: bool) -> None:
    network, preprocessor = build(shape, chars)
    inputs = encode(preprocessor, ["Obama visits Paris", "obama visits paris"])
    assert {"word_shape", "word_chars"} & set(inputs) == {
        name for name, on in (("word_shape", shape), ("word_chars", chars)) if on
    }
    with torch.no_grad():
        emissions = network.eval()(**inputs)[0]
    # The uncased tokenizer gives both posts the same sub-tokens: only the features can tell them apart.
    difference = float((emissions[0] - emissions[1]).abs().max())
    assert difference > 1e-3 if shape or chars else difference < 1e-5  # rows of a batch differ by round-off


def test_gradients_reach_the_feature_encoders() -> None:
    network, preprocessor = build(True, True)
    output = network.train().encode(**encode(preprocessor, ["Obama visits #Paris 🎉", "NFL"]))
    output.emissions.sum().backward()
    for module in (
        network.word_features.shape,
        network.word_features.chars.embedding,
        network.word_features.chars.convolution,
    ):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    assert network.word_features.shape.weight.grad[0].abs().sum() == 0  # padding shape stays zero


def test_word_values_land_on_each_words_first_sub_token() -> None:
    values = torch.tensor([[[1.0], [2.0], [3.0]]])
    word_index = torch.tensor([[1, 3, 0]])  # the third word is padding
    word_mask = torch.tensor([[True, True, False]])
    placed = word_to_first_tokens(values, word_index, word_mask, length=5)
    assert placed[0, :, 0].tolist() == [0.0, 1.0, 0.0, 2.0, 0.0]


def test_features_into_the_encoder_start_as_nothing_and_then_reach_its_context() -> None:
    torch.manual_seed(0)
    config = ModelConfig(
        fusion=FusionConfig(name="text", hidden=32),
        word_features=WordFeaturesConfig(shape=True, chars=True, into_encoder=True),
    )
    network, tokenizer, resolved = NerNetwork.build(config)
    inputs = encode(
        Preprocessor.from_config(resolved, subword_tokenizer(tokenizer)), ["Obama visits Paris", "obama visits paris"]
    )
    network.eval()

    def encoder_words() -> torch.Tensor:  # the fused word states, before the features join the emissions
        with torch.no_grad():
            captured = {}
            handle = network.fusion.register_forward_hook(
                lambda module, args, output: captured.update(words=output.words)
            )
            network(**inputs)
            handle.remove()
        return captured["words"]

    words = encoder_words()
    assert float((words[0] - words[1]).abs().max()) < 1e-5  # zero-initialised: the pretrained encoder as it was
    torch.nn.init.normal_(network.feature_offsets.weight)  # what training would learn
    words = encoder_words()
    # "visits" is lower-case in both posts: it differs only through its capitalised neighbours, i.e. in context.
    assert float((words[0, 1] - words[1, 1]).abs().max()) > 1e-3
