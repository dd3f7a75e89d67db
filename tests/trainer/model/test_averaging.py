"""trainer.model.averaging: the mean of the kept epochs' weights."""

from __future__ import annotations

import pytest
import torch

from trainer.model.averaging import average_states


def test_averaged_weights_are_the_mean_of_the_states_and_integer_buffers_the_last() -> None:
    states = [
        {"weight": torch.full((2, 3), float(value)), "position_ids": torch.arange(4) + value} for value in (1, 2, 6)
    ]
    averaged = average_states(states)
    assert torch.equal(averaged["weight"], torch.full((2, 3), 3.0))
    assert torch.equal(averaged["position_ids"], states[-1]["position_ids"])
    assert torch.equal(states[0]["weight"], torch.ones(2, 3))  # the states themselves are untouched


def test_averaging_a_real_network_s_states_loads_back() -> None:
    first, second = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    network = torch.nn.Linear(3, 2)
    network.load_state_dict(average_states([first.state_dict(), second.state_dict()]))
    assert torch.allclose(network.weight, (first.weight + second.weight) / 2)


def test_nothing_to_average_is_refused() -> None:
    with pytest.raises(ValueError, match="nothing"):
        average_states([])
