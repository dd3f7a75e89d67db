"""Word-shape embedding and character CNN: per-word features concatenated to the fused word states before the
emission layer (see :mod:`postlens.runtime.word_features` for the inputs)."""

from __future__ import annotations

import torch
from torch import nn

from postlens.runtime.config import WordFeaturesConfig
from postlens.runtime.word_features import WORD_SHAPES


class CharCnn(nn.Module):
    """[B, W, C] char ids → [B, W, channels]: embedding, width-3 convolution, max-pool over the word's characters."""

    def __init__(self, buckets: int, dim: int, channels: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(buckets, dim, padding_idx=0)
        self.convolution = nn.Conv1d(dim, channels, kernel_size=3, padding=1)

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        batch, words, length = chars.shape
        embedded = self.embedding(chars.reshape(batch * words, length)).transpose(1, 2)  # [B·W, dim, C]
        activations = torch.relu(self.convolution(embedded))
        # ReLU outputs are ≥ 0, so zeroing padded positions keeps them out of the max (an all-padding word → 0).
        activations = activations * (chars.reshape(batch * words, 1, length) > 0).to(activations.dtype)
        return activations.amax(dim=2).reshape(batch, words, -1)


class WordFeatureEncoder(nn.Module):
    def __init__(self, config: WordFeaturesConfig) -> None:
        super().__init__()
        self.shape = nn.Embedding(len(WORD_SHAPES), config.shape_dim, padding_idx=0) if config.shape else None
        self.chars = CharCnn(config.char_buckets, config.char_dim, config.char_channels) if config.chars else None
        self.output_dim = (config.shape_dim if config.shape else 0) + (config.char_channels if config.chars else 0)

    def forward(self, word_shape: torch.Tensor | None, word_chars: torch.Tensor | None) -> torch.Tensor:
        parts = []
        if self.shape is not None:
            parts.append(self.shape(word_shape))
        if self.chars is not None:
            parts.append(self.chars(word_chars))
        return torch.cat(parts, dim=-1)
