"""trainer.retrain.decision: the hash split, the fine-tuning sets, the gate, the base checkpoint and its config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from postlens.runtime.exported import CARD_FILE
from trainer.data.load import load_examples
from trainer.retrain.decision import (
    RetrainError,
    TooFewLabels,
    decide,
    fine_tune_config,
    fine_tuning_sets,
    id_position,
    resolve_base,
    split_labels,
)
from trainer.run_config import resolve_config
from trainer.synth import generate


@pytest.fixture(scope="module")
def many_examples(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("synth-split")
    generate(out, 600, seed=3)
    return load_examples(out / "train.jsonl") + load_examples(out / "valid.jsonl")


def test_split_is_a_deterministic_partition_in_the_configured_shares(many_examples) -> None:
    split = split_labels(many_examples, holdout=0.15, tune=0.10)
    ids = [[e.id for e in part] for part in (split.train, split.tune, split.holdout)]
    assert sorted(i for part in ids for i in part) == sorted(e.id for e in many_examples)  # every label once
    n = len(many_examples)
    assert abs(len(split.holdout) / n - 0.15) < 0.05 and abs(len(split.tune) / n - 0.10) < 0.05
    again = split_labels(list(reversed(many_examples)), holdout=0.15, tune=0.10)
    assert sorted(e.id for e in again.holdout) == sorted(ids[2])


def test_a_label_stays_in_its_slice_whatever_else_arrives(many_examples) -> None:
    """Labels trained on in one run never become evaluation labels in a later (e.g. --from-beginning) run."""
    half = many_examples[: len(many_examples) // 2]
    held_alone = {e.id for e in split_labels(half, 0.15, 0.10).holdout}
    held_with_all = {e.id for e in split_labels(many_examples, 0.15, 0.10).holdout}
    assert held_alone == held_with_all & {e.id for e in half}
    assert all(0 <= id_position(e.id) < 1 for e in many_examples)


def test_fine_tuning_sets_combine_the_slices_with_the_given_files(many_examples) -> None:
    labels, valid, extra = many_examples[:200], many_examples[200:230], many_examples[230:240]
    sets = fine_tuning_sets(labels, valid, extra, holdout=0.15, tune=0.10)
    split = split_labels(labels, 0.15, 0.10)
    assert sets.evaluation == [*split.holdout, *valid] and sets.train == [*split.train, *extra]
    assert sets.tune == split.tune and not {e.id for e in sets.train} & {e.id for e in sets.evaluation}


def test_labels_too_few_to_hold_any_out_are_refused_unless_valid_data_is_given(many_examples) -> None:
    trained_only = [e for e in many_examples if id_position(e.id) >= 0.25][:5]
    with pytest.raises(TooFewLabels, match="0 held out"):
        fine_tuning_sets(trained_only, [], [], holdout=0.15, tune=0.10)
    sets = fine_tuning_sets(trained_only, many_examples[:3], [], holdout=0.15, tune=0.10)
    assert len(sets.evaluation) == 3 and len(sets.train) == 5 and sets.tune == []


def test_the_gate_promotes_only_a_candidate_that_is_not_worse() -> None:
    assert decide(0.70, 0.70, tolerance=0.0) == "promote"
    assert decide(0.70, 0.69, tolerance=0.0) == "keep_base"
    assert decide(0.70, 0.69, tolerance=0.02) == "promote"
    assert decide(0.70, 0.90, tolerance=0.0) == "promote"


def fake_checkpoint(path: Path, weights: str) -> Path:
    path.mkdir(parents=True)
    config = resolve_config("tiny").model_dump(mode="json")
    (path / "config.yaml").write_text(yaml.safe_dump({**config, "version": weights}))
    return path


def fake_version(repo: Path, version: int, checkpoint: Path, weights: str) -> None:
    folder = repo / "postlens" / str(version)
    folder.mkdir(parents=True)
    card = {"source_checkpoint": str(checkpoint), "checkpoint_version": weights}
    (folder / CARD_FILE).write_text(json.dumps(card))


def test_the_default_base_is_the_checkpoint_behind_the_newest_version(tmp_path: Path) -> None:
    old, new = fake_checkpoint(tmp_path / "old", "aaa"), fake_checkpoint(tmp_path / "new", "bbb")
    repo = tmp_path / "repo"
    fake_version(repo, 1, old, "aaa")
    fake_version(repo, 2, new, "bbb")
    assert resolve_base(None, repo, "postlens") == new
    assert resolve_base(old, repo, "postlens") == old  # --base wins


def test_no_usable_base_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RetrainError, match="no versions"):
        resolve_base(None, tmp_path / "empty", "postlens")
    changed = fake_checkpoint(tmp_path / "ckpt", "ccc")
    fake_version(tmp_path / "repo", 1, changed, "old-weights")
    with pytest.raises(RetrainError, match="weights ccc"):
        resolve_base(None, tmp_path / "repo", "postlens")
    fake_version(tmp_path / "gone", 1, tmp_path / "deleted", "x")
    with pytest.raises(RetrainError, match="no longer a checkpoint"):
        resolve_base(None, tmp_path / "gone", "postlens")


def test_fine_tuning_keeps_the_base_architecture_and_takes_train_overrides(tmp_path: Path) -> None:
    base = fake_checkpoint(tmp_path / "base", "abc")
    config = fine_tune_config(base, ["train.epochs=2", "loss.contrastive=0"])
    assert config.train.epochs == 2 and config.loss.contrastive == 0 and config.model.fusion.name == "cross"
    with pytest.raises(RetrainError, match="model comes from the base"):
        fine_tune_config(base, ["model.fusion.name=text"])
    with pytest.raises(RetrainError, match="--set"):
        fine_tune_config(base, ["train.no_such_key=1"])
