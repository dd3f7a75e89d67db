"""``early``: image patches become prefix tokens of the text encoder (``[CLS] patches… sub-tokens…``).

Self-attention then mixes text and image in every layer. Word indices shift by the prefix length, but the
sub-tokens keep their usual position ids and every patch token shares [CLS]'s (patches carry the ViT's own
positions), so masked image slots change nothing and a pretrained encoder sees its text as it always did.
"""

from __future__ import annotations

import torch
from torch import nn

from postlens.schemas import MAX_MODEL_IMAGES
from trainer.model.fusion.base import (
    Fusion,
    FusionInputs,
    FusionOutput,
    masked_mean,
    no_grounding,
    region_sequence,
    register_fusion,
    token_embeddings,
)
from trainer.model.text_encoder import TextEncoder


@register_fusion("early")
class EarlyFusion(Fusion):
    def __init__(self, config, dims) -> None:
        super().__init__(config, dims)
        self.prefix_projection = nn.Sequential(nn.Linear(dims.region, dims.text), nn.LayerNorm(dims.text))
        self.image_slot = nn.Embedding(MAX_MODEL_IMAGES, dims.text)
        self.output_dim = dims.text

    def forward(self, text_encoder: TextEncoder, inputs: FusionInputs) -> FusionOutput:
        prefix, prefix_mask = region_sequence(
            inputs.regions, inputs.image_mask, self.image_slot, self.prefix_projection
        )
        tokens = token_embeddings(text_encoder, inputs)
        embeds = torch.cat([tokens[:, :1], prefix, tokens[:, 1:]], dim=1)
        text_mask = inputs.attention_mask
        mask = torch.cat([text_mask[:, :1], prefix_mask.to(text_mask.dtype), text_mask[:, 1:]], dim=1)
        text_positions = torch.arange(tokens.shape[1], device=tokens.device) + text_encoder.first_position
        prefix_positions = torch.zeros_like(prefix_mask[0], dtype=torch.long) + text_encoder.first_position
        positions = torch.cat([text_positions[:1], prefix_positions, text_positions[1:]])[None].expand(
            tokens.shape[0], -1
        )
        hidden = text_encoder(embeds, mask, positions)
        # Every sub-token after [CLS] moved right by the prefix; index 0 ([CLS]) stays.
        shifted = torch.where(inputs.word_index > 0, inputs.word_index + prefix.shape[1], inputs.word_index)
        words = text_encoder.words(hidden, shifted)
        attention, relevance = no_grounding(inputs, self.dims.regions)
        return FusionOutput(words, masked_mean(words, inputs.word_mask), attention, relevance)
