"""Each text encoder family (BERT, RoBERTa, SpanBERT) in the network: trains end to end with 0, 1 and 4 images,
numbers positions its own way, rebuilds from a checkpoint without its original files, and loads from a local
directory laid out as the hub publishes it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, PreTrainedTokenizerBase

from postlens.runtime.config import (
    MINILM,
    TINY_ROBERTA,
    TINY_SPANBERT,
    TINY_TEXT,
    FusionConfig,
    ModelConfig,
    TextEncoderConfig,
)
from postlens.runtime.preprocess import Preprocessor
from tests.trainer.model.inputs import no_targets, random_batch
from trainer.model.checkpoint import load_checkpoint, save_checkpoint
from trainer.model.losses import LossConfig, total_loss
from trainer.model.network import NerNetwork
from trainer.model.text_encoder import build_text_encoder, with_dropout
from trainer.model.tokenizer import load_tokenizer, subword_tokenizer

FAMILIES = (TINY_TEXT, TINY_ROBERTA, TINY_SPANBERT)
TEXTS = [
    "Jordan is trending right now 🔥",
    "Visited the old town of Lake Como today",
    "北京 at the game",
    "Apple apple",
]


def build(family: str, strategy: str = "cross") -> tuple[NerNetwork, PreTrainedTokenizerBase, Preprocessor]:
    torch.manual_seed(0)
    config = ModelConfig(text_encoder=TextEncoderConfig(name=family), fusion=FusionConfig(name=strategy, hidden=32))
    network, tokenizer, config = NerNetwork.build(config)
    return network, tokenizer, Preprocessor.from_config(config, subword_tokenizer(tokenizer))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("strategy", ["cross", "early"])  # early feeds visual tokens through the encoder's positions
@pytest.mark.parametrize("images", [0, 1, 4])
def test_forward_backward(family: str, strategy: str, images: int) -> None:
    network, _, preprocessor = build(family, strategy)
    network.train()
    inputs = random_batch(preprocessor, TEXTS, images)
    output = network.encode(**inputs)
    loss, _ = total_loss(
        LossConfig(grounding=1.0, relevance=1.0),
        network,
        output,
        no_targets(inputs),
        inputs["word_mask"],
        inputs["image_mask"],
    )
    loss.backward()
    assert torch.isfinite(loss)
    encoder_gradients = [
        p.grad for name, p in network.named_parameters() if name.startswith("text_encoder.") and p.grad is not None
    ]
    assert encoder_gradients and all(torch.isfinite(g).all() for g in encoder_gradients)
    assert any(g.abs().sum() > 0 for g in encoder_gradients)


def test_each_family_pads_and_numbers_positions_like_its_real_model() -> None:
    expected = {TINY_TEXT: ("bert", 0, 0), TINY_ROBERTA: ("roberta", 1, 2), TINY_SPANBERT: ("bert", 0, 0)}
    for family, (model_type, pad_id, first_position) in expected.items():
        network, _, preprocessor = build(family)
        inputs = random_batch(preprocessor, TEXTS, 0)
        assert network.config.text_encoder.architecture["model_type"] == model_type
        assert network.text_encoder.first_position == first_position
        assert (inputs["input_ids"][inputs["attention_mask"] == 0] == pad_id).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_checkpoint_rebuilds_from_its_architecture_and_saved_tokenizer(family: str, tmp_path: Path) -> None:
    network, tokenizer, preprocessor = build(family)
    save_checkpoint(tmp_path, {"model": network.config.model_dump(mode="json")}, network, tokenizer)
    rebuilt, rebuilt_tokenizer, rebuilt_config, _ = load_checkpoint(tmp_path)
    assert rebuilt_config.text_encoder.architecture == network.config.text_encoder.architecture
    assert rebuilt_tokenizer.get_vocab() == tokenizer.get_vocab()
    inputs = random_batch(Preprocessor.from_config(rebuilt_config, subword_tokenizer(rebuilt_tokenizer)), TEXTS, 1)
    assert torch.equal(inputs["input_ids"], random_batch(preprocessor, TEXTS, 1)["input_ids"])
    with torch.no_grad():
        for want, got in zip(network.eval()(**inputs), rebuilt(**inputs), strict=True):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("family", [MINILM, TINY_ROBERTA])  # pretrained weights, and a tiny random encoder
def test_dropout_zero_makes_training_passes_repeatable_and_is_recorded(family: str) -> None:
    def two_training_passes(config: TextEncoderConfig) -> tuple[torch.Tensor, torch.Tensor, dict]:
        encoder, tokenizer, resolved = build_text_encoder(config)
        encoder.train()
        batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
        embeds = encoder.embed_tokens(batch["input_ids"])
        return encoder(embeds, batch["attention_mask"]), encoder(embeds, batch["attention_mask"]), resolved.architecture

    first, second, architecture = two_training_passes(TextEncoderConfig(name=family, dropout=0.0))
    assert torch.equal(first, second)
    assert architecture["hidden_dropout_prob"] == architecture["attention_probs_dropout_prob"] == 0.0
    first, second, architecture = two_training_passes(TextEncoderConfig(name=family))  # the model's own dropout
    assert not torch.equal(first, second) and architecture["hidden_dropout_prob"] > 0


def test_dropout_on_an_encoder_without_bert_style_rates_is_refused_not_ignored() -> None:
    with pytest.raises(ValueError, match=re.escape("text_encoder.dropout: a distilbert encoder has no")):
        with_dropout(AutoConfig.for_model("distilbert"), 0.0)
    assert with_dropout(AutoConfig.for_model("distilbert"), None).dropout == 0.1  # unset: the model's own


def test_a_tiny_family_builds_the_same_tokenizer_in_every_process() -> None:
    # A fresh tiny model is reproducible from its config alone (its tokenizer is trained when it is built); tokenizers
    # seeds its hash maps anew in each process, so another process is the test.
    families = [TINY_ROBERTA, TINY_SPANBERT]
    script = (
        "import json, sys; from trainer.model.tokenizer import load_tokenizer; "
        "print(json.dumps([load_tokenizer(f).get_vocab() for f in sys.argv[1:]]))"
    )
    other_process = subprocess.run(
        [sys.executable, "-c", script, *families], capture_output=True, text=True, check=True
    ).stdout
    # the last line: tokenizers' trainers may print blank progress lines first
    assert json.loads(other_process.strip().splitlines()[-1]) == [
        load_tokenizer(family).get_vocab() for family in families
    ]


@pytest.mark.parametrize(("family", "lowercase"), [(TINY_ROBERTA, None), (TINY_SPANBERT, False)])
def test_a_local_directory_loads_like_a_hub_id(family: str, lowercase: bool | None, tmp_path: Path) -> None:
    # The real ids' code path, offline: a model directory as from_pretrained reads it (weights, config, tokenizer).
    encoder, tokenizer, _ = build_text_encoder(TextEncoderConfig(name=family))
    encoder.model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer, config = build_text_encoder(TextEncoderConfig(name=str(tmp_path), lowercase=lowercase))
    assert config.architecture["model_type"] == encoder.model.config.model_type
    assert loaded.first_position == encoder.first_position
    ids = torch.tensor(loaded_tokenizer(["Apple", "apple"], is_split_into_words=True)["input_ids"])[None]
    assert ids.tolist() == [tokenizer(["Apple", "apple"], is_split_into_words=True)["input_ids"]]
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(loaded.embed_tokens(ids), mask), encoder.eval()(encoder.embed_tokens(ids), mask)
        )
