"""Length batching: a batch's posts run in groups of similar length, each padded only to its own longest."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from postlens.runtime.exported import RUN_COST_SUBTOKENS, length_buckets

lengths_of_a_batch = st.lists(st.integers(min_value=3, max_value=128), min_size=1, max_size=64)


def padded_cost(lengths: list[int], groups: list[np.ndarray]) -> int:
    return sum(RUN_COST_SUBTOKENS + len(group) * max(lengths[i] for i in group) for group in groups)


@given(lengths_of_a_batch)
def test_every_post_runs_once_and_groups_do_not_overlap_in_length(lengths: list[int]) -> None:
    groups = length_buckets(lengths)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    for shorter, longer in itertools.pairwise(groups):
        assert max(lengths[i] for i in shorter) <= min(lengths[i] for i in longer)


@given(lengths_of_a_batch)
def test_grouping_never_costs_more_than_one_padded_batch(lengths: list[int]) -> None:
    assert padded_cost(lengths, length_buckets(lengths)) <= padded_cost(lengths, [np.arange(len(lengths))])


def test_short_posts_are_split_from_long_ones_only_when_the_padding_saved_pays_for_a_run() -> None:
    assert len(length_buckets([10] * 16 + [90] * 16)) == 2
    assert len(length_buckets([20, 21, 22, 23])) == 1
