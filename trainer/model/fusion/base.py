"""What every fusion strategy takes and gives, the registry that selects one by name, and shared helpers.

A strategy owns the text encoder call (``early`` feeds image tokens into it) and returns fused word features plus
the grounding signals: word→region attention (rows sum ≤ 1, the rest is "nothing in the images") and a per-post
image relevance in [0, 1]. Strategies that do not attend to regions return zeros for both. A region is whatever the
vision encoder family gives: a patch or feature-map cell of a grid, or a DETR object query.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from postlens.runtime.config import FusionConfig
from trainer.model.text_encoder import TextEncoder


@dataclass(frozen=True)
class EncoderDims:
    text: int  # text encoder hidden size
    region: int  # vision region token width
    pooled: int  # vision pooled embedding width
    regions: int  # regions per image
    text_layers: int = 0  # transformer layers of the text encoder (strategies that feed every layer need it)


@dataclass
class FusionInputs:
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    word_index: torch.Tensor  # [B, W]
    word_mask: torch.Tensor  # [B, W] bool
    image_mask: torch.Tensor  # [B, N] bool
    region_tokens: torch.Tensor | None  # [B, N, P, Dr]; None when the strategy does not use images
    image_pooled: torch.Tensor | None  # [B, N, Dv]
    token_offsets: torch.Tensor | None = None  # [B, L, H] added to the token embeddings (word features), or None

    @property
    def regions(self) -> torch.Tensor:
        """``region_tokens``, for a strategy that reads images (the network encodes them for those)."""
        if self.region_tokens is None:
            raise ValueError("this fusion strategy reads images, but the network encoded none")
        return self.region_tokens

    @property
    def pooled(self) -> torch.Tensor:
        """``image_pooled``, for a strategy that reads images."""
        if self.image_pooled is None:
            raise ValueError("this fusion strategy reads images, but the network encoded none")
        return self.image_pooled


@dataclass
class FusionOutput:
    words: torch.Tensor  # [B, W, output_dim]
    text_pooled: torch.Tensor  # [B, dims.text], the post's text summary (for image–text alignment)
    word_region_attention: torch.Tensor  # [B, W, N, P]
    image_relevance: torch.Tensor  # [B]
    # Strategy-specific training losses by name (training mode only, never exported); losses.py weighs them.
    auxiliary_losses: dict[str, torch.Tensor] = field(default_factory=dict)


class Fusion(nn.Module):
    uses_image: ClassVar[bool] = True  # False: the network skips the vision encoder
    grounds: bool = (
        False  # True: word_region_attention and image_relevance are learned signals (ablations may unset it)
    )
    # The strategy's own FusionConfig keys (``--set model.fusion.KEY=…``) with their defaults; others are refused.
    knobs: ClassVar[dict[str, Any]] = {}
    # Default weight of each auxiliary loss the strategy returns (its paper's values); ``loss.auxiliary`` overrides.
    auxiliary_weights: ClassVar[dict[str, float]] = {}
    output_dim: int

    def __init__(self, config: FusionConfig, dims: EncoderDims) -> None:
        super().__init__()
        self.config = config
        self.dims = dims

    def knob(self, name: str) -> Any:
        default = self.knobs[name]
        return type(default)((self.config.model_extra or {}).get(name, default))

    def forward(self, text_encoder: TextEncoder, inputs: FusionInputs) -> FusionOutput:
        raise NotImplementedError


_REGISTRY: dict[str, type[Fusion]] = {}


def register_fusion(name: str) -> Callable[[type[Fusion]], type[Fusion]]:
    def register(cls: type[Fusion]) -> type[Fusion]:
        if name in _REGISTRY:
            raise ValueError(f"fusion strategy {name!r} is registered twice")
        _REGISTRY[name] = cls
        return cls

    return register


def fusion_names() -> list[str]:
    return sorted(_REGISTRY)


def build_fusion(name: str, config: FusionConfig, dims: EncoderDims) -> Fusion:
    if name not in _REGISTRY:
        raise ValueError(f"unknown fusion strategy {name!r}; registered: {', '.join(fusion_names())}")
    strategy = _REGISTRY[name]
    unknown = set(config.model_extra or {}) - set(strategy.knobs)
    if unknown:
        raise ValueError(
            f"fusion strategy {name!r} has no setting {', '.join(sorted(unknown))}; it has: {sorted(strategy.knobs)}"
        )
    return strategy(config, dims)


# ------------------------------------------------------------------------------------------------------------
# Helpers shared by strategies
# ------------------------------------------------------------------------------------------------------------


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of [B, K, D] where ``mask`` [B, K] is set (zeros when nothing is)."""
    weights = mask.to(values.dtype)[:, :, None]
    return (values * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def token_embeddings(text_encoder: TextEncoder, inputs: FusionInputs) -> torch.Tensor:
    """[B, L, H] the sub-token embeddings the text encoder starts from (its own, plus any word-feature offsets)."""
    tokens = text_encoder.embed_tokens(inputs.input_ids)
    return tokens if inputs.token_offsets is None else tokens + inputs.token_offsets


def encode_text(text_encoder: TextEncoder, inputs: FusionInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The text alone: word states [B, W, H] and their masked mean [B, H]."""
    hidden = text_encoder(token_embeddings(text_encoder, inputs), inputs.attention_mask)
    words = text_encoder.words(hidden, inputs.word_index)
    return words, masked_mean(words, inputs.word_mask)


def no_grounding(inputs: FusionInputs, regions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero attention [B, W, N, P] and zero relevance [B], shaped from the inputs (no data-dependent branches)."""
    pairs = inputs.word_mask[:, :, None] & inputs.image_mask[:, None, :]  # [B, W, N]
    attention = torch.zeros_like(pairs, dtype=torch.float32)[:, :, :, None].expand(-1, -1, -1, regions)
    relevance = torch.zeros_like(inputs.word_mask[:, 0], dtype=torch.float32)
    return attention, relevance


def region_sequence(
    region_tokens: torch.Tensor, image_mask: torch.Tensor, slot_embedding: nn.Embedding, project: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, N, P, Dr] region tokens → one sequence [B, N·P, H] (projected, tagged with their image slot) and its mask."""
    batch, images, regions = region_tokens.shape[0], region_tokens.shape[1], region_tokens.shape[2]
    tokens = project(region_tokens) + slot_embedding.weight[:images][None, :, None, :]
    mask = image_mask[:, :, None].expand(-1, -1, regions)
    return tokens.reshape(batch, images * regions, tokens.shape[-1]), mask.reshape(batch, images * regions)


def region_attention(attention: torch.Tensor, inputs: FusionInputs, regions: int) -> torch.Tensor:
    """Word attention over the flat region sequence [B, W, N·P] → [B, W, N, P], zero on padding words."""
    batch, images = inputs.image_mask.shape
    attention = attention.reshape(batch, attention.shape[1], images, regions)
    return attention * inputs.word_mask[:, :, None, None].to(attention.dtype)


def has_image(inputs: FusionInputs) -> torch.Tensor:
    """[B] 1.0 for posts with at least one image. sum > 0, not any(): exported to ONNX, any() over an empty image
    axis is True (PyTorch says False)."""
    return (inputs.image_mask.sum(dim=1) > 0).to(torch.float32)
