"""The repository explains itself: no tracked file points at a document outside it, the README's and docs/' links
resolve, and docs/contracts.md names every field of the messages and every dead-letter kind.

Outside the repository there is only the shared data folder the benchmarks and some tests read
(``POSTLENS_SHARED_DATA_DIR``, by default ``../shared/data``): a path into it is data, not a document, and allowed.
Anything else — an architecture brief or contracts document kept beside the clone, another folder of
``../shared`` — must be brought into ``docs/`` and linked from there.
"""

from __future__ import annotations

import re
import subprocess
from enum import StrEnum
from pathlib import Path

import pytest
from pydantic import BaseModel

from postlens.failures import IndexFailure, InferFailure, IngestFailure, InternalFailure
from postlens.schemas import DeadLetter, Label, Post

ROOT = Path(__file__).resolve().parent.parent
# Built from pieces so that this file does not match its own rules.
OUTSIDE_DOCUMENTS = re.compile(
    "|".join(
        [
            r"\b" + "BRI" + r"EF\b",  # the brief the project started from, by name or as "… §2"
            r"\b" + "CONTR" + r"ACTS\b",
            r"(?:\.\./|/work/)" + "shared" + r"/(?!data\b)",  # the shared folder, other than its data
            r"/work/" + "shared" + r"\b(?!/data\b)",
        ]
    )
)
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def tracked_texts() -> dict[str, str]:
    """Tracked file name → its text (binary files and the lock, which holds registry URLs only, left out)."""
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    texts = {}
    for name in names:
        path = ROOT / name
        if name == "uv.lock" or not path.is_file():
            continue
        try:
            texts[name] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # images and other binary files
            continue
    return texts


def test_no_tracked_file_refers_to_a_document_outside_the_repository() -> None:
    found = [
        f"{name}:{number}: {line.strip()[:100]}"
        for name, text in tracked_texts().items()
        for number, line in enumerate(text.splitlines(), start=1)
        if OUTSIDE_DOCUMENTS.search(line)
    ]
    assert not found, "references to documents outside the repository (move them into docs/):\n" + "\n".join(found)


@pytest.mark.parametrize("line", ["see BRI" + "EF §2", "(CONTR" + "ACTS §D)", "../" + "shared/" + "BRI" + "EF.md"])
def test_the_rule_catches_outside_documents(line: str) -> None:
    assert OUTSIDE_DOCUMENTS.search(line)


@pytest.mark.parametrize("line", ["tweets (../shared/data)", "POSTLENS_SHARED_DATA_DIR", "the entities in brief"])
def test_the_rule_allows_the_shared_data(line: str) -> None:
    assert not OUTSIDE_DOCUMENTS.search(line)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_links_the_docs() -> None:
    linked = {target.split("#")[0] for target in MARKDOWN_LINK.findall((ROOT / "README.md").read_text())}
    assert {f"docs/{path.name}" for path in (ROOT / "docs").glob("*.md")} <= linked


@pytest.mark.parametrize("document", markdown_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    anchors_of: dict[Path, set[str]] = {}
    for target in MARKDOWN_LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not ours to check
            continue
        name, _, anchor = target.partition("#")
        path = (document.parent / name).resolve() if name else document
        assert path.is_relative_to(ROOT), f"{document.name}: {target} points outside the repository"
        assert path.exists(), f"{document.name}: {target} does not exist"
        if anchor and path.suffix == ".md":
            anchors = anchors_of.setdefault(path, heading_anchors(path))
            assert anchor in anchors, f"{document.name}: no heading #{anchor} in {path.name}"


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+\s+(.*)$", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


CONTRACTS_DOC = ROOT / "docs" / "contracts.md"


@pytest.mark.parametrize("schema", [Post, Label, DeadLetter], ids=lambda schema: schema.__name__)
def test_the_contracts_name_every_field_of_the_messages(schema: type[BaseModel]) -> None:
    """A field added to a message without its line in docs/contracts.md fails here: the document stays the reference."""
    text = CONTRACTS_DOC.read_text(encoding="utf-8")
    missing = [name for name in schema.model_fields if f"`{name}`" not in text]
    assert not missing, f"docs/contracts.md does not describe {schema.__name__} fields {missing}"


@pytest.mark.parametrize(
    "kinds", [IngestFailure, InferFailure, IndexFailure, InternalFailure], ids=lambda kinds: kinds.__name__
)
def test_the_contracts_list_every_dead_letter_kind(kinds: type[StrEnum]) -> None:
    text = CONTRACTS_DOC.read_text(encoding="utf-8")
    assert not (missing := [kind.value for kind in kinds if f"`{kind.value}`" not in text]), missing
