"""``late``: the posts' pooled image embedding (mean over its images) concatenated to every word."""

from __future__ import annotations

import torch
from torch import nn

from trainer.model.fusion.base import (
    Fusion,
    FusionInputs,
    FusionOutput,
    encode_text,
    masked_mean,
    no_grounding,
    register_fusion,
)
from trainer.model.text_encoder import TextEncoder


@register_fusion("late")
class LateFusion(Fusion):
    def __init__(self, config, dims) -> None:
        super().__init__(config, dims)
        self.image_projection = nn.Sequential(
            nn.Linear(dims.pooled, config.hidden), nn.GELU(), nn.Dropout(config.dropout)
        )
        self.output_dim = dims.text + config.hidden

    def forward(self, text_encoder: TextEncoder, inputs: FusionInputs) -> FusionOutput:
        words, pooled = encode_text(text_encoder, inputs)
        image = self.image_projection(masked_mean(inputs.pooled, inputs.image_mask))  # [B, H]
        fused = torch.cat([words, image[:, None, :].expand(-1, words.shape[1], -1)], dim=-1)
        attention, relevance = no_grounding(inputs, self.dims.regions)
        return FusionOutput(fused, pooled, attention, relevance)
