"""The NER network: text encoder + vision encoder → fusion strategy → per-word tag scores (CRF emissions).

``forward`` is the exported graph (docs/contracts.md): tensors in, tensors out, no data-dependent Python branches, any
batch size, sub-token length, word count and image count (0 included). ``encode`` gives training the extras
(alignment embeddings). An image's regions are what its vision encoder family makes them (grid cells or DETR's
object queries); the graph outputs each region's box, so grounding needs no knowledge of the family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from postlens.runtime.config import ModelConfig
from postlens.runtime.decode import TagScheme
from postlens.runtime.words import WORD_TOKENIZER_VERSION
from trainer.model.crf import LinearChainCrf
from trainer.model.fusion import EncoderDims, FusionInputs, build_fusion
from trainer.model.fusion.base import masked_mean
from trainer.model.text_encoder import TextEncoder, build_text_encoder
from trainer.model.vision import VisionEncoder, build_vision_encoder
from trainer.model.word_feature_encoder import WordFeatureEncoder

ALIGNMENT_DIM = 64


def word_to_first_tokens(
    values: torch.Tensor, word_index: torch.Tensor, word_mask: torch.Tensor, length: int
) -> torch.Tensor:
    """[B, W, D] per-word values → [B, L, D] placed at each word's first sub-token (zeros elsewhere). A one-hot
    matmul rather than a scatter: padding words all point at position 0, and a matmul exports to any ONNX opset."""
    positions = torch.arange(length, device=word_index.device)
    placement = (word_index[:, :, None] == positions[None, None, :]) & word_mask[:, :, None]  # [B, W, L]
    return placement.to(values.dtype).transpose(1, 2) @ values


@dataclass
class NetworkOutput:
    emissions: torch.Tensor  # [B, W, T]
    word_region_attention: torch.Tensor  # [B, W, N, P]
    image_relevance: torch.Tensor  # [B]
    region_boxes: torch.Tensor  # [B, N, P, 4] each region's box (x0, y0, x1, y1 normalized)
    text_embedding: torch.Tensor  # [B, ALIGNMENT_DIM], for image–text alignment
    image_embedding: torch.Tensor | None  # [B, ALIGNMENT_DIM]; None when the strategy ignores images
    auxiliary_losses: dict[str, torch.Tensor]  # the strategy's own training losses (empty in eval mode)


class NerNetwork(nn.Module):
    def __init__(self, config: ModelConfig, text_encoder: TextEncoder, vision_encoder: VisionEncoder) -> None:
        super().__init__()
        self.config = config
        dims = EncoderDims(
            text=text_encoder.hidden_size,
            region=vision_encoder.region_dim,
            pooled=vision_encoder.pooled_dim,
            regions=vision_encoder.regions,
            text_layers=text_encoder.model.config.num_hidden_layers,
        )
        self.text_encoder = text_encoder
        self.fusion = build_fusion(config.fusion.name, config.fusion, dims)
        # A strategy that ignores images carries no vision weights.
        self.vision_encoder = vision_encoder if self.fusion.uses_image else None
        self.image_alignment = nn.Linear(dims.pooled, ALIGNMENT_DIM) if self.fusion.uses_image else None
        self.text_alignment = nn.Linear(dims.text, ALIGNMENT_DIM)
        self.dropout = nn.Dropout(config.fusion.dropout)
        # Casing and characters join the fused word states just before the emissions (the CRF's input).
        self.word_features = WordFeatureEncoder(config.word_features) if config.word_features.enabled else None
        feature_dim = self.word_features.output_dim if self.word_features is not None else 0
        self.feature_offsets = None
        if config.word_features.enabled and config.word_features.into_encoder:
            self.feature_offsets = nn.Linear(feature_dim, dims.text)
            nn.init.zeros_(self.feature_offsets.weight)  # zero: the pretrained encoder starts out unchanged
            nn.init.zeros_(self.feature_offsets.bias)
        self.scheme = TagScheme(config.scheme, tuple(config.types))
        self.emission = nn.Linear(self.fusion.output_dim + feature_dim, len(self.scheme.labels))
        self.crf = LinearChainCrf(self.scheme)

    @classmethod
    def build(
        cls, config: ModelConfig, pretrained: bool = True
    ) -> tuple[NerNetwork, PreTrainedTokenizerBase, ModelConfig]:
        """Network, tokenizer and the resolved config. ``pretrained=False`` builds the recorded architecture with
        random weights, for loading a checkpoint's state dict."""
        text_encoder, tokenizer, text_config = build_text_encoder(config.text_encoder, pretrained=pretrained)
        vision_encoder, vision_config = build_vision_encoder(config.vision_encoder, pretrained=pretrained)
        resolved = config.model_copy(
            update={
                "text_encoder": text_config,
                "vision_encoder": vision_config,
                "labels": config.label_list(),
                # A new model uses today's word tokenizer; a rebuilt one keeps what it was trained with.
                "word_tokenizer_version": WORD_TOKENIZER_VERSION if pretrained else config.word_tokenizer_version,
            }
        )
        return cls(resolved, text_encoder, vision_encoder), tokenizer, resolved

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        word_index: torch.Tensor,
        word_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        image_mask: torch.Tensor,
        word_shape: torch.Tensor | None = None,
        word_chars: torch.Tensor | None = None,
    ) -> NetworkOutput:
        region_tokens = image_pooled = image_embedding = None
        if self.vision_encoder is not None and self.image_alignment is not None:  # fixed per network (uses_image)
            vision = self.vision_encoder(pixel_values)
            region_tokens, image_pooled, region_boxes = vision.regions, vision.pooled, vision.boxes
            image_embedding = self.image_alignment(masked_mean(image_pooled, image_mask))
        else:  # no attention on images, so nothing is grounded in these boxes
            region_boxes = pixel_values.new_zeros(1, 1, 1, 4).expand(
                *pixel_values.shape[:2], self.fusion.dims.regions, 4
            )
        features = self.word_features(word_shape, word_chars) if self.word_features is not None else None
        token_offsets = None
        if self.feature_offsets is not None:  # fixed per network, not per input
            token_offsets = word_to_first_tokens(
                self.feature_offsets(features), word_index, word_mask, input_ids.shape[1]
            )
        fused = self.fusion(
            self.text_encoder,
            FusionInputs(
                input_ids, attention_mask, word_index, word_mask, image_mask, region_tokens, image_pooled, token_offsets
            ),
        )
        words = fused.words
        if features is not None:
            words = torch.cat([words, features], dim=-1)
        emissions = self.emission(self.dropout(words))
        return NetworkOutput(
            emissions=emissions,
            word_region_attention=fused.word_region_attention,
            image_relevance=fused.image_relevance,
            region_boxes=region_boxes,
            text_embedding=self.text_alignment(fused.text_pooled),
            image_embedding=image_embedding,
            auxiliary_losses=fused.auxiliary_losses,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        word_index: torch.Tensor,
        word_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        image_mask: torch.Tensor,
        word_shape: torch.Tensor | None = None,
        word_chars: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """→ emissions [B, W, T], word_region_attention [B, W, N, P], image_relevance [B], region_boxes [B, N, P, 4]
        (:data:`postlens.runtime.exported.OUTPUT_NAMES`). ``word_shape`` [B, W] and ``word_chars`` [B, W, C] are
        required when ``config.word_features`` enables them."""
        output = self.encode(
            input_ids, attention_mask, word_index, word_mask, pixel_values, image_mask, word_shape, word_chars
        )
        return output.emissions, output.word_region_attention, output.image_relevance, output.region_boxes
