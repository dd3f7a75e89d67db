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

Departures: the paper represents an image by its [CLS] only; here the word side attends to the image's patches
(each carrying its image's fused representation) so that entities can be grounded in a region. The post's image
relevance is the largest share of attention any word puts on the images.
"""

from __future__ import annotations

import torch
from torch import nn

from postlens.schemas import MAX_MODEL_IMAGES
from trainer.model.fusion.attention import AttentionBlock
from trainer.model.fusion.base import (
    Fusion,
    FusionInputs,
    FusionOutput,
    masked_mean,
    patch_attention,
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
    knobs = {"threshold_scale": 1.0, "cmd_order": 3}
    auxiliary_weights = {"similarity": 0.3, "difference": 0.2}

    def __init__(self, config, dims) -> None:
        super().__init__(config, dims)
        hidden = config.hidden
        self.image_projection = nn.Sequential(nn.Linear(dims.pooled, hidden), nn.LayerNorm(hidden))
        self.temporal_position = nn.Embedding(MAX_MODEL_IMAGES, hidden)
        self.across_images = nn.ModuleList(AttentionBlock(hidden, config.heads, config.dropout) for _ in range(config.layers))
        self.layer_tokens = LayerwiseVisualTokens(hidden, dims.text, dims.text_layers)
        self.word_projection = nn.Sequential(nn.Linear(dims.text, hidden), nn.LayerNorm(hidden))
        self.alignment = _dense_relu(hidden)  # AE, shared by text and image
        self.text_refinement = _dense_relu(hidden)  # RE of the text
        self.image_refinement = _dense_relu(hidden)  # RE of the images
        self.within_modality = AttentionBlock(hidden, config.heads, config.dropout)  # φ(·, θ_Tr), shared
        self.text_union = nn.Linear(2 * hidden, hidden)
        self.image_union = nn.Linear(2 * hidden, hidden)
        self.images_to_words = AttentionBlock(hidden, config.heads, config.dropout)
        self.word_queries = nn.LayerNorm(hidden)  # re-centres the sigmoid-bounded P_t so words can query sharply
        self.region_projection = nn.Sequential(nn.Linear(dims.patch, hidden), nn.LayerNorm(hidden))
        self.words_to_regions = AttentionBlock(hidden, config.heads, config.dropout, keep_queries=False)  # Hyper = FC(F(μV))
        self.hyper = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.output_dim = dims.text + hidden

    def forward(self, text_encoder: TextEncoder, inputs: FusionInputs) -> FusionOutput:
        batch, images = inputs.image_mask.shape
        patches, hidden = self.dims.patches, self.config.hidden
        image_mask, word_mask = inputs.image_mask, inputs.word_mask
        image_tokens = self.image_projection(inputs.image_pooled) + self.temporal_position.weight[:images][None]
        for layer in self.across_images:
            image_tokens, _ = layer(image_tokens, image_tokens, image_mask)

        threshold = self.knob("threshold_scale") or None
        words, pooled = encode_text_with_visual_prefix(
            text_encoder, inputs, self.layer_tokens(image_tokens), image_mask, threshold_scale=threshold
        )
        text_tokens = self.word_projection(words)
        shared_text, shared_images = self.alignment(text_tokens), self.alignment(image_tokens)
        specific_text, specific_images = self.text_refinement(text_tokens), self.image_refinement(image_tokens)

        joint_text = self._join(shared_text, specific_text, word_mask, self.text_union)
        joint_images = self._join(shared_images, specific_images, image_mask, self.image_union)
        aware_images, _ = self.images_to_words(joint_images, joint_text, word_mask)
        regions = self.region_projection(inputs.patch_tokens) + aware_images[:, :, None, :]
        regions = regions.reshape(batch, images * patches, hidden)
        region_mask = image_mask[:, :, None].expand(-1, -1, patches).reshape(batch, images * patches)
        fused, attention = self.words_to_regions(self.word_queries(joint_text), regions, region_mask)
        attention = patch_attention(attention, inputs, patches)
        relevance = attention.sum(dim=(2, 3)).max(dim=1).values

        output = torch.cat([words, self.dropout(self.hyper(fused))], dim=-1)
        auxiliary = {}
        if self.training:
            auxiliary = self._subspace_losses(
                [masked_mean(shared_text, word_mask), masked_mean(specific_text, word_mask)],
                [masked_mean(shared_images, image_mask), masked_mean(specific_images, image_mask)],
                image_mask.any(dim=1),
            )
        return FusionOutput(output, pooled, attention, relevance, auxiliary)

    def _join(self, shared, specific, mask, union: nn.Linear) -> torch.Tensor:
        """P_o = Sigmoid(FC(φ(U_a) ⊕ φ(U_r))), eq. 9–11."""
        enhanced_shared, _ = self.within_modality(shared, shared, mask)
        enhanced_specific, _ = self.within_modality(specific, specific, mask)
        return torch.sigmoid(union(torch.cat([enhanced_shared, enhanced_specific], dim=-1)))

    def _subspace_losses(self, text: list[torch.Tensor], images: list[torch.Tensor], with_images: torch.Tensor) -> dict[str, torch.Tensor]:
        """CMD between the shared representations (L_sim) and soft orthogonality (L_diff), over the batch's posts
        (pooled per post; image terms over the posts that have images)."""
        shared_text, specific_text = text
        shared_images, specific_images = (rows[with_images] for rows in images)
        difference = soft_orthogonality(shared_text, specific_text)
        if shared_images.shape[0] < 2:  # moments and orthogonality need a batch of image posts
            return {"similarity": shared_text.sum() * 0.0, "difference": difference}
        similarity = central_moment_discrepancy(shared_text[with_images], shared_images, self.knob("cmd_order"))
        difference = (
            difference
            + soft_orthogonality(shared_images, specific_images)
            + soft_orthogonality(specific_text[with_images], specific_images)
        )
        return {"similarity": similarity, "difference": difference}
