"""Run configuration: presets, typed ``--set`` overrides and validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from postlens.settings import get_settings
from trainer.data.examples import Example
from trainer.data.load import load_split
from trainer.run_config import apply_overrides, resolve_config
from trainer.train import epoch_batches


def test_overrides_are_typed_and_nested() -> None:
    config = apply_overrides(
        {"train": {"epochs": 5}}, ["train.epochs=3", "model.fusion.name=late", "loss.flooding=0.05"]
    )
    assert config == {"train": {"epochs": 3}, "model": {"fusion": {"name": "late"}}, "loss": {"flooding": 0.05}}


def test_presets_resolve_and_reject_unknown_keys() -> None:
    config = resolve_config("tiny", "text", ["train.epochs=2"])
    assert (config.preset, config.model.fusion.name, config.train.epochs) == ("tiny", "text", 2)
    with pytest.raises(ValueError, match="no preset"):
        resolve_config("no-such-preset")
    with pytest.raises(ValueError, match="epochz"):
        resolve_config("tiny", overrides=["train.epochz=2"])


def test_a_preset_names_its_data_under_the_shared_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = resolve_config("twitter")
    assert [str(path) for path in config.data.train] == ["twitter2015/train.txt", "twitter2017/train.txt"]
    assert [str(path) for path in config.data.valid] == ["twitter2015/valid.txt", "twitter2017/valid.txt"]
    for name, token in (("a", "Obama"), ("b", "Paris")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.txt").write_text(f"IMGID:{name}\n{token}\tB-PER\nsays\tO\n\n")
    monkeypatch.setenv("POSTLENS_SHARED_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        examples = load_split([Path("a/train.txt"), tmp_path / "b" / "train.txt"])  # relative or absolute
    finally:
        get_settings.cache_clear()
    assert [example.text for example in examples] == ["Obama says", "Paris says"]


def test_length_windows_batch_similar_lengths_and_keep_every_example_once() -> None:
    rng = np.random.default_rng(0)
    examples = [Example(id=str(i), text="x" * n, words=[]) for i, n in enumerate(rng.integers(1, 80, size=200))]
    settings = resolve_config("tiny", overrides=["train.batch_size=10", "train.length_window=5"]).train
    batches = epoch_batches(examples, settings, np.random.default_rng(1))
    assert sorted(e.id for batch in batches for e in batch) == sorted(e.id for e in examples)
    assert all(len(batch) == 10 for batch in batches)
    spread = np.mean([len(batch[-1].text) - len(batch[0].text) for batch in batches])
    plain = epoch_batches(examples, settings.model_copy(update={"length_window": 1}), np.random.default_rng(1))
    assert spread < np.mean([max(len(e.text) for e in b) - min(len(e.text) for e in b) for b in plain]) / 3
