"""Text-encoder layers that also attend to visual tokens: each layer's self-attention gets that layer's own visual
keys and values in front of the sub-tokens' (the visual-prefix scheme of HVPNeT that MPCFN §3.4, MGIPS-CL §3.2 and
SMCL §3.4.2 build on). Only the sub-tokens are queries, so the text keeps its length and the visual tokens are
re-projected for every layer rather than carried through it.

Works with BERT-family encoders (BERT, RoBERTa, SpanBERT, MiniLM): it runs their layers' own modules
(``attention.self.query/key/value``, ``attention.output``, ``feed_forward_chunk``) with the prefix added, so with
no visual token a layer computes exactly what the encoder computes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainer.model.fusion.attention import _MASKED
from trainer.model.fusion.base import FusionInputs, masked_mean, token_embeddings
from trainer.model.text_encoder import TextEncoder


def _layers(text_encoder: TextEncoder) -> nn.ModuleList:
    encoder = getattr(text_encoder.model, "encoder", None)
    if encoder is None or not hasattr(encoder, "layer"):
        raise ValueError(f"{type(text_encoder.model).__name__} is not a BERT-family encoder (no encoder.layer)")
    return encoder.layer


class LayerwiseVisualTokens(nn.Module):
    """One projection of the visual tokens into the text width per text-encoder layer (W_z^l of SMCL eq. 3)."""

    def __init__(self, visual_dim: int, text_dim: int, layers: int) -> None:
        super().__init__()
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Linear(visual_dim, text_dim), nn.LayerNorm(text_dim)) for _ in range(layers)
        )

    def forward(self, tokens: torch.Tensor, layer_scale: torch.Tensor | None = None) -> list[torch.Tensor]:
        """tokens [B, M, Dv] → per layer [B, M, text_dim]; ``layer_scale`` [B, layers] weighs each layer's share."""
        prefixes = [projection(tokens) for projection in self.projections]
        if layer_scale is not None:
            prefixes = [prefix * layer_scale[:, layer, None, None] for layer, prefix in enumerate(prefixes)]
        return prefixes


def _split_heads(x: torch.Tensor, heads: int, size: int) -> torch.Tensor:
    """[B, K, heads·size] → [B, heads, K, size]."""
    return x.reshape(x.shape[0], x.shape[1], heads, size).transpose(1, 2)


def keep_above_mean_visual_weight(
    probabilities: torch.Tensor, visual: int, visual_mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """SMCL's dynamic attention threshold (§3.4.2): visual weights below ``scale`` × the row's mean visual weight are
    set to 0 and the row is re-normalised, so images a word barely attends to stop guiding it. (The paper's
    τ = σ(mean weight) is ≥ 0.5, above nearly every softmax weight; the threshold is read here as a multiple of the
    mean, which keeps it a statistic of the layer's attention that adapts to how spread it is.)"""
    visual_weights, text_weights = probabilities[..., :visual], probabilities[..., visual:]
    valid = visual_mask[:, None, None, :].to(probabilities.dtype).expand_as(visual_weights)
    # A zero column in front: ONNX Runtime fails to reduce an empty axis (posts without images).
    nothing = torch.zeros_like(text_weights[..., :1])
    total = torch.cat([nothing, visual_weights * valid], dim=-1).sum(dim=-1, keepdim=True)
    mean = total / torch.cat([nothing, valid], dim=-1).sum(dim=-1, keepdim=True).clamp(min=1.0)
    kept = torch.where(visual_weights >= scale * mean, visual_weights, torch.zeros_like(visual_weights))
    filtered = torch.cat([kept, text_weights], dim=-1)
    return filtered / filtered.sum(dim=-1, keepdim=True)


def encode_text_with_visual_prefix(
    text_encoder: TextEncoder,
    inputs: FusionInputs,
    prefixes: list[torch.Tensor],
    prefix_mask: torch.Tensor,
    threshold_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Word states [B, W, H] and their masked mean [B, H] from the text encoder whose layer l also attends to
    ``prefixes[l]`` [B, M, H] (``prefix_mask`` [B, M]); ``threshold_scale`` turns on SMCL's dynamic threshold."""
    layers = _layers(text_encoder)
    if len(prefixes) != len(layers):
        raise ValueError(f"{len(prefixes)} visual prefixes for {len(layers)} text-encoder layers")
    embeddings: Any = text_encoder.model.embeddings  # a BERT-family embeddings module
    hidden = embeddings(inputs_embeds=token_embeddings(text_encoder, inputs))
    mask = torch.cat([prefix_mask, inputs.attention_mask.bool()], dim=1)[:, None, None, :]
    layer: Any  # a BERT-family layer (BertLayer, RobertaLayer, …): its parts are read by name, as the models share them
    for layer, prefix in zip(layers, prefixes, strict=True):
        attention = layer.attention.self
        heads, size = attention.num_attention_heads, attention.attention_head_size

        keys = _split_heads(torch.cat([attention.key(prefix), attention.key(hidden)], dim=1), heads, size)
        values = _split_heads(torch.cat([attention.value(prefix), attention.value(hidden)], dim=1), heads, size)
        scores = _split_heads(attention.query(hidden), heads, size) @ keys.transpose(-1, -2) * attention.scaling
        probabilities = torch.where(mask, scores, torch.full_like(scores, _MASKED)).softmax(dim=-1)
        if threshold_scale is not None:
            probabilities = keep_above_mean_visual_weight(probabilities, prefix.shape[1], prefix_mask, threshold_scale)
        context = (attention.dropout(probabilities) @ values).transpose(1, 2)
        context = context.reshape(hidden.shape[0], hidden.shape[1], heads * size)
        hidden = layer.feed_forward_chunk(layer.attention.output(context, hidden))
    words = text_encoder.words(hidden, inputs.word_index)
    return words, masked_mean(words, inputs.word_mask)
