"""Multi-head cross-attention with a learned "nothing here" key, written out plainly so it exports to ONNX.

The null key absorbs attention when no key is relevant — or when every key is masked (a post without images), so
softmax never sees an all-masked row. Returned weights are the real keys' share, averaged over heads: they sum
to at most 1 per query.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_MASKED = -1e9


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.output = nn.Linear(dim, dim)
        self.null_key = nn.Parameter(torch.zeros(dim))
        self.null_value = nn.Parameter(torch.zeros(dim))
        self.dropout = nn.Dropout(dropout)

    # Reshapes spell out every size: -1 is ambiguous for empty tensors (posts without images).
    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [B, K, D] → [B, heads, K, D/heads]
        return x.reshape(x.shape[0], x.shape[1], self.heads, x.shape[2] // self.heads).transpose(1, 2)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries [B, Q, D], keys [B, K, D], key_mask [B, K] → output [B, Q, D], weights [B, Q, K]."""
        batch = keys.shape[0]
        keys_with_null = torch.cat([self.null_key.expand(batch, 1, -1), self.key(keys)], dim=1)
        values_with_null = torch.cat([self.null_value.expand(batch, 1, -1), self.value(keys)], dim=1)
        mask = torch.cat([key_mask.new_ones((batch, 1)), key_mask], dim=1)  # [B, 1 + K]
        q, k, v = self._split(self.query(queries)), self._split(keys_with_null), self._split(values_with_null)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [B, h, Q, 1 + K]
        scores = torch.where(mask[:, None, None, :], scores, torch.full_like(scores, _MASKED))
        probabilities = scores.softmax(dim=-1)
        attended = (self.dropout(probabilities) @ v).transpose(1, 2)
        attended = attended.reshape(queries.shape[0], queries.shape[1], queries.shape[2])
        return self.output(attended), probabilities[:, :, :, 1:].mean(dim=1)


class AttentionBlock(nn.Module):
    """A post-norm transformer layer whose keys are any sequence (the queries themselves for self-attention):
    residual attention, then a residual feed-forward layer. Returns the output and the attention weights.

    ``keep_queries=False`` drops the first residual: the output is what the queries found in the keys (a read-out
    of the other modality to concatenate beside the queries, rather than the queries updated by it)."""

    def __init__(self, dim: int, heads: int, dropout: float, keep_queries: bool = True) -> None:
        super().__init__()
        self.keep_queries = keep_queries
        self.attention = CrossAttention(dim, heads, dropout)
        self.attention_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)
        )
        self.output_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        attended, weights = self.attention(queries, keys, key_mask)
        hidden = self.attention_norm(queries + self.dropout(attended) if self.keep_queries else attended)
        return self.output_norm(hidden + self.dropout(self.feed_forward(hidden))), weights
