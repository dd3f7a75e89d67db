"""trainer.retrain.decision: the hash split, the fine-tuning sets, the gate, the base checkpoint and its config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from postlens.runtime.exported import CARD_FILE
from trainer.data.load import load_examples
from trainer.data.split import hash_position
from trainer.retrain.decision import (
    ModelScore,
    RetrainError,
    TooFewLabels,
    decide,
    fine_tune_config,
    fine_tuning_sets,
    new_label_gate,
    reference_gate,
    replay_size,
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
    assert all(0 <= hash_position(e.id) < 1 for e in many_examples)


def test_fine_tuning_sets_combine_the_slices_with_the_given_files(many_examples) -> None:
    labels, valid, extra = many_examples[:200], many_examples[200:230], many_examples[230:240]
    sets = fine_tuning_sets(labels, valid, extra, holdout=0.15, tune=0.10)
    split = split_labels(labels, 0.15, 0.10)
    assert sets.evaluation == [*split.holdout, *valid] and sets.train == [*split.train, *extra]
    assert sets.tune == split.tune and not {e.id for e in sets.train} & {e.id for e in sets.evaluation}


def test_fine_tuning_mixes_in_the_replay_share_drawn_from_the_base_sample(many_examples) -> None:
    labels, pool = many_examples[:200], many_examples[300:600]
    sets = fine_tuning_sets(labels, [], [], 0.15, 0.10, replay_pool=pool, replay_share=0.5, seed=1)
    assert len(sets.replay) == len(sets.new) and set(map(id, sets.replay)) <= set(map(id, pool))
    assert len(sets.train) == 2 * len(sets.new)  # half of what is trained on is replayed
    again = fine_tuning_sets(labels, [], [], 0.15, 0.10, replay_pool=pool, replay_share=0.5, seed=1)
    assert [e.id for e in again.replay] == [e.id for e in sets.replay]  # a run is repeatable
    assert replay_size(100, 0.75, 1000) == 300 and replay_size(100, 0.5, 40) == 40 and replay_size(100, 0, 9) == 0


def test_labels_too_few_to_hold_any_out_are_refused_unless_valid_data_is_given(many_examples) -> None:
    trained_only = [e for e in many_examples if hash_position(e.id) >= 0.25][:5]
    with pytest.raises(TooFewLabels, match="0 held out"):
        fine_tuning_sets(trained_only, [], [], holdout=0.15, tune=0.10)
    sets = fine_tuning_sets(trained_only, many_examples[:3], [], holdout=0.15, tune=0.10)
    assert len(sets.evaluation) == 3 and len(sets.train) == 5 and sets.tune == []


def model_score(f1: float, per_type: dict[str, float]) -> ModelScore:
    entity = {"precision": f1, "recall": f1, "f1": f1, "per_type": {t: {"f1": v} for t, v in per_type.items()}}
    return ModelScore(checkpoint="c", version="v", f1=f1, report={"entity": entity})


def test_the_new_labels_gate_promotes_only_a_candidate_that_is_not_worse() -> None:
    def gate(base: float, candidate: float, tolerance: float):
        return new_label_gate(model_score(base, {}), model_score(candidate, {}), posts=10, tolerance=tolerance)

    assert gate(0.70, 0.70, 0.0).passed and gate(0.70, 0.90, 0.0).passed and gate(0.70, 0.69, 0.02).passed
    refused = gate(0.70, 0.69, 0.0)
    assert not refused.passed and "new-labels gate" in refused.reasons[0]
    assert decide([gate(0.7, 0.8, 0), refused]) == "keep_base" and decide([gate(0.7, 0.8, 0)]) == "promote"


def test_the_reference_gate_names_a_type_that_falls_past_its_margin(many_examples) -> None:
    reference = many_examples[:400]  # synthetic posts: every type has dozens of gold spans
    base = model_score(0.80, {"PER": 0.9, "LOC": 0.8, "ORG": 0.8, "MISC": 0.7})

    def gate(candidate: ModelScore):
        return reference_gate(base, candidate, reference, tolerance=0.005, type_margin=0.02, min_type_spans=20)

    assert gate(model_score(0.80, {"PER": 0.9, "LOC": 0.81, "ORG": 0.79, "MISC": 0.69})).passed
    forgot = gate(model_score(0.80, {"PER": 0.95, "LOC": 0.85, "ORG": 0.8, "MISC": 0.4}))
    assert not forgot.passed and len(forgot.reasons) == 1  # the overall F1 held: only MISC is refused
    assert "reference gate" in forgot.reasons[0] and "type MISC" in forgot.reasons[0]
    worse = gate(model_score(0.79, {"PER": 0.9, "LOC": 0.8, "ORG": 0.8, "MISC": 0.7}))
    assert not worse.passed and "0.790 < base 0.800" in worse.reasons[0]
    few_spans = reference_gate(base, model_score(0.8, {"MISC": 0.0}), reference[:5], 0.005, 0.02, min_type_spans=20)
    assert few_spans.gated_types == [] and few_spans.passed  # too few gold spans to gate a type on its own


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
    recorded = resolve_config("tiny").train
    gentle = fine_tune_config(base, ["train.crf_lr=0.5"], lr_scale=0.2)  # a fine-tune continues at lower rates
    assert gentle.train.lr == pytest.approx(recorded.lr * 0.2) and gentle.train.encoder_lr == pytest.approx(
        recorded.encoder_lr * 0.2
    )
    assert gentle.train.crf_lr == 0.5  # --set wins
    with pytest.raises(RetrainError, match="model comes from the base"):
        fine_tune_config(base, ["model.fusion.name=text"])
    with pytest.raises(RetrainError, match="--set"):
        fine_tune_config(base, ["train.no_such_key=1"])
