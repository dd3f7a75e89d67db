"""From network outputs to entities: CRF decoding, span confidences and grounded image regions.

NumPy only — Triton's decoder model imports this module and must not need torch. Everything works in log space on
float64, is masked for padded words and is vectorized over the batch (loops run over word positions only).

Entity confidence is the CRF's *span marginal*: the probability, summed over every tag sequence, that exactly
words ``first..last`` form one entity of that type. For BIO that is ``B-t I-t … I-t`` followed by anything but
``I-t``; for BIOES/BMES it is ``S-t`` or ``B-t (I|M)-t … E-t``. It comes straight from the forward/backward
messages, so it is exact (a product of token marginals would ignore the dependencies the CRF models).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from postlens.runtime.config import ModelConfig
from postlens.runtime.schemes import Scheme, allowed_transition, labels_for, spans_from_tags, tags_from_spans
from postlens.schemas import ENTITY_TYPES, ModelRef, PostPrediction, PredictedEntity, Region

# Score of a forbidden transition: exp() of it is exactly 0 in float64, while sums of it stay finite.
FORBIDDEN = -1e4


@dataclass(frozen=True)
class TagScheme:
    """A tagger's label set (:func:`postlens.runtime.schemes.labels_for`) with the CRF's view of it: which tag may
    follow which, and the tag pattern that spells one entity span."""

    name: Scheme = "bio"
    types: tuple[str, ...] = ENTITY_TYPES

    # Cached: decoding asks for them per entity, and calibration re-scores valid's entities some thirty times.
    @cached_property
    def labels(self) -> tuple[str, ...]:
        return tuple(labels_for(self.name, self.types))

    @cached_property
    def _label_ids(self) -> dict[str, int]:
        return {label: index for index, label in enumerate(self.labels)}

    def index(self, label: str) -> int:
        try:
            return self._label_ids[label]
        except KeyError:
            raise ValueError(f"{label!r} is not a {self.name} tag of {', '.join(self.types)}") from None

    def allowed(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boolean masks (start [T], transitions [T, T], end [T]) of well-formed tag sequences."""
        labels = self.labels
        start = np.array([allowed_transition(None, label, self.name) for label in labels])
        end = np.array([allowed_transition(label, None, self.name) for label in labels])
        transitions = np.array([[allowed_transition(a, b, self.name) for b in labels] for a in labels])
        return start, transitions, end

    def span_tags(self, length: int, entity_type: str) -> list[int]:
        """The tag ids that spell one entity of ``length`` words."""
        return [self.index(tag) for tag in tags_from_spans([(0, length, entity_type)], length, self.name)]

    def forbidden_after_span(self, entity_type: str) -> list[int]:
        """Tags that may not follow the span for it to end there (BIO only: ``I-t`` would extend it)."""
        return [self.index(f"I-{entity_type}")] if self.name == "bio" else []

    def spans(self, tag_ids: Sequence[int]) -> list[tuple[int, int, str]]:
        """Entity spans ``(first, last, type)`` (inclusive word indices) of a tag sequence."""
        labels = self.labels
        return [(first, end - 1, kind) for first, end, kind in spans_from_tags([labels[t] for t in tag_ids], self.name)]


@dataclass(frozen=True)
class CrfParams:
    """CRF scores, including the scheme's constraints (forbidden transitions score :data:`FORBIDDEN`)."""

    start: np.ndarray  # [T]
    transitions: np.ndarray  # [T, T] previous → next
    end: np.ndarray  # [T]

    def scaled(self, temperature: float) -> CrfParams:
        return CrfParams(self.start / temperature, self.transitions / temperature, self.end / temperature)


def _logsumexp(values: np.ndarray, axis: int) -> np.ndarray:
    peak = np.max(values, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    return np.squeeze(peak, axis=axis) + np.log(np.sum(np.exp(values - peak), axis=axis))


def _lengths(mask: np.ndarray) -> np.ndarray:
    """Words per sequence; padding is assumed to come after the words (a prefix mask)."""
    return mask.astype(bool).sum(axis=1)


def viterbi(emissions: np.ndarray, mask: np.ndarray, params: CrfParams) -> list[list[int]]:
    """The best tag sequence of each post (a list as long as its unmasked words)."""
    emissions = np.asarray(emissions, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    batch, width, size = emissions.shape
    if width == 0:
        return [[] for _ in range(batch)]
    score = params.start[None, :] + emissions[:, 0]
    keep = np.broadcast_to(np.arange(size), (batch, size))
    backpointers = np.empty((width, batch, size), dtype=np.int64)
    backpointers[0] = keep
    for position in range(1, width):
        candidates = score[:, :, None] + params.transitions[None]  # [B, prev, next]
        best_prev = candidates.argmax(axis=1)
        best = np.take_along_axis(candidates, best_prev[:, None, :], axis=1)[:, 0] + emissions[:, position]
        active = mask[:, position, None]
        score = np.where(active, best, score)
        # Padding keeps each tag where it is, so backtracking from the last column works for every length.
        backpointers[position] = np.where(active, best_prev, keep)
    last = (score + params.end[None, :]).argmax(axis=1)
    path = np.empty((batch, width), dtype=np.int64)
    path[:, -1] = last
    for position in range(width - 1, 0, -1):
        path[:, position - 1] = np.take_along_axis(backpointers[position], path[:, position, None], axis=1)[:, 0]
    return [path[row, :length].tolist() for row, length in enumerate(_lengths(mask))]


@dataclass(frozen=True)
class Lattice:
    """Forward/backward messages of a batch: everything marginals need."""

    emissions: np.ndarray  # [B, W, T]
    lengths: np.ndarray  # [B]
    params: CrfParams
    log_alpha: np.ndarray  # [B, W, T] score of all prefixes ending in tag t at word w (incl. its emission)
    log_beta: np.ndarray  # [B, W, T] score of all suffixes after word w given tag t there (incl. end)
    log_z: np.ndarray  # [B]


def forward_backward(emissions: np.ndarray, mask: np.ndarray, params: CrfParams) -> Lattice:
    emissions = np.asarray(emissions, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    batch, width, size = emissions.shape
    log_alpha = np.zeros((batch, width, size))
    log_beta = np.zeros((batch, width, size))
    if width:
        log_alpha[:, 0] = params.start[None, :] + emissions[:, 0]
        for position in range(1, width):
            step = _logsumexp(log_alpha[:, position - 1, :, None] + params.transitions[None], axis=1)
            log_alpha[:, position] = np.where(
                mask[:, position, None], step + emissions[:, position], log_alpha[:, position - 1]
            )
        log_beta[:, width - 1] = params.end[None, :]
        for position in range(width - 2, -1, -1):
            following = emissions[:, position + 1, None, :] + log_beta[:, position + 1, None, :]
            step = _logsumexp(params.transitions[None] + following, axis=2)
            log_beta[:, position] = np.where(mask[:, position + 1, None], step, params.end[None, :])
        log_z = _logsumexp(log_alpha[:, -1] + params.end[None, :], axis=1)
    else:
        log_z = np.zeros(batch)
    return Lattice(emissions, _lengths(mask), params, log_alpha, log_beta, log_z)


def token_marginals(lattice: Lattice) -> np.ndarray:
    """P(tag t at word w) [B, W, T]; zero on padding."""
    width = lattice.emissions.shape[1]
    marginals = np.exp(lattice.log_alpha + lattice.log_beta - lattice.log_z[:, None, None])
    valid = np.arange(width)[None, :] < lattice.lengths[:, None]
    return np.where(valid[:, :, None], marginals, 0.0)


def span_marginal(
    lattice: Lattice, row: int, first: int, last: int, tags: Sequence[int], forbidden_after: Sequence[int]
) -> float:
    """P(words ``first..last`` of post ``row`` carry exactly ``tags``; the next tag is not in ``forbidden_after``)."""
    emissions, params = lattice.emissions[row], lattice.params
    positions = np.arange(first + 1, last + 1)
    path = np.asarray(tags)
    score = lattice.log_alpha[row, first, path[0]]
    score += np.sum(params.transitions[path[:-1], path[1:]] + emissions[positions, path[1:]])
    if last == lattice.lengths[row] - 1:
        score += params.end[tags[-1]]
    else:
        following = params.transitions[tags[-1]] + emissions[last + 1] + lattice.log_beta[row, last + 1]
        following[list(forbidden_after)] = -np.inf
        score += _logsumexp(following, axis=0)
    return float(np.exp(min(score - lattice.log_z[row], 0.0)))


# --------------------------------------------------------------------------------------------------------------
# Grounding
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grounding:
    box_fraction: float = 0.5  # a region is in the box when its attention ≥ this fraction of the image's peak
    threshold: float = 0.1  # a region is kept when score × image relevance reaches this (calibrated on valid)


def ground_span(
    attention: np.ndarray, region_boxes: np.ndarray, image_mask: np.ndarray, first: int, last: int, grounding: Grounding
) -> Region | None:
    """The region words ``first..last`` attend to: ``attention`` is this post's [W, N, P] word→region attention,
    ``region_boxes`` its [N, P, 4] region boxes (x0, y0, x1, y1 normalized; a grid's cells or detected objects).

    The image with the most attention mass wins; the box encloses the boxes of its regions at ≥ ``box_fraction`` of
    the peak; the score is the entity's attention mass on that image. ``None`` when the post has no (unmasked) image.
    """
    images = attention.shape[1]
    if images == 0 or not np.any(image_mask):
        return None
    span = attention[first : last + 1].mean(axis=0) * np.asarray(image_mask, dtype=bool)[:, None]  # [N, P]
    mass = span.sum(axis=1)
    image = int(mass.argmax())
    peak = span[image].max()
    if peak <= 0:
        return None
    chosen = np.asarray(region_boxes, dtype=np.float64)[image, span[image] >= grounding.box_fraction * peak]
    box = (float(chosen[:, 0].min()), float(chosen[:, 1].min()), float(chosen[:, 2].max()), float(chosen[:, 3].max()))
    return Region(image_index=image, box=box, score=float(np.clip(mass[image], 0.0, 1.0)))


# --------------------------------------------------------------------------------------------------------------
# Whole posts
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decoder:
    """Everything decoding needs from a checkpoint: scheme, CRF, confidence temperature and grounding geometry."""

    scheme: TagScheme
    crf: CrfParams
    grounding: Grounding
    model: ModelRef  # stamped on every prediction
    temperature: float = 1.0  # divides every CRF score; fitted on valid so confidences are calibrated

    @classmethod
    def from_config(cls, config: ModelConfig, crf: CrfParams, model: ModelRef) -> Decoder:
        """The decoder a checkpoint describes (its CRF scores come from the weights, the rest from ``config``)."""
        decode = config.decode
        return cls(
            scheme=TagScheme(config.scheme, tuple(config.types)),
            crf=crf,
            grounding=Grounding(decode.box_fraction, decode.grounding_threshold),
            model=model,
            temperature=decode.temperature,
        )

    def with_calibration(self, temperature: float | None = None, threshold: float | None = None) -> Decoder:
        grounding = self.grounding if threshold is None else replace(self.grounding, threshold=threshold)
        return replace(self, temperature=self.temperature if temperature is None else temperature, grounding=grounding)

    def spans(self, emissions: np.ndarray, word_mask: np.ndarray) -> list[list[tuple[int, int, str]]]:
        """Each post's entity spans ``(first, last, type)``: the CRF's best tag sequence (no temperature changes
        it, so calibration reads them once)."""
        paths = viterbi(np.asarray(emissions, dtype=np.float64), np.asarray(word_mask, dtype=bool), self.crf)
        return [self.scheme.spans(path) for path in paths]

    def confidences(
        self, emissions: np.ndarray, word_mask: np.ndarray, spans: Sequence[Sequence[tuple[int, int, str]]]
    ) -> list[list[float]]:
        """Each span's confidence: its span marginal under the CRF with every score divided by the temperature."""
        lattice = forward_backward(
            np.asarray(emissions, dtype=np.float64) / self.temperature,
            np.asarray(word_mask, dtype=bool),
            self.crf.scaled(self.temperature),
        )
        return [
            [
                span_marginal(
                    lattice,
                    row,
                    first,
                    last,
                    self.scheme.span_tags(last - first + 1, entity_type),
                    self.scheme.forbidden_after_span(entity_type),
                )
                for first, last, entity_type in row_spans
            ]
            for row, row_spans in enumerate(spans)
        ]

    def decode(
        self,
        texts: Sequence[str],
        words: Sequence[Sequence[tuple[int, int]]],
        emissions: np.ndarray,
        word_mask: np.ndarray,
        word_region_attention: np.ndarray,
        image_mask: np.ndarray,
        image_relevance: np.ndarray,
        region_boxes: np.ndarray,
    ) -> list[PostPrediction]:
        """Predictions for a batch. ``words`` are each post's word character offsets ``(start, end)``, in the
        order the network saw them (words past the network's limits are simply not tagged); the arrays are the
        network's outputs (:data:`postlens.runtime.exported.OUTPUT_NAMES`) and its word and image masks. Each post's
        entities are its :meth:`spans`, one each and in order (calibration pairs them with :meth:`confidences`)."""
        spans = self.spans(emissions, word_mask)
        confidences = self.confidences(emissions, word_mask, spans)
        attention = np.asarray(word_region_attention, dtype=np.float64)
        predictions = []
        for row, (text, offsets) in enumerate(zip(texts, words, strict=True)):
            relevance = float(np.clip(image_relevance[row], 0.0, 1.0))
            entities = []
            for (first, last, entity_type), confidence in zip(spans[row], confidences[row], strict=True):
                region = ground_span(attention[row], region_boxes[row], image_mask[row], first, last, self.grounding)
                kept = [region] if region is not None and region.score * relevance >= self.grounding.threshold else []
                start, end = offsets[first][0], offsets[last][1]
                entities.append(
                    PredictedEntity(
                        text=text[start:end],
                        type=entity_type,
                        start=start,
                        end=end,
                        confidence=confidence,
                        regions=kept,
                    )
                )
            predictions.append(PostPrediction(entities=entities, image_relevance=relevance, model=self.model))
        return predictions
