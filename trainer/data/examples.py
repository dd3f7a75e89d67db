"""The dataset example every trainer part works on.

An :class:`Example` is a post split into words (by :func:`postlens.runtime.words.word_tokenize`, or by the dataset's
own tokens for CoNLL files) with one BIO tag per word. Entities are derived from the tags, never stored twice.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, field_validator, model_validator

from postlens.runtime.schemes import convert, detect_scheme, spans_from_tags
from postlens.runtime.words import Word
from postlens.schemas import Box, EntitySpan


def covering_words(words: list[Word], start: int, end: int) -> tuple[int, int] | None:
    """The words ``[first, last)`` that overlap characters ``[start, end)``, or ``None`` when no word does."""
    covered = [i for i, word in enumerate(words) if word.start < end and word.end > start]
    return (covered[0], covered[-1] + 1) if covered else None


class Example(BaseModel):
    """A post with its words, IOB2 tags (``None`` when unlabeled), images, gold boxes and subset tags.

    ``boxes[i].entity`` indexes :attr:`entities` (ordered by position in the text).
    """

    id: str
    text: str
    words: list[Word]
    tags: list[str] | None = None
    images: list[str] = []
    boxes: list[Box] = []
    subsets: list[str] = []

    @field_validator("tags")
    @classmethod
    def _valid_canonical_bio(cls, tags: list[str] | None) -> list[str] | None:
        # Stored tags are always well-formed IOB2 with canonical types (B-OTHER → B-MISC, O I-PER → O B-PER),
        # so consumers never repair them; the spans are unchanged.
        return None if tags is None else convert(tags, "bio", "bio")

    @model_validator(mode="after")
    def _consistent(self) -> Example:
        for word in self.words:
            if self.text[word.start : word.end] != word.text:
                raise ValueError(f"post {self.id}: word {word.text!r} is not text[{word.start}:{word.end}]")
        if self.tags is not None:
            if len(self.tags) != len(self.words):
                raise ValueError(f"post {self.id}: {len(self.words)} words but {len(self.tags)} tags")
            n_entities = len(spans_from_tags(self.tags))
            for box in self.boxes:
                if box.entity >= n_entities:
                    raise ValueError(f"post {self.id}: box names entity {box.entity}, but there are {n_entities}")
        elif self.boxes:
            raise ValueError(f"post {self.id}: boxes need tags")
        return self

    @classmethod
    def from_tokens(
        cls,
        post_id: str,
        tokens: list[str],
        tags: list[str] | None,
        text: str | None = None,
        **fields: Any,
    ) -> Example:
        """An example from a dataset's own tokens (CoNLL, token/tag JSONL) in any scheme; tags are stored as BIO.

        Without ``text`` the post text is the tokens joined by single spaces; with it, each token is located in
        order and only white space may lie between tokens.
        """
        if text is None:
            text = " ".join(tokens)
        words: list[Word] = []
        cursor = 0
        for token in tokens:
            if not token:
                raise ValueError(f"post {post_id}: empty token")
            start = text.find(token, cursor)
            if start < 0 or text[cursor:start].strip():
                raise ValueError(f"post {post_id}: token {token!r} does not follow offset {cursor} in the text")
            words.append(Word(text=token, start=start, end=start + len(token)))
            cursor = start + len(token)
        bio_tags = None if tags is None else convert(tags, detect_scheme(tags), "bio")
        return cls(id=post_id, text=text, words=words, tags=bio_tags, **fields)

    @property
    def gold_tags(self) -> list[str]:
        """The tags of a labeled example (what training and evaluation read)."""
        if self.tags is None:
            raise ValueError(f"post {self.id} has no labels")
        return self.tags

    @property
    def entities(self) -> list[EntitySpan]:
        """Gold entities as character spans, in text order (empty when unlabeled)."""
        if self.tags is None:
            return []
        return [
            EntitySpan(start=self.words[first].start, end=self.words[last - 1].end, type=entity_type)
            for first, last, entity_type in spans_from_tags(self.tags)
        ]
