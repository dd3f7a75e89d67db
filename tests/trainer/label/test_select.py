"""Choosing posts: the least certain first, rare types lifted, near-copies not all sent."""

from __future__ import annotations

from trainer.label.select import Candidate, diverse, uncertainty

SHARES = {"PER": 0.5, "LOC": 0.4, "MISC": 0.1}


def test_a_coin_toss_span_is_more_uncertain_than_a_sure_one() -> None:
    assert uncertainty([0.5], ["PER"], SHARES) > uncertainty([0.95], ["PER"], SHARES)


def test_a_post_with_a_rare_type_is_more_uncertain_than_one_without_at_equal_confidence() -> None:
    assert uncertainty([0.8], ["MISC"], SHARES) > uncertainty([0.8], ["PER"], SHARES)


def test_the_least_confident_span_of_a_post_decides() -> None:
    assert uncertainty([0.99, 0.3], ["PER", "PER"], SHARES) == uncertainty([0.3], ["PER"], SHARES)


def candidate(id_: str, text: str, score: float) -> Candidate:
    return Candidate({"id": id_, "text": text}, uncertainty=score)


def test_near_copies_give_way_to_a_different_post() -> None:
    pool = [
        candidate("a", "Messi scores again in Miami tonight", 0.9),
        candidate("b", "RT Messi scores again in Miami tonight", 0.89),
        candidate("c", "Flooding closes the bridge in Lagos", 0.7),
    ]
    assert [c.id for c in diverse(pool, 2, diversity=0.5)] == ["a", "c"]
    assert [c.id for c in diverse(pool, 2, diversity=0.0)] == ["a", "b"]  # without diversity: by uncertainty only


def test_no_post_is_chosen_twice() -> None:
    pool = [candidate(str(i), "same words", 0.5) for i in range(5)]
    chosen = diverse(pool, 10, diversity=0.5)
    assert sorted(c.id for c in chosen) == ["0", "1", "2", "3", "4"]
