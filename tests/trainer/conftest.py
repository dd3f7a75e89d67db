"""Fixtures of the training tests (tests/trainer/test_train*.py): the synthetic set they train on, and torch's
process-wide settings given back after each module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from trainer.synth import generate

SYNTHETIC_POSTS = 360


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, SYNTHETIC_POSTS, seed=7)
    return out


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_globals() -> Iterator[None]:
    """Training sets torch's thread count and deterministic mode for the process; give them back afterwards."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
