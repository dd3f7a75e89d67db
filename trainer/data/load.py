"""The one entry point that loads a dataset file, whatever its format."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from postlens.settings import get_settings
from trainer.data.carried import SetToCarry, file_origins
from trainer.data.conll import ConllReport, read_conll
from trainer.data.examples import Example
from trainer.data.jsonl import JsonlReport, read_jsonl

log = logging.getLogger(__name__)


def load_examples(path: Path, images_dir: Path | None = None) -> list[Example]:
    """Read a dataset file: JSONL (``.jsonl``/``.json``, labels as in docs/contracts.md) or Twitter CoNLL (``.txt``).

    ``images_dir`` is where CoNLL images are looked up by IMGID; JSONL files name their images themselves (paths
    relative to the file's folder). The reader's report (counts, missing images) is logged.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    report: JsonlReport | ConllReport
    if suffix in {".jsonl", ".json"}:
        examples, report = read_jsonl(path)
    elif suffix == ".txt":
        examples, report = read_conll(path, images_dir=images_dir)
    else:
        raise ValueError(f"{path}: unknown dataset format {suffix!r}; expected .jsonl/.json (labels) or .txt (CoNLL)")
    log.info("%s: %s", path, report.summary())
    return examples


def load_split(paths: Sequence[Path], images_dir: Path | None = None) -> list[Example]:
    """The examples of several dataset files, in order; relative paths are under the shared data directory
    (``POSTLENS_SHARED_DATA_DIR``), as presets name them."""
    return load_with_origins(paths, images_dir).examples


def load_with_origins(paths: Sequence[Path], images_dir: Path | None = None) -> SetToCarry:
    """:func:`load_split`'s examples with each file's path, content hash and post count (what a checkpoint records
    of the data it was trained and selected on)."""
    root = get_settings().shared_data_dir
    files = [root / path for path in paths]
    per_file = [load_examples(path, images_dir=images_dir) for path in files]
    return SetToCarry(
        examples=[example for examples in per_file for example in examples],
        origins=file_origins(files, [len(examples) for examples in per_file]),
    )
