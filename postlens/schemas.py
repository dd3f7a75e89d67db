"""The messages that cross PostLens' boundaries, as pydantic models (documented in docs/contracts.md).

Producers, the stream worker, the trainer and the Triton entry model all speak these shapes; nothing else is
shared between them.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from postlens.failures import IngestFailure

ENTITY_TYPES: tuple[str, ...] = ("PER", "LOC", "ORG", "MISC")
# Datasets spell the fourth class differently; everything inside PostLens says MISC.
TYPE_ALIASES: dict[str, str] = {"OTHER": "MISC"}
MAX_MODEL_IMAGES = 4
UNKNOWN_SOURCE = "unknown"  # the source of a label that names none
# Kafka header naming a message's version when its offset does not (python -m stream replay-dlq sets it to the
# original offset, so a replayed post never overwrites what came after it). A post's own ``version`` comes first.
VERSION_HEADER = "postlens-version"
MAX_VERSION = 2**63 - 1  # Elasticsearch's external versions are signed 64-bit


def canonical_type(name: str) -> str:
    upper = name.strip().upper()
    return TYPE_ALIASES.get(upper, upper)


def _number_as_string(value: Any) -> Any:
    # Numeric ids are common in tweet dumps; they name the same post as their string form.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def validation_summary(error: ValidationError, subject: str) -> str:
    """One line naming each field that failed and why; ``subject`` names a failure of the whole document."""
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or subject}: {item['msg']}" for item in error.errors()
    )


def text_refusal(text: str, max_chars: int) -> tuple[IngestFailure, str] | None:
    """Why a text cannot go to the model, as ``(kind, message)``, or None when it can.

    The one rule the ingest stage, the served model, ``trainer.predict`` and ``trainer.retrain`` all apply, so a
    post is refused the same way wherever it arrives.
    """
    if not text.strip():
        return IngestFailure.EMPTY_TEXT, "empty text"
    if len(text) > max_chars:
        return IngestFailure.OVERSIZE, f"text of {len(text)} characters is over the limit of {max_chars}"
    return None


PostId = Annotated[str, BeforeValidator(_number_as_string), Field(min_length=1, max_length=256)]


# --------------------------------------------------------------------------------------------------------
# Input: posts (topic postlens.posts)
# --------------------------------------------------------------------------------------------------------


class Post(BaseModel):
    """A social-media post. ``id`` and ``text`` are required; unknown fields are kept in ``meta``."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=False)

    id: PostId
    text: str
    images: list[str] = Field(default_factory=list)
    created_at: datetime | None = None
    author: str | None = None
    lang: str | None = None
    # The producer's version of this post: of two messages about one post id, the larger version wins (an edit
    # counter, an update time in milliseconds). Absent: the message's offset in its partition decides — so a producer
    # that sends versions must send them on every message of the post.
    version: int | None = Field(None, ge=0, le=MAX_VERSION)
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unknown_fields_into_meta(self) -> Post:
        extra = self.__pydantic_extra__
        if extra:
            self.meta = {**extra, **self.meta}
            extra.clear()
        return self

    @property
    def model_images(self) -> list[str]:
        """The images fed to the model (the first four); the rest are recorded only."""
        return self.images[:MAX_MODEL_IMAGES]


# --------------------------------------------------------------------------------------------------------
# Labels (topic postlens.labels, synthetic data, JSONL training files)
# --------------------------------------------------------------------------------------------------------


class EntitySpan(BaseModel):
    """A gold entity: characters ``text[start:end]`` have type ``type``."""

    start: int = Field(ge=0)
    end: int = Field(gt=0)
    type: str

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        canonical = canonical_type(value)
        if canonical not in ENTITY_TYPES:
            raise ValueError(f"unknown entity type {value!r}; expected one of {', '.join(ENTITY_TYPES)}")
        return canonical

    @model_validator(mode="after")
    def _ordered(self) -> EntitySpan:
        if self.end <= self.start:
            raise ValueError(f"entity end {self.end} must be greater than start {self.start}")
        return self


class Box(BaseModel):
    """A gold region: entity ``entity`` (index into ``entities``) is shown in image ``image_index`` at ``box``."""

    entity: int = Field(ge=0)
    image_index: int = Field(ge=0)
    box: tuple[float, float, float, float]


class Label(BaseModel):
    """An annotated post: character spans on the raw text, or token/tag lists (either form)."""

    model_config = ConfigDict(extra="ignore")

    id: PostId  # the post's id: the example's id, and what the label's slice (held out or trained on) follows
    # One annotation of the post (two annotators of one post send two labels); a repeated label_id is a correction
    # and the latest message wins. Absent: the post id is the label id.
    label_id: str | None = Field(None, min_length=1, max_length=512)
    # Who or what produced the label ("annotator:alice/label-studio", "export:crm-2026-11"): the audit checks each
    # source apart, and lineage records them. Absent: "unknown".
    source: str | None = Field(None, min_length=1, max_length=256)
    text: str | None = None
    images: list[str] = Field(default_factory=list)
    entities: list[EntitySpan] | None = None
    tokens: list[str] | None = None
    tags: list[str] | None = None
    boxes: list[Box] = Field(default_factory=list)
    subsets: list[str] = Field(default_factory=list)
    # Lineage, not used for training: e.g. the annotation tool's task and annotation ids and the model version whose
    # predictions the annotator corrected.
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_consistent_form(self) -> Label:
        if self.entities is not None:
            if self.text is None:
                raise ValueError("a label with 'entities' needs 'text'")
            spans = sorted(self.entities, key=lambda e: e.start)
            for span in spans:
                if span.end > len(self.text):
                    raise ValueError(
                        f"entity [{span.start}, {span.end}) is past the end of the text ({len(self.text)})"
                    )
                if not self.text[span.start : span.end].strip():
                    raise ValueError(f"entity [{span.start}, {span.end}) covers only white space")
            for left, right in itertools.pairwise(spans):
                if right.start < left.end:
                    raise ValueError(f"entities [{left.start}, {left.end}) and [{right.start}, {right.end}) overlap")
        elif self.tokens is not None and self.tags is not None:
            if len(self.tokens) != len(self.tags):
                raise ValueError(f"{len(self.tokens)} tokens but {len(self.tags)} tags")
        else:
            raise ValueError("a label needs 'entities' (with 'text') or 'tokens' and 'tags'")
        for box in self.boxes:
            if self.entities is not None and box.entity >= len(self.entities):
                raise ValueError(f"box names entity {box.entity}, but there are {len(self.entities)}")
            x0, y0, x1, y1 = box.box
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise ValueError(f"box {box.box} is not [x0, y0, x1, y1] normalized with x0<x1, y0<y1")
        return self

    @property
    def annotation_id(self) -> str:
        """What identifies this annotation among the labels: ``label_id``, or the post id when there is none."""
        return self.label_id or self.id

    @property
    def source_name(self) -> str:
        return self.source or UNKNOWN_SOURCE


# --------------------------------------------------------------------------------------------------------
# Output: what the model says about one post (Triton entry model, trainer.predict)
# --------------------------------------------------------------------------------------------------------


class Region(BaseModel):
    """Where in which image an entity is shown; ``box`` is [x0, y0, x1, y1] normalized to the image."""

    image_index: int = Field(ge=0)
    box: tuple[float, float, float, float]
    score: float = Field(ge=0, le=1)
    image_url: str | None = None  # filled in by the stream worker, which knows the URLs


class PredictedEntity(BaseModel):
    text: str
    type: str
    start: int = Field(ge=0)
    end: int = Field(gt=0)
    confidence: float = Field(ge=0, le=1, description="CRF marginal probability of exactly this span and type")
    regions: list[Region] = Field(default_factory=list)


class ModelRef(BaseModel):
    name: str
    version: str


class PostPrediction(BaseModel):
    """One JSON document per post, as returned by the Triton entry model ``postlens``."""

    id: str | None = None
    entities: list[PredictedEntity] = Field(default_factory=list)
    image_relevance: float = Field(0.0, ge=0, le=1, description="how much the post's images bear on its text")
    model: ModelRef
    error: str | None = None  # set, with no entities, when the model refused this one input


# --------------------------------------------------------------------------------------------------------
# Dead letters (topic postlens.posts.dlq)
# --------------------------------------------------------------------------------------------------------

# "label": a label trainer.retrain refused (topic postlens.labels.rejected).
Stage = Literal["ingest", "fetch", "infer", "index", "label"]
PIPELINE_STAGES: tuple[Stage, ...] = ("ingest", "fetch", "infer", "index")  # the worker's, in flow order


# 1: letters before the field existed (no ``schema_version``; index kinds were Elasticsearch error types).
# 2: kinds are the values of postlens.failures; ``source_version`` added.
DEAD_LETTER_SCHEMA_VERSION = 2


class ErrorInfo(BaseModel):
    stage: Stage
    # A value of the stage's enum in postlens.failures (schema 2); any string in letters of schema 1.
    kind: str
    message: str


class DeadLetter(BaseModel):
    """A message PostLens could not process: the original bytes (text or base64), the reason and the time."""

    # Absent in the letters written before it existed: those read as schema 1. Readers refuse a newer schema.
    schema_version: int = Field(1, ge=1)
    original: str | None = None  # the message value, when it is valid UTF-8
    original_b64: str | None = None  # otherwise, base64 of the raw bytes
    # Set when the whole original would not fit in a Kafka message: ``original``/``original_b64`` then hold only a
    # prefix, and these identify the original (its size in bytes and sha256).
    original_truncated: bool = False
    original_size: int | None = None
    original_sha256: str | None = None
    key: str | None = None  # the message key, when it is valid UTF-8
    key_b64: str | None = None  # otherwise, base64 of its bytes
    key_truncated: bool = False  # the key was over postlens.io.deadletter.KEPT_KEY_BYTES: only a prefix is kept
    source_topic: str
    source_partition: int | None = None
    source_offset: int | None = None
    # The message's version (its VERSION_HEADER, else its offset), re-published with it by replay-dlq; schema 1
    # letters have none and replay with their source_offset.
    source_version: int | None = None
    error: ErrorInfo
    failed_at: datetime
