"""The one entry point that loads a dataset file, whatever its format."""

from __future__ import annotations

import logging
from pathlib import Path

from trainer.data.conll import read_conll
from trainer.data.examples import Example
from trainer.data.jsonl import read_jsonl

log = logging.getLogger(__name__)


def load_examples(path: Path, images_dir: Path | None = None) -> list[Example]:
    """Read a dataset file: JSONL (``.jsonl``/``.json``, BRIEF §2 label form) or Twitter CoNLL (``.txt``).

    ``images_dir`` is where CoNLL images are looked up by IMGID; JSONL files name their images themselves (paths
    relative to the file's folder). The reader's report (counts, missing images) is logged.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".json"}:
        examples, report = read_jsonl(path)
    elif suffix == ".txt":
        examples, report = read_conll(path, images_dir=images_dir)
    else:
        raise ValueError(f"{path}: unknown dataset format {suffix!r}; expected .jsonl/.json (labels) or .txt (CoNLL)")
    log.info("%s: %s", path, report.summary())
    return examples
