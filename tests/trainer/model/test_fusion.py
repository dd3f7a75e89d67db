"""Every registered fusion strategy runs the whole network on posts with 0, 1 and 4 images, with the shapes of
docs/contracts.md and attention/relevance in range."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from postlens.runtime.config import FusionConfig, ModelConfig
from postlens.runtime.preprocess import Preprocessor
from trainer.model.fusion import fusion_names
from trainer.model.network import NerNetwork
from trainer.model.tokenizer import subword_tokenizer

TEXTS = ["Jordan is trending right now", "Visited the old town of Lake Como today with @friend #travel 🎉"]


@pytest.fixture(scope="module", params=fusion_names())
def network(request) -> tuple[NerNetwork, Preprocessor]:
    torch.manual_seed(0)
    network, tokenizer, config = NerNetwork.build(ModelConfig(fusion=FusionConfig(name=request.param, hidden=32)))
    return network.eval(), Preprocessor.from_config(config, subword_tokenizer(tokenizer))


def test_all_strategies_are_registered() -> None:
    assert {"text", "late", "early", "cross"} <= set(fusion_names())


@pytest.mark.parametrize("images", [0, 1, 4])
def test_forward_shapes_and_ranges(network: tuple[NerNetwork, Preprocessor], images: int) -> None:
    net, preprocessor = network
    size = preprocessor.image_size
    rng = np.random.default_rng(images)
    pixels = rng.integers(0, 256, size=(len(TEXTS), images, size, size, 3), dtype=np.uint8)
    mask = np.ones((len(TEXTS), images), dtype=bool)
    if images:
        mask[1, images // 2 + 1 :] = False  # second post has fewer images than slots
    inputs, words = preprocessor.encode(TEXTS, pixels, mask)
    with torch.no_grad():
        emissions, attention, relevance, boxes = net(
            **{name: torch.from_numpy(value) for name, value in inputs.items()}
        )

    width = max(len(post_words) for post_words in words)
    assert emissions.shape == (len(TEXTS), width, len(net.scheme.labels))
    assert attention.shape == (len(TEXTS), width, images, net.config.vision_encoder.regions)
    assert boxes.shape == (len(TEXTS), images, net.config.vision_encoder.regions, 4)
    assert relevance.shape == (len(TEXTS),)
    assert torch.isfinite(emissions).all() and torch.isfinite(attention).all()
    assert (attention >= 0).all() and (attention.sum(dim=(2, 3)) <= 1 + 1e-5).all()
    assert ((relevance >= 0) & (relevance <= 1)).all()
    word_mask = torch.from_numpy(inputs["word_mask"])
    assert (attention[~word_mask] == 0).all()  # padding words attend nowhere
    if images:
        assert (attention[1, :, ~torch.from_numpy(mask[1])] == 0).all()  # masked image slots get no attention
    else:
        assert (relevance == 0).all()  # no image, no relevance


def test_image_count_does_not_change_text_only_result(network: tuple[NerNetwork, Preprocessor]) -> None:
    """Padding image slots (masked) must not change anything: the mask, not the slot count, decides."""
    net, preprocessor = network
    size = preprocessor.image_size
    none, _ = preprocessor.encode(TEXTS, np.zeros((2, 0, size, size, 3), np.uint8), np.zeros((2, 0), bool))
    padded, _ = preprocessor.encode(TEXTS, np.full((2, 3, size, size, 3), 200, np.uint8), np.zeros((2, 3), bool))
    with torch.no_grad():
        first = net(**{k: torch.from_numpy(v) for k, v in none.items()})[0]
        second = net(**{k: torch.from_numpy(v) for k, v in padded.items()})[0]
    torch.testing.assert_close(first, second, atol=1e-5, rtol=1e-5)
