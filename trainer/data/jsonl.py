"""JSONL posts and labels (docs/contracts.md) ↔ :class:`~trainer.data.examples.Example`.

Each line is one of:

- the label form — ``text`` plus character-span ``entities`` (and optional ``boxes``, ``subsets``, ``images``);
  the text is split by :func:`~postlens.runtime.words.word_tokenize` and each span mapped to the words it covers;
- the token/tag form — ``tokens`` and ``tags`` (BIO, BIOES or BMES, detected), with or without ``text``;
- a plain post (``id``, ``text``, no labels) — an unlabeled example.

Image paths that are neither URLs nor absolute are relative to the JSONL file's folder. A span whose ends fall
inside a word (``"Obam"`` of ``"Obama"``) is widened to the covering words and reported — or rejected with
``strict=True``; spans that cover no word, or overlap once widened, are always errors.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from postlens.runtime.schemes import tags_from_spans
from postlens.runtime.words import word_tokenize
from postlens.schemas import Box, Label, Post
from trainer.data.examples import Example, covering_words

LabelForm = Literal["spans", "tags"]


class JsonlReport(BaseModel):
    posts: int = 0
    unlabeled: int = 0
    entities: dict[str, int] = Field(default_factory=dict)
    images: int = 0
    widened_spans: list[str] = Field(default_factory=list)  # one line per span moved to word boundaries

    def summary(self) -> str:
        types = ", ".join(f"{t} {n}" for t, n in sorted(self.entities.items())) or "none"
        return (
            f"{self.posts} posts ({self.unlabeled} unlabeled), entities: {types}; {self.images} image references; "
            f"{len(self.widened_spans)} spans widened to word boundaries"
        )


def resolve_image(reference: str, base_dir: Path) -> str:
    """A URL or absolute path as is; a relative path joined to ``base_dir``."""
    if "://" in reference or Path(reference).is_absolute():
        return reference
    return str(base_dir / reference)


def relative_image(reference: str, base_dir: Path) -> str:
    """The inverse of :func:`resolve_image` for files under ``base_dir``; anything else unchanged."""
    if "://" in reference:
        return reference
    relative = os.path.relpath(reference, base_dir)
    return reference if relative.startswith("..") else Path(relative).as_posix()


def example_from_label(label: Label, base_dir: Path, strict: bool = False) -> tuple[Example, list[str]]:
    """The example for one label, and a note for each span that had to be widened to word boundaries."""
    fields: dict[str, Any] = {
        "images": [resolve_image(image, base_dir) for image in label.images],
        "subsets": label.subsets,
    }
    if label.entities is None:  # token/tag form; boxes already index the entities in text order
        assert label.tokens is not None  # Label's validation: character spans, or tokens with tags
        example = Example.from_tokens(label.id, label.tokens, label.tags, text=label.text, boxes=label.boxes, **fields)
        return example, []

    text = label.text or ""
    words = word_tokenize(text)
    notes: list[str] = []
    word_spans: list[tuple[int, int, str]] = []
    for entity in label.entities:
        covered = covering_words(words, entity.start, entity.end)
        where = f"post {label.id}: entity [{entity.start}, {entity.end}) {text[entity.start : entity.end]!r}"
        if covered is None:
            raise ValueError(f"{where} covers no word")
        first, end = covered
        if (words[first].start, words[end - 1].end) != (entity.start, entity.end):
            note = f"{where} widened to word boundaries {text[words[first].start : words[end - 1].end]!r}"
            if strict:
                raise ValueError(note.replace("widened to", "does not align with"))
            notes.append(note)
        word_spans.append((first, end, entity.type))
    # Boxes index the label's entity list; the example's entities are in text order.
    order = sorted(range(len(word_spans)), key=lambda i: word_spans[i][0])
    position = {original: rank for rank, original in enumerate(order)}
    boxes = [Box(entity=position[b.entity], image_index=b.image_index, box=b.box) for b in label.boxes]
    try:
        tags = tags_from_spans(word_spans, len(words), "bio")
    except ValueError as error:
        raise ValueError(f"post {label.id}: entities overlap once mapped to words ({error})") from None
    return Example(id=label.id, text=text, words=words, tags=tags, boxes=boxes, **fields), notes


def label_record(example: Example, base_dir: Path, form: LabelForm = "spans") -> dict[str, Any]:
    """The JSON object for one example (label form, or a plain post when unlabeled)."""
    record: dict[str, Any] = {
        "id": example.id,
        "text": example.text,
        "images": [relative_image(image, base_dir) for image in example.images],
    }
    if example.tags is not None:
        if form == "spans":
            record["entities"] = [entity.model_dump() for entity in example.entities]
        else:
            record["tokens"] = [word.text for word in example.words]
            record["tags"] = example.tags
        record["boxes"] = [box.model_dump(mode="json") for box in example.boxes]
    if example.subsets:
        record["subsets"] = example.subsets
    return record


def read_jsonl(path: Path, strict: bool = False) -> tuple[list[Example], JsonlReport]:
    path = Path(path)
    base_dir = path.parent
    examples: list[Example] = []
    report = JsonlReport()
    types: Counter[str] = Counter()
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("a line must hold a JSON object")
                if {"entities", "tokens", "tags"} & record.keys():
                    example, notes = example_from_label(Label.model_validate(record), base_dir, strict=strict)
                else:
                    post = Post.model_validate(record)
                    images = [resolve_image(image, base_dir) for image in post.images]
                    example = Example(id=post.id, text=post.text, words=word_tokenize(post.text), images=images)
                    notes = []
            except (ValueError, ValidationError) as error:  # json.JSONDecodeError is a ValueError
                raise ValueError(f"{path}:{line_number}: {error}") from None
            examples.append(example)
            report.widened_spans.extend(f"{path}:{line_number}: {note}" for note in notes)
            report.unlabeled += example.tags is None
            report.images += len(example.images)
            types.update(entity.type for entity in example.entities)
    report.posts = len(examples)
    report.entities = dict(types)
    return examples, report


def write_jsonl(examples: Iterable[Example], path: Path, form: LabelForm = "spans") -> None:
    """Write examples so that :func:`read_jsonl` gives them back (image paths relative to the file's folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for example in examples:
            out.write(json.dumps(label_record(example, path.parent, form), ensure_ascii=False) + "\n")
