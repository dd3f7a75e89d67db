"""The CRF (torch NLL) and its NumPy decoding agree with brute-force enumeration over every tag sequence."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from postlens.runtime.decode import CrfParams, TagScheme, forward_backward, span_marginal, token_marginals, viterbi
from trainer.model.crf import LinearChainCrf

TYPES = ("A", "B")


def random_case(scheme: TagScheme, lengths: list[int], seed: int, constrained: bool):
    rng = np.random.default_rng(seed)
    size = len(scheme.labels)
    width = max(lengths)
    emissions = rng.normal(scale=2.0, size=(len(lengths), width, size))
    mask = np.arange(width)[None, :] < np.array(lengths)[:, None]
    params = CrfParams(rng.normal(size=size), rng.normal(size=(size, size)), rng.normal(size=size))
    if constrained:
        crf = LinearChainCrf(scheme)
        with torch.no_grad():
            crf.start_scores.copy_(torch.from_numpy(params.start))
            crf.transition_scores.copy_(torch.from_numpy(params.transitions))
            crf.end_scores.copy_(torch.from_numpy(params.end))
        params = crf.numpy_params()
    return emissions, mask, params


def all_sequences(emissions: np.ndarray, length: int, params: CrfParams) -> tuple[np.ndarray, np.ndarray]:
    """Every tag sequence of ``length`` words [S, length] and its unnormalised log score [S]."""
    size = emissions.shape[-1]
    sequences = np.array(list(itertools.product(range(size), repeat=length)))
    scores = params.start[sequences[:, 0]] + params.end[sequences[:, -1]]
    scores = scores + emissions[np.arange(length), sequences].sum(axis=1)
    scores = scores + params.transitions[sequences[:, :-1], sequences[:, 1:]].sum(axis=1)
    return sequences, scores


def span_event(sequences: np.ndarray, scheme: TagScheme, first: int, last: int, entity_type: str) -> np.ndarray:
    """Which sequences make words first..last exactly one entity of ``entity_type`` (written out per scheme)."""
    label = {name: index for index, name in enumerate(scheme.labels)}
    if scheme.name == "bio":
        pattern = [label[f"B-{entity_type}"]] + [label[f"I-{entity_type}"]] * (last - first)
        hit = (sequences[:, first : last + 1] == pattern).all(axis=1)
        if last + 1 < sequences.shape[1]:
            hit &= sequences[:, last + 1] != label[f"I-{entity_type}"]
        return hit
    if first == last:
        pattern = [label[f"S-{entity_type}"]]
    else:
        pattern = (
            [label[f"B-{entity_type}"]] + [label[f"I-{entity_type}"]] * (last - first - 1) + [label[f"E-{entity_type}"]]
        )
    return (sequences[:, first : last + 1] == pattern).all(axis=1)


CASES = [
    ("bio", [4, 2, 1, 3], False),
    ("bio", [5, 3], True),
    ("bioes", [3, 1, 2], False),
    ("bioes", [4, 2], True),
]


@pytest.mark.parametrize(("scheme_name", "lengths", "constrained"), CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_decoding_matches_brute_force(scheme_name: str, lengths: list[int], constrained: bool, seed: int) -> None:
    scheme = TagScheme(scheme_name, TYPES)
    emissions, mask, params = random_case(scheme, lengths, seed, constrained)
    paths = viterbi(emissions, mask, params)
    lattice = forward_backward(emissions, mask, params)
    marginals = token_marginals(lattice)

    for row, length in enumerate(lengths):
        sequences, scores = all_sequences(emissions[row], length, params)
        log_z = np.logaddexp.reduce(scores)
        probabilities = np.exp(scores - log_z)
        assert lattice.log_z[row] == pytest.approx(log_z, rel=1e-9)
        assert paths[row] == sequences[scores.argmax()].tolist()
        for position in range(length):
            expected = np.bincount(sequences[:, position], weights=probabilities, minlength=len(scheme.labels))
            np.testing.assert_allclose(marginals[row, position], expected, atol=1e-9)
        assert np.all(marginals[row, length:] == 0)
        for first, last in itertools.combinations_with_replacement(range(length), 2):
            for entity_type in TYPES:
                expected = probabilities[span_event(sequences, scheme, first, last, entity_type)].sum()
                got = span_marginal(
                    lattice,
                    row,
                    first,
                    last,
                    scheme.span_tags(last - first + 1, entity_type),
                    scheme.forbidden_after_span(entity_type),
                )
                assert got == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("scheme_name", ["bio", "bioes", "bmes"])
def test_token_marginals_sum_to_one_on_words(scheme_name: str) -> None:
    scheme = TagScheme(scheme_name, TYPES)
    emissions, mask, params = random_case(scheme, [6, 3, 0, 1], seed=3, constrained=True)
    marginals = token_marginals(forward_backward(emissions, mask, params))
    np.testing.assert_allclose(marginals.sum(axis=-1), mask.astype(float), atol=1e-9)


@pytest.mark.parametrize("scheme_name", ["bio", "bioes", "bmes"])
def test_constrained_viterbi_spells_valid_entities(scheme_name: str) -> None:
    scheme = TagScheme(scheme_name, TYPES)
    emissions, mask, params = random_case(scheme, [7, 5, 6], seed=5, constrained=True)
    allowed_start, allowed_transitions, allowed_end = scheme.allowed()
    for path in viterbi(emissions * 5, mask, params):
        assert allowed_start[path[0]] and allowed_end[path[-1]]
        assert all(allowed_transitions[prev, nxt] for prev, nxt in itertools.pairwise(path))
        # every non-O tag belongs to exactly one decoded span
        covered = sum(last - first + 1 for first, last, _ in scheme.spans(path))
        assert covered == sum(tag != 0 for tag in path)


def test_span_marginals_are_stable_for_extreme_scores() -> None:
    scheme = TagScheme("bio", TYPES)
    emissions, mask, params = random_case(scheme, [5], seed=7, constrained=True)
    lattice = forward_backward(emissions * 400, mask, params)
    assert np.all(np.isfinite(token_marginals(lattice)))
    path = viterbi(emissions * 400, mask, params)[0]
    for first, last, entity_type in scheme.spans(path):
        confidence = span_marginal(
            lattice,
            0,
            first,
            last,
            scheme.span_tags(last - first + 1, entity_type),
            scheme.forbidden_after_span(entity_type),
        )
        assert 0.99 <= confidence <= 1.0


@pytest.mark.parametrize(("scheme_name", "lengths"), [("bio", [4, 2, 1, 3]), ("bioes", [3, 1, 2])])
def test_torch_nll_matches_brute_force(scheme_name: str, lengths: list[int]) -> None:
    scheme = TagScheme(scheme_name, TYPES)
    crf = LinearChainCrf(scheme).double()
    with torch.no_grad():
        for parameter in crf.parameters():
            parameter.normal_()
    params = crf.numpy_params()
    rng = np.random.default_rng(11)
    width = max(lengths)
    emissions = rng.normal(size=(len(lengths), width, len(scheme.labels)))
    mask = np.arange(width)[None, :] < np.array(lengths)[:, None]
    gold = rng.integers(0, len(scheme.labels), size=(len(lengths), width))
    nll = crf.nll(torch.from_numpy(emissions), torch.from_numpy(gold), torch.from_numpy(mask))
    for row, length in enumerate(lengths):
        sequences, scores = all_sequences(emissions[row], length, params)
        gold_index = np.flatnonzero((sequences == gold[row, :length]).all(axis=1))[0]
        expected = np.logaddexp.reduce(scores) - scores[gold_index]
        assert nll[row].item() == pytest.approx(expected, rel=1e-9)


def test_torch_nll_is_differentiable_and_ignores_empty_posts() -> None:
    crf = LinearChainCrf(TagScheme("bio", TYPES))
    emissions = torch.randn(2, 3, len(crf.scheme.labels), requires_grad=True)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    nll = crf.nll(emissions, torch.zeros(2, 3, dtype=torch.long), mask)
    assert nll[1].item() == 0
    nll.sum().backward()
    assert emissions.grad is not None and torch.all(emissions.grad[0, 2] == 0)
    assert crf.transition_scores.grad is not None
