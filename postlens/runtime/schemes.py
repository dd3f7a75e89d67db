"""Tagging schemes — BIO (IOB2), BIOES and BMES — and lossless conversion between them through spans.

A tag is ``O`` or ``<prefix>-<TYPE>``. Each scheme gives its prefixes one of four roles:

==========  =====  =======  =====
role        BIO    BIOES    BMES
==========  =====  =======  =====
begin       B      B        B
inside      I      I        M
end         —      E        E
single      —      S        S
==========  =====  =======  =====

Types are canonical (``OTHER`` → ``MISC``, :func:`postlens.schemas.canonical_type`).

Invalid sequences are read the conlleval way (which is also seqeval's default mode): an inside or end tag that
does not continue an open entity of the same type *starts* a new entity (``O I-PER`` is a PER entity; ``B-PER
I-LOC`` is two entities), an end tag closes the entity it ends, and an entity that is never ended (``B-PER O`` in
BIOES) still counts, up to where the next tag breaks it off. Valid sequences convert losslessly; invalid ones are
repaired into the valid sequence with the same spans.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Literal

from postlens.schemas import ENTITY_TYPES, canonical_type

Scheme = Literal["bio", "bioes", "bmes"]
SCHEMES: tuple[Scheme, ...] = ("bio", "bioes", "bmes")
OUTSIDE = "O"

# (first word, one past the last word, type)
Span = tuple[int, int, str]

_PREFIXES: dict[str, dict[str, str]] = {
    # role -> prefix, in the order label lists use
    "bio": {"begin": "B", "inside": "I"},
    "bioes": {"begin": "B", "inside": "I", "end": "E", "single": "S"},
    "bmes": {"begin": "B", "inside": "M", "end": "E", "single": "S"},
}
_ROLES: dict[str, dict[str, str]] = {scheme: {p: r for r, p in roles.items()} for scheme, roles in _PREFIXES.items()}


def _check_scheme(scheme: str) -> Scheme:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown tagging scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    return scheme


def split_tag(tag: str, scheme: Scheme = "bio") -> tuple[str, str | None]:
    """``"B-OTHER"`` → ``("begin", "MISC")``; ``"O"`` → ``("outside", None)``. Raises on tags foreign to ``scheme``."""
    if tag == OUTSIDE:
        return "outside", None
    prefix, dash, entity_type = tag.partition("-")
    role = _ROLES[_check_scheme(scheme)].get(prefix)
    if not dash or not entity_type or role is None:
        raise ValueError(f"tag {tag!r} is not O or one of {'/'.join(_ROLES[scheme])}-TYPE ({scheme} scheme)")
    return role, canonical_type(entity_type)


def detect_scheme(tags: Iterable[str]) -> Scheme:
    """The smallest scheme whose prefixes cover ``tags`` (M- ⇒ BMES, E-/S- ⇒ BIOES, else BIO)."""
    prefixes = {tag.partition("-")[0] for tag in tags if tag != OUTSIDE}
    if "M" in prefixes:
        return "bmes"
    if prefixes & {"E", "S"}:
        return "bioes"
    return "bio"


def labels_for(scheme: Scheme, types: Sequence[str] = ENTITY_TYPES) -> list[str]:
    """The label list for a tagger: ``O`` first, then each type's tags in role order (B, I[, E, S])."""
    prefixes = _PREFIXES[_check_scheme(scheme)].values()
    return [OUTSIDE] + [f"{prefix}-{canonical_type(t)}" for t in types for prefix in prefixes]


def spans_from_tags(tags: Sequence[str], scheme: Scheme = "bio") -> list[Span]:
    """Entity spans ``(first_word, end_word_exclusive, type)`` in order; invalid sequences read as conlleval does."""
    spans: list[Span] = []
    open_start: int | None = None
    open_type: str | None = None

    def close(end: int) -> None:
        nonlocal open_start, open_type
        if open_start is not None:
            spans.append((open_start, end, open_type))  # type: ignore[arg-type]
        open_start, open_type = None, None

    for index, tag in enumerate(tags):
        role, entity_type = split_tag(tag, scheme)
        continues = open_start is not None and open_type == entity_type
        if role == "outside":
            close(index)
        elif role == "single" or (role == "end" and not continues):
            close(index)
            spans.append((index, index + 1, entity_type))  # type: ignore[arg-type]
        elif role == "end":
            close(index + 1)
        elif role == "begin" or not continues:
            close(index)
            open_start, open_type = index, entity_type
    close(len(tags))
    return spans


def tags_from_spans(spans: Iterable[Span], length: int, scheme: Scheme = "bio") -> list[str]:
    """The valid tag sequence of ``length`` words with exactly these (non-overlapping) spans."""
    prefixes = _PREFIXES[_check_scheme(scheme)]
    tags = [OUTSIDE] * length
    previous_end = 0
    for start, end, entity_type in sorted(spans):
        if not (previous_end <= start < end <= length):
            raise ValueError(f"span ({start}, {end}, {entity_type}) overlaps another or is outside 0..{length}")
        entity_type = canonical_type(entity_type)
        if end - start == 1 and "single" in prefixes:
            tags[start] = f"{prefixes['single']}-{entity_type}"
        else:
            tags[start] = f"{prefixes['begin']}-{entity_type}"
            for index in range(start + 1, end):
                tags[index] = f"{prefixes['inside']}-{entity_type}"
            if "end" in prefixes:
                tags[end - 1] = f"{prefixes['end']}-{entity_type}"
        previous_end = end
    return tags


def convert(tags: Sequence[str], source: Scheme, target: Scheme) -> list[str]:
    """Re-tag ``tags`` from ``source`` into ``target``; the spans are kept exactly (and types made canonical)."""
    return tags_from_spans(spans_from_tags(tags, source), len(tags), target)


def to_scheme(bio_tags: Sequence[str], scheme: Scheme) -> list[str]:
    """Re-tag an :class:`~trainer.data.examples.Example`'s BIO tags into the scheme a tagger is trained in."""
    return convert(bio_tags, "bio", scheme)


def allowed_transition(previous: str | None, current: str | None, scheme: Scheme) -> bool:
    """Whether tag ``current`` may follow ``previous`` in a valid sequence (``None`` = sequence start/end).

    The constraint a CRF can impose so that Viterbi only ever decodes well-formed sequences.
    """
    prev_role, prev_type = split_tag(previous, scheme) if previous is not None else ("outside", None)
    cur_role, cur_type = split_tag(current, scheme) if current is not None else ("outside", None)
    entity_open = prev_role in {"begin", "inside"} and scheme != "bio"  # BIO entities end implicitly
    if cur_role in {"inside", "end"}:
        return prev_role in {"begin", "inside"} and prev_type == cur_type
    return not entity_open


def is_valid(tags: Sequence[str], scheme: Scheme) -> bool:
    """Whether ``tags`` is a well-formed sequence in ``scheme`` (no repair needed)."""
    sequence: list[str | None] = [None, *tags, None]
    return all(allowed_transition(a, b, scheme) for a, b in itertools.pairwise(sequence))
