"""``smcl`` — Symmetric Fusion with Contrastive Learning for multi-image posts (seed 002).

- Multi-image representation (§3.3): each image's pooled embedding plus a learnable temporal position embedding
  (its slot, eq. 1), then transformer layers across the post's images (``fusion.layers``) → G.
- Image guidance (IGM, §3.4.2): every text-encoder layer l attends to W_z^l·G as extra keys and values, with the
  dynamic threshold: visual weights under ``threshold_scale`` × the row's mean visual weight are dropped and the
  row re-normalised (0 turns the threshold off).
- Refinement and alignment encoders (§3.5.1): AE (shared by both modalities) and RE (one per modality), each a
  fully connected layer with ReLU; the auxiliary losses are CMD of order ``cmd_order`` between the two modalities'
  shared representations (weight α = 0.3) and soft orthogonality between shared and specific representations and
  between the two specific ones (weight β = 0.2) — §3.7 and §4.5's baseline.
- Symmetric fusion (SFM, §3.5.2): one transformer layer (shared) enhances each representation, Sigmoid(FC(P_a ⊕ P_r))
  joins them per modality; the images attend to the words, then the words attend to the regions of those
  text-aware images, and FC(FFN(·)) of that gives Hyper; the CRF reads [H; Hyper].

Switches for the paper's ablation (Table 3), each removing its component: ``alignment_encoder`` (w/o AE, and so
w/o the CMD loss), ``refinement_encoder`` (w/o RE, and so w/o the difference loss; both off = w/o AE+RE: the
symmetric fusion reads the projected representations themselves) and ``image_guidance`` (w/o IGM: the text
encoder runs on the text alone). The losses alone: ``loss.auxiliary.similarity=0`` / ``loss.auxiliary.difference=0``.

Departures: the paper represents an image by its [CLS] only; here the word side attends to the image's regions
(patches, grid cells or DETR's objects, each carrying its image's fused representation) so that entities can be
grounded in a region. The post's image relevance is the largest share of attention any word puts on the images.
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn

from postlens.schemas import MAX_MODEL_IMAGES
from trainer.model.fusion.attention import AttentionBlock
from trainer.model.fusion.base import (
    Fusion,
    FusionInputs,
    FusionOutput,
    encode_text,
    masked_mean,
    region_attention,
    register_fusion,
)
from trainer.model.fusion.objectives import central_moment_discrepancy, soft_orthogonality
from trainer.model.fusion.visual_prefix import LayerwiseVisualTokens, encode_text_with_visual_prefix
from trainer.model.text_encoder import TextEncoder


def _dense_relu(dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU())


@register_fusion("smcl")
class SmclFusion(Fusion):
    grounds = True
    knobs: ClassVar[dict[str, Any]] = {
        "threshold_scale": 1.0,
        "cmd_order": 3,
        "alignment_encoder": True,
        "refinement_encoder": True,
        "image_guidance": True,
    }
    auxiliary_weights: ClassVar[dict[str, float]] = {"similarity": 0.3, "difference": 0.2}

    def __init__(self, config, dims) -> None:
        super().__init__(config, dims)
        hidden = config.hidden
        self.image_projection = nn.Sequential(nn.Linear(dims.pooled, hidden), nn.LayerNorm(hidden))
        self.temporal_position = nn.Embedding(MAX_MODEL_IMAGES, hidden)
        self.across_images = nn.ModuleList(
            AttentionBlock(hidden, config.heads, config.dropout) for _ in range(config.layers)
        )
        self.layer_tokens = (
            LayerwiseVisualTokens(hidden, dims.text, dims.text_layers) if self.knob("image_guidance") else None
        )
        self.word_projection = nn.Sequential(nn.Linear(dims.text, hidden), nn.LayerNorm(hidden))
        self.alignment = _dense_relu(hidden) if self.knob("alignment_encoder") else None  # AE, shared by text and image
        self.refinement = None  # RE, one per modality
        if self.knob("refinement_encoder"):
            self.refinement = nn.ModuleDict({"text": _dense_relu(hidden), "images": _dense_relu(hidden)})
        branches = max(1, (self.alignment is not None) + (self.refinement is not None))
        self.within_modality = AttentionBlock(hidden, config.heads, config.dropout)  # φ(·, θ_Tr), shared
        self.text_union = nn.Linear(branches * hidden, hidden)
        self.image_union = nn.Linear(branches * hidden, hidden)
        self.images_to_words = AttentionBlock(hidden, config.heads, config.dropout)
        self.word_queries = nn.LayerNorm(hidden)  # re-centres the sigmoid-bounded P_t so words can query sharply
        self.region_projection = nn.Sequential(nn.Linear(dims.region, hidden), nn.LayerNorm(hidden))
        self.words_to_regions = AttentionBlock(
            hidden, config.heads, config.dropout, keep_queries=False
        )  # Hyper = FC(F(μV))
        self.hyper = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.output_dim = dims.text + hidden

    def forward(self, text_encoder: TextEncoder, inputs: FusionInputs) -> FusionOutput:
        batch, images = inputs.image_mask.shape
        patches, hidden = self.dims.regions, self.config.hidden
        image_mask, word_mask = inputs.image_mask, inputs.word_mask
        image_tokens = self.image_projection(inputs.pooled) + self.temporal_position.weight[:images][None]
        for layer in self.across_images:
            image_tokens, _ = layer(image_tokens, image_tokens, image_mask)

        if self.layer_tokens is None:
            words, pooled = encode_text(text_encoder, inputs)
        else:
            threshold = self.knob("threshold_scale") or None
            words, pooled = encode_text_with_visual_prefix(
                text_encoder, inputs, self.layer_tokens(image_tokens), image_mask, threshold_scale=threshold
            )
        text_tokens = self.word_projection(words)
        shared = (self.alignment(text_tokens), self.alignment(image_tokens)) if self.alignment is not None else None
        specific = None
        if self.refinement is not None:
            specific = (self.refinement["text"](text_tokens), self.refinement["images"](image_tokens))
        views = [pair for pair in (shared, specific) if pair is not None] or [(text_tokens, image_tokens)]

        joint_text = self._join([text for text, _ in views], word_mask, self.text_union)
        joint_images = self._join([images for _, images in views], image_mask, self.image_union)
        aware_images, _ = self.images_to_words(joint_images, joint_text, word_mask)
        regions = self.region_projection(inputs.regions) + aware_images[:, :, None, :]
        regions = regions.reshape(batch, images * patches, hidden)
        region_mask = image_mask[:, :, None].expand(-1, -1, patches).reshape(batch, images * patches)
        fused, attention = self.words_to_regions(self.word_queries(joint_text), regions, region_mask)
        attention = region_attention(attention, inputs, patches)
        relevance = attention.sum(dim=(2, 3)).max(dim=1).values

        output = torch.cat([words, self.dropout(self.hyper(fused))], dim=-1)
        auxiliary = self._subspace_losses(shared, specific, word_mask, image_mask) if self.training else {}
        return FusionOutput(output, pooled, attention, relevance, auxiliary)

    def _join(self, views: list[torch.Tensor], mask, union: nn.Linear) -> torch.Tensor:
        """P_o = Sigmoid(FC(φ(U_a) ⊕ φ(U_r))), eq. 9–11."""
        return torch.sigmoid(union(torch.cat([self.within_modality(view, view, mask)[0] for view in views], dim=-1)))

    def _subspace_losses(self, shared, specific, word_mask, image_mask) -> dict[str, torch.Tensor]:
        """CMD between the shared representations (L_sim, with AE) and soft orthogonality (L_diff, with RE: specific
        text vs specific images, and with AE shared vs specific), over the batch's posts (pooled per post; image
        terms over the posts that have images)."""
        with_images = image_mask.any(dim=1)
        image_posts = int(with_images.sum()) >= 2  # moments and orthogonality need a batch of image posts
        zero = word_mask.new_zeros((), dtype=torch.float32)

        def per_post(pair: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            return masked_mean(pair[0], word_mask), masked_mean(pair[1], image_mask)

        def across(text: torch.Tensor, images: torch.Tensor, loss) -> torch.Tensor:
            return loss(text[with_images], images[with_images]) if image_posts else zero

        losses = {}
        if shared is not None:
            shared_text, shared_images = per_post(shared)
            cmd = partial(central_moment_discrepancy, order=self.knob("cmd_order"))
            losses["similarity"] = across(shared_text, shared_images, cmd)
        if specific is not None:
            specific_text, specific_images = per_post(specific)
            losses["difference"] = across(specific_text, specific_images, soft_orthogonality)
            if shared is not None:
                losses["difference"] = (
                    losses["difference"]
                    + soft_orthogonality(shared_text, specific_text)
                    + across(shared_images, specific_images, soft_orthogonality)
                )
        return losses
