"""Deterministic slices of a dataset by hash: the same post always lands in the same slice, whatever else the file
holds or in what order (retraining's label slices by id, training's dev slice by the post's words)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from trainer.data.examples import Example


def hash_position(key: str) -> float:
    """Where ``key`` falls in [0, 1): the first 8 bytes of its sha256."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64


def words_key(example: Example) -> str:
    """A post's words joined by spaces: identical tweets (retweets, duplicates across files) share it, so they land
    in the same slice and the dev slice never scores a post also trained on."""
    return " ".join(word.text for word in example.words)


def carve_dev(examples: Sequence[Example], share: float) -> tuple[list[Example], list[Example]]:
    """``examples`` split into (trained on, dev): a post is dev when its words hash into [0, ``share``)."""
    fit: list[Example] = []
    dev: list[Example] = []
    for example in examples:
        (dev if hash_position(words_key(example)) < share else fit).append(example)
    return fit, dev
