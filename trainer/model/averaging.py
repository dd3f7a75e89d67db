"""Weight averaging of a run's final epochs (a cheap ensemble in one network: the epochs' weights lie in one basin
late in fine-tuning, and their mean is less tied to one epoch's noise than the best epoch alone)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

State = dict[str, torch.Tensor]


def average_states(states: Sequence[State]) -> State:
    """The element-wise mean of ``states``' floating-point tensors; other tensors (integer buffers such as position
    ids) are the last state's."""
    if not states:
        raise ValueError("nothing to average")
    last = states[-1]
    return {
        name: torch.stack([state[name] for state in states]).mean(dim=0) if tensor.is_floating_point() else tensor
        for name, tensor in last.items()
    }
