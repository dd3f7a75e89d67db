"""``mpcfn`` — Multilevel Predictive Cross-Fusion Network (seed 001).

- Visual features (§3.2): per image a global token (the pooled embedding) and local region tokens (the patches).
- Correlation Prediction Gate (§3.3): a text-only pass of the encoder gives the text feature T; each image's
  relevance r_n = σ(MLP([T, v_n])) weighs all of that image's visual tokens. The post's image relevance is the
  largest r_n. (The paper writes softmax over [v_i, T]; a per-image sigmoid can also say "no image is relevant".)
- Dynamic Gate (§3.4): G = softmax over text-encoder layers of LeakyReLU(W · pooled visual features); layer l
  receives its own projection of the weighted visual tokens scaled by L·G_l as a visual prefix (uniform G = 1).
- Cross-Fusion (§3.5): regions attend to the words (word-aware visual representation), then the words attend to
  those regions (image-aware word representation); each direction is a cross-modal transformer layer. The
  word→region attention is what grounding reads.
- CRF with Flooding (§3.6): the network's CRF; the flood level b is ``loss.flooding``.

Knobs ``correlation_gate`` (CP), ``dynamic_gate`` and ``cross_fusion`` (CF) switch the components off for the
paper's ablation (Table 2; Flooding is ``loss.flooding=0``): a switched-off component is not built. Without the
correlation gate every image weighs 1; without the dynamic gate every layer gets its prefix unscaled; without
cross-fusion the words take only the visual prefixes and nothing is grounded.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from postlens.runtime.config import FusionConfig
from postlens.schemas import MAX_MODEL_IMAGES
from trainer.model.fusion.attention import AttentionBlock
from trainer.model.fusion.base import (
    Fusion,
    FusionInputs,
    FusionOutput,
    encode_text,
    has_image,
    masked_mean,
    no_grounding,
    region_attention,
    region_sequence,
    register_fusion,
)
from trainer.model.fusion.visual_prefix import LayerwiseVisualTokens, encode_text_with_visual_prefix
from trainer.model.text_encoder import TextEncoder


@register_fusion("mpcfn")
class MpcfnFusion(Fusion):
    grounds = True
    knobs: ClassVar[dict[str, Any]] = {"correlation_gate": True, "dynamic_gate": True, "cross_fusion": True}

    def __init__(self, config, dims) -> None:
        super().__init__(config, dims)
        hidden = config.hidden
        self.global_projection = nn.Sequential(nn.Linear(dims.pooled, hidden), nn.LayerNorm(hidden))
        self.region_projection = nn.Sequential(nn.Linear(dims.region, hidden), nn.LayerNorm(hidden))
        self.image_slot = nn.Embedding(MAX_MODEL_IMAGES, hidden)
        self.layer_tokens = LayerwiseVisualTokens(hidden, dims.text, dims.text_layers)
        self.correlation_gate = None
        if self.knob("correlation_gate"):
            self.correlation_gate = nn.Sequential(
                nn.Linear(dims.text + hidden, hidden), nn.GELU(), nn.Linear(hidden, 1)
            )
        self.dynamic_gate = (
            nn.Sequential(nn.Linear(hidden, dims.text_layers), nn.LeakyReLU()) if self.knob("dynamic_gate") else None
        )
        self.cross_fusion = TwoWayCrossFusion(dims.text, hidden, config) if self.knob("cross_fusion") else None
        self.grounds = self.cross_fusion is not None  # without cross-fusion no word attends to a region
        self.output_dim = dims.text + (hidden if self.cross_fusion is not None else 0)

    def forward(self, text_encoder: TextEncoder, inputs: FusionInputs) -> FusionOutput:
        batch, images = inputs.image_mask.shape
        patches, hidden = self.dims.regions, self.config.hidden
        present = has_image(inputs)
        global_tokens = self.global_projection(inputs.pooled) + self.image_slot.weight[:images][None]  # [B, N, H]
        regions, region_mask = region_sequence(
            inputs.regions, inputs.image_mask, self.image_slot, self.region_projection
        )

        if self.correlation_gate is not None:
            _, text_feature = encode_text(text_encoder, inputs)
            joint = torch.cat([text_feature[:, None, :].expand(-1, images, -1), global_tokens], dim=-1)
            image_weight = torch.sigmoid(self.correlation_gate(joint))[:, :, 0] * inputs.image_mask.to(regions.dtype)
            # A zero column first: max over an empty image axis fails.
            relevance = torch.cat([torch.zeros_like(present)[:, None], image_weight], dim=1).max(dim=1).values
        else:
            image_weight = inputs.image_mask.to(regions.dtype)
            relevance = present

        # Visual tokens of each image (global first, then its regions), weighted by the image's relevance.
        tokens = torch.cat([global_tokens[:, :, None, :], regions.reshape(batch, images, patches, hidden)], dim=2)
        tokens = (tokens * image_weight[:, :, None, None]).reshape(batch, images * (patches + 1), hidden)
        token_mask = inputs.image_mask[:, :, None].expand(-1, -1, patches + 1).reshape(batch, images * (patches + 1))
        layer_scale = None
        if self.dynamic_gate is not None:
            pooled_visual = masked_mean(tokens, token_mask)
            layer_scale = self.dynamic_gate(pooled_visual).softmax(dim=-1) * self.dims.text_layers
        prefixes = self.layer_tokens(tokens, layer_scale)
        words, pooled = encode_text_with_visual_prefix(text_encoder, inputs, prefixes, token_mask)

        if self.cross_fusion is None:
            attention, _ = no_grounding(inputs, patches)
            return FusionOutput(words, pooled, attention, relevance)
        aware_words, attention = self.cross_fusion(words, inputs.word_mask, regions, region_mask)
        fused = torch.cat([words, relevance[:, None, None] * aware_words], dim=-1)
        return FusionOutput(fused, pooled, region_attention(attention, inputs, patches), relevance)


class TwoWayCrossFusion(nn.Module):
    """§3.5: regions attend to the words (word-aware visual representation), then the words attend to those regions
    (image-aware word representation) → the image-aware words [B, W, H] and their attention over the regions."""

    def __init__(self, text_dim: int, hidden: int, config: FusionConfig) -> None:
        super().__init__()
        self.word_projection = nn.Sequential(nn.Linear(text_dim, hidden), nn.LayerNorm(hidden))
        self.word_aware_regions = AttentionBlock(hidden, config.heads, config.dropout)
        self.image_aware_words = AttentionBlock(hidden, config.heads, config.dropout, keep_queries=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, words, word_mask, regions, region_mask) -> tuple[torch.Tensor, torch.Tensor]:
        queries = self.word_projection(words)
        aware_regions, _ = self.word_aware_regions(regions, queries, word_mask)
        aware_words, attention = self.image_aware_words(queries, aware_regions, region_mask)
        return self.dropout(aware_words), attention
