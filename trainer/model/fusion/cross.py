"""``cross``: bidirectional cross-attention between words and image patches, gated by image relevance.

Patches first attend to the words (so they know what the text mentions), then each word attends to the patches;
that word→patch attention is what grounding reads. A gate computed from the text, the image and what the words
found decides how much the image may change the words (irrelevant images → gate near 0); it is the post's image
relevance.
"""

from __future__ import annotations

import torch
from torch import nn

from postlens.schemas import MAX_MODEL_IMAGES
from trainer.model.fusion.attention import CrossAttention
from trainer.model.fusion.base import (
    Fusion,
    FusionInputs,
    FusionOutput,
    encode_text,
    has_image,
    masked_mean,
    region_attention,
    region_sequence,
    register_fusion,
)
from trainer.model.text_encoder import TextEncoder


class _Block(nn.Module):
    """Patches attend to words, then words attend to the updated patches."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.patch_to_word = CrossAttention(dim, heads, dropout)
        self.patch_norm = nn.LayerNorm(dim)
        self.word_to_patch = CrossAttention(dim, heads, dropout)

    def forward(self, words, word_mask, patches, patch_mask):
        update, _ = self.patch_to_word(patches, words, word_mask)
        patches = self.patch_norm(patches + update)
        context, attention = self.word_to_patch(words, patches, patch_mask)
        return context, attention, patches


@register_fusion("cross")
class CrossFusion(Fusion):
    grounds = True

    def __init__(self, config, dims) -> None:
        super().__init__(config, dims)
        hidden = config.hidden
        self.word_projection = nn.Sequential(nn.Linear(dims.text, hidden), nn.LayerNorm(hidden))
        self.patch_projection = nn.Sequential(nn.Linear(dims.region, hidden), nn.LayerNorm(hidden))
        self.image_slot = nn.Embedding(MAX_MODEL_IMAGES, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, config.heads, config.dropout) for _ in range(config.layers))
        self.word_norm = nn.LayerNorm(hidden)
        self.gate = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.dropout = nn.Dropout(config.dropout)
        self.output_dim = dims.text + hidden

    def forward(self, text_encoder: TextEncoder, inputs: FusionInputs) -> FusionOutput:
        words, pooled = encode_text(text_encoder, inputs)
        patches, patch_mask = region_sequence(inputs.regions, inputs.image_mask, self.image_slot, self.patch_projection)
        queries = self.word_projection(words)
        for block in self.blocks:
            context, attention, patches = block(queries, inputs.word_mask, patches, patch_mask)
            queries = self.word_norm(queries + context)
        summary = torch.cat(
            [
                masked_mean(queries, inputs.word_mask),
                masked_mean(patches, patch_mask),
                masked_mean(context, inputs.word_mask),
            ],
            dim=-1,
        )
        relevance = torch.sigmoid(self.gate(summary))[:, 0] * has_image(inputs)
        fused = torch.cat([words, relevance[:, None, None] * self.dropout(context)], dim=-1)
        return FusionOutput(fused, pooled, region_attention(attention, inputs, self.dims.regions), relevance)
