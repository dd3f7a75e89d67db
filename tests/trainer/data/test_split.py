"""trainer.data.split: the dev slice is carved out of train by a hash of the words — the same posts every time,
whatever the order, disjoint from what is trained on, about the share asked for, duplicates on one side."""

from __future__ import annotations

import random

from trainer.data.examples import Example
from trainer.data.split import carve_dev, hash_position, words_key

POSTS = 4000


def posts(count: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    vocabulary = ["Obama", "visits", "#Paris", "NFL", "game", "tonight", "@user", "RT", "love", "London", "🎉"]
    return [
        Example.from_tokens(f"post-{i}", tokens := rng.choices(vocabulary, k=rng.randint(3, 12)), ["O"] * len(tokens))
        for i in range(count)
    ]


def test_the_dev_slice_is_the_share_asked_for_and_disjoint_from_what_is_trained_on() -> None:
    examples = posts(POSTS)
    fit, dev = carve_dev(examples, 0.1)
    assert len(fit) + len(dev) == POSTS
    assert {id(e) for e in fit}.isdisjoint(id(e) for e in dev)
    assert abs(len({words_key(e) for e in dev}) / len({words_key(e) for e in examples}) - 0.1) < 0.02
    assert {words_key(e) for e in fit}.isdisjoint(words_key(e) for e in dev)  # duplicates land on one side
    assert all(hash_position(words_key(e)) < 0.1 for e in dev)


def test_the_same_posts_are_dev_whatever_the_order_or_the_other_posts() -> None:
    examples = posts(POSTS)
    shuffled = random.Random(1).sample(examples, len(examples))
    dev_ids = {e.id for e in carve_dev(examples, 0.1)[1]}
    assert {e.id for e in carve_dev(shuffled, 0.1)[1]} == dev_ids
    half = examples[: POSTS // 2]
    assert {e.id for e in carve_dev(half, 0.1)[1]} == dev_ids & {e.id for e in half}


def test_no_share_carves_nothing() -> None:
    examples = posts(50)
    assert carve_dev(examples, 0.0) == (examples, [])
