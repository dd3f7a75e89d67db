"""The Twitter CoNLL layout (Twitter-2015/2017 MNER data) ↔ :class:`~trainer.data.examples.Example`.

::

    IMGID:1015799
    RT<TAB>O
    George<TAB>B-PER
    <blank line between posts>

The post id is the IMGID; the text is the tokens joined by single spaces (so offsets are consistent with the
words). Tags may be BIO, BIOES or BMES (detected per post) and are stored as BIO with canonical types
(``OTHER`` → ``MISC``). A post's image is ``<images_dir>/<IMGID>.<ext>`` for the first extension found; without
one the post is text-only and counted as missing in the report. Files without ``IMGID`` lines (plain CoNLL) get
ids ``<file stem>-<n>``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import BaseModel, Field

from trainer.data.examples import Example

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")
_IMGID = "IMGID:"


class ConllReport(BaseModel):
    posts: int = 0
    tokens: int = 0
    entities: dict[str, int] = Field(default_factory=dict)
    images_found: int = 0
    images_missing: int = 0  # posts left text-only because their image is not in images_dir (or no dir given)

    def summary(self) -> str:
        types = ", ".join(f"{t} {n}" for t, n in sorted(self.entities.items())) or "none"
        return (
            f"{self.posts} posts, {self.tokens} tokens, entities: {types}; "
            f"images found {self.images_found}, missing {self.images_missing}"
        )


def _blocks(lines: Iterable[str], source: str) -> Iterator[tuple[int, str | None, list[str], list[str]]]:
    """(first line number, IMGID or None, tokens, tags) per post."""
    image_id: str | None = None
    tokens: list[str] = []
    tags: list[str] = []
    first_line = 0
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            if tokens:
                yield first_line, image_id, tokens, tags
            image_id, tokens, tags = None, [], []
            continue
        if line.startswith(_IMGID) and "\t" not in line:
            if tokens:  # a post that was not closed by a blank line
                yield first_line, image_id, tokens, tags
                tokens, tags = [], []
            image_id, first_line = line[len(_IMGID) :].strip(), number
            continue
        token, sep, tag = line.rpartition("\t")
        if not sep:
            token, _, tag = line.rpartition(" ")
        if not token or not tag:
            raise ValueError(f"{source}:{number}: expected 'token<TAB>TAG', got {line!r}")
        if not tokens and image_id is None:
            first_line = number
        tokens.append(token)
        tags.append(tag)
    if tokens:
        yield first_line, image_id, tokens, tags


def find_image(images_dir: Path | None, image_id: str) -> str | None:
    if images_dir is None:
        return None
    for suffix in IMAGE_SUFFIXES:
        candidate = images_dir / f"{image_id}{suffix}"
        if candidate.is_file():
            return str(candidate)
    return None


def read_conll(path: Path, images_dir: Path | None = None) -> tuple[list[Example], ConllReport]:
    path = Path(path)
    examples: list[Example] = []
    report = ConllReport()
    types: Counter[str] = Counter()
    with path.open(encoding="utf-8") as lines:
        for line_number, image_id, tokens, tags in _blocks(lines, str(path)):
            post_id = image_id or f"{path.stem}-{len(examples)}"
            image = find_image(images_dir, image_id) if image_id else None
            try:
                example = Example.from_tokens(post_id, tokens, tags, images=[image] if image else [])
            except ValueError as error:
                raise ValueError(f"{path}:{line_number}: {error}") from None
            examples.append(example)
            report.tokens += len(tokens)
            report.images_found += image is not None
            report.images_missing += image is None
            types.update(entity.type for entity in example.entities)
    report.posts = len(examples)
    report.entities = dict(types)
    return examples, report


def write_conll(examples: Iterable[Example], path: Path) -> None:
    """Write examples in the Twitter layout (BIO tags; the id as IMGID), readable by :func:`read_conll`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for example in examples:
            if example.tags is None:
                raise ValueError(f"post {example.id}: CoNLL needs tags; the example is unlabeled")
            out.write(f"{_IMGID}{example.id}\n")
            out.writelines(f"{word.text}\t{tag}\n" for word, tag in zip(example.words, example.tags, strict=True))
            out.write("\n")
