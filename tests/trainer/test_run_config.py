"""Run configuration: presets, typed ``--set`` overrides and validation."""

from __future__ import annotations

import pytest

from trainer.run_config import apply_overrides, resolve_config


def test_overrides_are_typed_and_nested() -> None:
    config = apply_overrides({"train": {"epochs": 5}}, ["train.epochs=3", "model.fusion.name=late", "loss.flooding=0.05"])
    assert config == {"train": {"epochs": 3}, "model": {"fusion": {"name": "late"}}, "loss": {"flooding": 0.05}}


def test_presets_resolve_and_reject_unknown_keys() -> None:
    config = resolve_config("tiny", "text", ["train.epochs=2"])
    assert (config.preset, config.model.fusion.name, config.train.epochs) == ("tiny", "text", 2)
    with pytest.raises(ValueError, match="no preset"):
        resolve_config("no-such-preset")
    with pytest.raises(ValueError, match="epochz"):
        resolve_config("tiny", overrides=["train.epochz=2"])
