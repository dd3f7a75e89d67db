"""``mgips`` — Multi-Granularity Interweave with Implicit Positive Sample Contrastive Learning (seed 003).

- Mutual-attention encoder (§3.2): every text-encoder layer also attends to the image patches as extra keys and
  values. (The paper takes them from the matching image-encoder layer; here each text layer projects the vision
  encoder's final patch tokens.)
- Multi-Granularity Excavator (§3.3.1, eq. 5–8): word×patch interactions f₁(x)⊙f₂(y) scored two ways —
  column-grained (each query's weights over the other modality, softmax over keys) and row-grained (each key's
  weights over the queries, softmax over queries) — both read out and summed through f₃.
- Interweave encoder (§3.3.2, eq. 9–11): an image-guided excavator first (X = MGE(patches, words)), then per
  layer X += MGE(X, T) and T += MGE(T, X), the excavators shared across layers (``fusion.layers``; the paper's
  best is 1). The last text-guided column weights are word→patch attention, with a "nothing here" key (grounding).
- Pre/post adaptive gate (§3.3.3, eq. 12–13): I = σ(W₁T + W₂H), z = I⊙H + (1−I)⊙T, z goes to the CRF. The
  post's image relevance is the mean of 1−I over its words (how much fused signal the gate lets through).
- IPS-CL (§3.4, eq. 14–16) with the standard contrastive loss (eq. 17), both returned as auxiliary losses
  (weights 1 and 1, eq. 19) on cosine similarities of pre-fusion text and post-interweave image features; each
  text's positives are its own image and the ``ips_top_k`` most similar in-batch images (paper: K = 3).

Switches for the paper's ablation (Table 3), each removing its component: ``interweave`` (w/o MGI: the CRF reads
the mutual-attention encoder's words, nothing is grounded, the contrastive losses see the projected patches),
``row_grained`` / ``column_grained`` (single-granularity excavators); besides the table, ``adaptive_gate`` (w/o it,
z = T + H and every post with images counts as relevant). w/o IPS-CL is ``loss.auxiliary.implicit_positive=0``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from postlens.schemas import MAX_MODEL_IMAGES
from trainer.model.fusion.attention import _MASKED
from trainer.model.fusion.base import (
    Fusion,
    FusionInputs,
    FusionOutput,
    has_image,
    masked_mean,
    no_grounding,
    region_attention,
    region_sequence,
    register_fusion,
)
from trainer.model.fusion.objectives import implicit_positive_pairs, multi_positive_nce
from trainer.model.fusion.visual_prefix import LayerwiseVisualTokens, encode_text_with_visual_prefix
from trainer.model.text_encoder import TextEncoder


class GranularityExcavator(nn.Module):
    """MGE(queries, context) → an update of the queries [B, Q, D] and each query's weights over the real context
    items [B, Q, C] (a learned null item takes the rest): the column-grained weights, or without them the row-grained
    ones renormalised per query."""

    def __init__(self, dim: int, dropout: float, row: bool, column: bool) -> None:
        super().__init__()
        if not (row or column):
            raise ValueError("a granularity excavator needs the row- or the column-grained weights, or both")
        self.query_encoder = nn.Sequential(nn.Linear(dim, dim), nn.GELU())  # f₁(Linear₁(·))
        self.context_encoder = nn.Sequential(nn.Linear(dim, dim), nn.GELU())  # f₂(Linear₂(·))
        # M₃ and M₄ (ones: a plain dot product at the start)
        self.row_vector = nn.Parameter(torch.ones(dim)) if row else None
        self.column_vector = nn.Parameter(torch.ones(dim)) if column else None
        self.null_context = nn.Parameter(torch.zeros(dim))
        self.output = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout))  # f₃

    def forward(self, queries, query_mask, context, context_mask) -> tuple[torch.Tensor, torch.Tensor]:
        batch, dim = queries.shape[0], queries.shape[2]
        q = self.query_encoder(queries)
        c = torch.cat([self.null_context.expand(batch, 1, dim), self.context_encoder(context)], dim=1)
        c_mask = torch.cat([context_mask.new_ones((batch, 1)), context_mask], dim=1)
        # The readouts, and the weights of each granularity (the column-grained, when present, are returned).
        readouts: list[torch.Tensor] = []
        granularity_weights: list[torch.Tensor] = []
        # (f₁(x) ⊙ f₂(y)) · M = (f₁(x) ⊙ M) · f₂(y): eq. 5–6 without materialising the [Q, C, D] interactions.
        if self.row_vector is not None:
            row_scores = (q * self.row_vector) @ c.transpose(1, 2) / math.sqrt(dim)
            row = torch.where(query_mask[:, :, None], row_scores, torch.full_like(row_scores, _MASKED)).softmax(dim=1)
            row = row * c_mask[:, None, :].to(row.dtype)
            readouts.append(row @ c)
            granularity_weights.append(row / row.sum(dim=-1, keepdim=True).clamp(min=1e-9))
        if self.column_vector is not None:
            column_scores = (q * self.column_vector) @ c.transpose(1, 2) / math.sqrt(dim)
            weights = torch.where(c_mask[:, None, :], column_scores, torch.full_like(column_scores, _MASKED)).softmax(
                dim=-1
            )
            readouts.append(weights @ c)
            granularity_weights.append(weights)
        return self.output(sum(readouts)), granularity_weights[-1][:, :, 1:]


@register_fusion("mgips")
class MgipsFusion(Fusion):
    grounds = True
    knobs: ClassVar[dict[str, Any]] = {
        "ips_top_k": 3,
        "contrastive_temperature": 0.07,
        "interweave": True,
        "row_grained": True,
        "column_grained": True,
        "adaptive_gate": True,
    }
    auxiliary_weights: ClassVar[dict[str, float]] = {"implicit_positive": 1.0, "standard_contrastive": 1.0}

    def __init__(self, config, dims) -> None:
        super().__init__(config, dims)
        hidden = config.hidden
        self.layer_tokens = LayerwiseVisualTokens(dims.region, dims.text, dims.text_layers)
        self.word_projection = nn.Sequential(nn.Linear(dims.text, hidden), nn.LayerNorm(hidden))
        self.patch_projection = nn.Sequential(nn.Linear(dims.region, hidden), nn.LayerNorm(hidden))
        self.image_slot = nn.Embedding(MAX_MODEL_IMAGES, hidden)
        self.interweave = None
        if self.knob("interweave"):
            granularity = {"row": self.knob("row_grained"), "column": self.knob("column_grained")}
            self.interweave = nn.ModuleDict(
                {
                    "image_guided": GranularityExcavator(hidden, config.dropout, **granularity),
                    "text_guided": GranularityExcavator(hidden, config.dropout, **granularity),
                    "fused_projection": nn.Linear(hidden, dims.text),
                }
            )
        self.grounds = self.interweave is not None  # without the interweave encoder no word attends to a region
        self.adaptive_gate = None
        if self.interweave is not None and self.knob("adaptive_gate"):
            # W₁ (and b) on the post-fusion features, W₂ on the pre-fusion ones
            self.adaptive_gate = nn.ModuleDict(
                {"post": nn.Linear(dims.text, dims.text), "pre": nn.Linear(dims.text, dims.text, bias=False)}
            )
        self.text_head = nn.Linear(hidden, hidden)  # g of eq. 14
        self.image_head = nn.Linear(hidden, hidden)  # f of eq. 14
        self.output_dim = dims.text

    def forward(self, text_encoder: TextEncoder, inputs: FusionInputs) -> FusionOutput:
        batch, images = inputs.image_mask.shape
        patches = self.dims.regions
        flat_patches = inputs.regions.reshape(batch, images * patches, self.dims.region)
        patch_mask = inputs.image_mask[:, :, None].expand(-1, -1, patches).reshape(batch, images * patches)
        words, pooled = encode_text_with_visual_prefix(
            text_encoder, inputs, self.layer_tokens(flat_patches), patch_mask
        )

        text = self.word_projection(words)
        visual, _ = region_sequence(inputs.regions, inputs.image_mask, self.image_slot, self.patch_projection)
        if self.interweave is None:
            attention, _ = no_grounding(inputs, patches)
            fused, relevance = words, has_image(inputs)
        else:
            visual, interwoven, attention = self._interweave(
                self.interweave, visual, patch_mask, text, inputs.word_mask
            )
            fused, relevance = self._gate(words, self.interweave["fused_projection"](interwoven), inputs)
            attention = region_attention(attention, inputs, patches)
        auxiliary = self._contrastive_losses(text, visual, inputs, patch_mask) if self.training else {}
        return FusionOutput(fused, pooled, attention, relevance, auxiliary)

    def _interweave(
        self, interweave: nn.ModuleDict, visual, patch_mask, text, word_mask
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eq. 9–11 → the interwoven visual and text features and the last word→patch weights."""
        image_guided, text_guided = interweave["image_guided"], interweave["text_guided"]
        visual, _ = image_guided(visual, patch_mask, text, word_mask)  # eq. 9
        interwoven = text
        for _ in range(self.config.layers):  # eq. 10–11, excavators shared across layers
            update, _ = image_guided(visual, patch_mask, interwoven, word_mask)
            visual = visual + update
            update, attention = text_guided(interwoven, word_mask, visual, patch_mask)
            interwoven = interwoven + update
        return visual, interwoven, attention

    def _gate(self, words, post_fusion, inputs: FusionInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 12–13 → the CRF's input z and the post's image relevance."""
        if self.adaptive_gate is None:
            return words + post_fusion, has_image(inputs)
        keep_text = torch.sigmoid(
            self.adaptive_gate["post"](post_fusion) + self.adaptive_gate["pre"](words)
        )  # I, eq. 12
        fused = keep_text * words + (1 - keep_text) * post_fusion  # eq. 13
        relevance = masked_mean((1 - keep_text).mean(dim=-1, keepdim=True), inputs.word_mask)[:, 0] * has_image(inputs)
        return fused, relevance

    def _contrastive_losses(self, text, visual, inputs: FusionInputs, patch_mask) -> dict[str, torch.Tensor]:
        keep = inputs.image_mask.any(dim=1)
        text_features = F.normalize(self.text_head(masked_mean(text, inputs.word_mask)[keep]), dim=-1)
        image_features = F.normalize(self.image_head(masked_mean(visual, patch_mask)[keep]), dim=-1)
        if text_features.shape[0] < 2:  # no in-batch images to contrast with
            zero = text.sum() * 0.0
            return {"implicit_positive": zero, "standard_contrastive": zero}
        logits = text_features @ image_features.T / self.knob("contrastive_temperature")
        own = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        return {
            "implicit_positive": multi_positive_nce(logits, implicit_positive_pairs(logits, self.knob("ips_top_k"))),
            "standard_contrastive": multi_positive_nce(logits, own),
        }
