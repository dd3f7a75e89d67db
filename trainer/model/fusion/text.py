"""``text``: no image at all — the baseline every multimodal strategy must beat."""

from __future__ import annotations

from trainer.model.fusion.base import Fusion, FusionInputs, FusionOutput, encode_text, no_grounding, register_fusion
from trainer.model.text_encoder import TextEncoder


@register_fusion("text")
class TextOnlyFusion(Fusion):
    uses_image = False

    def __init__(self, config, dims) -> None:
        super().__init__(config, dims)
        self.output_dim = dims.text

    def forward(self, text_encoder: TextEncoder, inputs: FusionInputs) -> FusionOutput:
        words, pooled = encode_text(text_encoder, inputs)
        attention, relevance = no_grounding(inputs, self.dims.regions)
        return FusionOutput(words, pooled, attention, relevance)
