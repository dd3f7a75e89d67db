"""trainer.data.carried: a checkpoint keeps its reference set and replay sample, images included, and refuses an
altered one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from trainer.data.carried import (
    CARRIED_FILE,
    CarriedDataError,
    carry_training_data,
    file_origins,
    read_carried,
    read_set,
    sample,
)
from trainer.data.load import load_examples, load_with_origins
from trainer.synth import generate


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("carried-data")
    generate(out, 120, seed=5)
    return out


def test_a_checkpoint_carries_its_sets_with_their_images_after_the_originals_are_gone(
    synthetic: Path, tmp_path: Path
) -> None:
    data = Path(shutil.copytree(synthetic, tmp_path / "data"))
    train = load_with_origins([data / "train.jsonl"])
    valid = load_with_origins([data / "valid.jsonl"])
    checkpoint = tmp_path / "checkpoint"
    carried = carry_training_data(checkpoint, valid, train, replay_size=30, seed=7)
    assert carried.reference.posts == len(valid.examples) and carried.replay.posts == 30
    assert carried.reference.origins == file_origins([data / "valid.jsonl"], [len(valid.examples)])
    shutil.rmtree(data)  # as in a container: the clone and its data are not there

    reference = read_set(checkpoint, "reference")
    assert [(e.id, e.text, e.tags) for e in reference] == [(e.id, e.text, e.tags) for e in valid.examples]
    images = [Path(image) for example in reference for image in example.images]
    assert images and all(image.is_file() and image.is_relative_to(checkpoint) for image in images)
    replay = read_set(checkpoint, "replay")
    assert [e.id for e in replay] == [e.id for e in sample(train.examples, 30, seed=7)]


def test_words_are_kept_exactly_as_trained_on(tmp_path: Path) -> None:
    """CoNLL tokens are not what the label-form tokenizer would make of the text: the set keeps them."""
    conll = tmp_path / "tweets.txt"
    conll.write_text("IMGID:1\nRT\tO\n@user\tO\n:\tO\nNew\tB-LOC\nYork\tI-LOC\nrocks!!\tO\n\n")
    examples = load_examples(conll)
    carry_training_data(
        tmp_path / "checkpoint", load_with_origins([conll]), load_with_origins([conll]), replay_size=5, seed=1
    )
    (kept,) = read_set(tmp_path / "checkpoint", "reference")
    assert kept.words == examples[0].words and kept.tags == examples[0].tags


def test_a_missing_or_altered_set_is_refused(synthetic: Path, tmp_path: Path) -> None:
    with pytest.raises(CarriedDataError, match="carries no reference set"):
        read_set(tmp_path, "reference")
    valid = load_with_origins([synthetic / "valid.jsonl"])
    carry_training_data(tmp_path / "checkpoint", valid, valid, replay_size=5, seed=1)
    path = tmp_path / "checkpoint" / read_carried(tmp_path / "checkpoint").reference.file
    path.write_text(path.read_text().replace("PER", "LOC"))
    with pytest.raises(CarriedDataError, match=f"does not match the hash recorded in {CARRIED_FILE}"):
        read_set(tmp_path / "checkpoint", "reference")
