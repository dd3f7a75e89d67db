from collections import Counter, defaultdict
from pathlib import Path

import pytest
from PIL import Image

from trainer.data.jsonl import read_jsonl
from trainer.synth import (
    AMBIGUOUS_TYPES,
    BACKGROUND,
    NAME_COLOURS,
    SHAPE_OF_TYPE,
    SUBSET_SHARES,
    Shape,
    draw_image,
    generate,
)

POSTS = 600
SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, POSTS, seed=7)
    return out


@pytest.fixture(scope="module")
def splits(dataset: Path) -> dict[str, list]:
    # strict: every synthetic span must fall on the shared tokenizer's word boundaries
    return {split: read_jsonl(dataset / f"{split}.jsonl", strict=True)[0] for split in SPLITS}


def ambiguous_mentions(examples) -> list[tuple[object, int, str, str]]:
    """(example, entity index, name, type) for every ambiguous-name entity."""
    return [
        (example, index, example.text[entity.start : entity.end], entity.type)
        for example in examples
        for index, entity in enumerate(example.entities)
        if example.text[entity.start : entity.end] in NAME_COLOURS
    ]


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    generate(tmp_path / "a", 60, seed=5)
    generate(tmp_path / "b", 60, seed=5)
    generate(tmp_path / "c", 60, seed=6)
    assert file_bytes(tmp_path / "a") == file_bytes(tmp_path / "b")
    assert file_bytes(tmp_path / "a") != file_bytes(tmp_path / "c")


def test_splits_and_subsets_come_in_the_designed_proportions(splits: dict) -> None:
    sizes = {split: len(examples) for split, examples in splits.items()}
    assert sizes == {"train": 420, "valid": 90, "test": 90}
    for examples in splits.values():
        shares = Counter(example.subsets[0] for example in examples)
        for subset, share in SUBSET_SHARES.items():
            assert shares[subset] / len(examples) == pytest.approx(share, abs=0.02)
    everything = [example for examples in splits.values() for example in examples]
    entity_counts = Counter(len(example.entities) for example in everything)
    assert entity_counts[0] > 0 and entity_counts[2] > 0  # some posts without, some with two entities
    assert len({example.id for example in everything}) == POSTS


def test_images_per_subset_and_paths_relative_to_the_output(dataset: Path, splits: dict) -> None:
    expected = {"ambiguous": {1}, "irrelevant_image": {1}, "no_image": {0}, "multi_image": {2, 3, 4}}
    for example in splits["train"]:
        assert len(example.images) in expected[example.subsets[0]]
        for image in example.images:
            with Image.open(image) as picture:
                assert picture.size == (64, 64) and picture.mode == "RGB"
    raw = (dataset / "train.jsonl").read_text(encoding="utf-8")
    assert '"images/' in raw and str(dataset) not in raw


def test_every_gold_box_frames_its_name_in_the_names_colour_and_types_shape(splits: dict) -> None:
    checked = 0
    for example, index, name, entity_type in ambiguous_mentions(splits["train"]):
        [box] = [b for b in example.boxes if b.entity == index]
        with Image.open(example.images[box.image_index]) as picture:
            pixels = picture.convert("RGB")
        x0, y0, x1, y1 = (round(v * 64) for v in box.box)
        assert pixels.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == NAME_COLOURS[name]
        # The block holds exactly the type's shape: redraw it alone and compare pixel for pixel.
        drawn = draw_image([Shape(SHAPE_OF_TYPE[entity_type], NAME_COLOURS[name], x0, y0)], 64)
        assert pixels.crop((x0, y0, x1, y1)).tobytes() == drawn.crop((x0, y0, x1, y1)).tobytes()
        checked += 1
    assert checked > 100


def test_context_entities_and_irrelevant_images_show_no_name_colour(splits: dict) -> None:
    name_colours = set(NAME_COLOURS.values())
    for example in splits["train"]:
        depicted = {box.entity for box in example.boxes}
        names = {example.text[e.start : e.end] for i, e in enumerate(example.entities) if i in depicted}
        assert names <= set(NAME_COLOURS)
        if example.subsets == ["irrelevant_image"]:
            assert not example.boxes
            with Image.open(example.images[0]) as picture:
                colours = {colour for _, colour in picture.convert("RGB").getcolors()}
            assert not colours & name_colours and colours - {BACKGROUND}


def test_text_alone_is_at_chance_on_ambiguous_names(splits: dict) -> None:
    train, test = ambiguous_mentions(splits["train"]), ambiguous_mentions(splits["test"])
    by_name: dict[str, Counter] = defaultdict(Counter)
    by_context: dict[str, Counter] = defaultdict(Counter)
    for example, _, name, entity_type in train:
        by_name[name][entity_type] += 1
        by_context[example.text.replace(name, "_")][entity_type] += 1
    for counts in by_name.values():  # each name is every type equally often
        assert set(counts) == set(AMBIGUOUS_TYPES) and max(counts.values()) - min(counts.values()) <= 1
    # The best text-only rules learnable from train: majority type per name, and per name-masked sentence.
    name_rule = sum(by_name[name].most_common(1)[0][0] == t for _, _, name, t in test) / len(test)
    seen = [(by_context[e.text.replace(n, "_")], t) for e, _, n, t in test if e.text.replace(n, "_") in by_context]
    context_rule = sum(counts.most_common(1)[0][0] == t for counts, t in seen) / len(seen)
    chance = 1 / len(AMBIGUOUS_TYPES)
    assert name_rule < chance + 0.12 and context_rule < chance + 0.15


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image-size"):
        generate(tmp_path, 10, seed=0, image_size=30)
    with pytest.raises(ValueError, match="at least 3"):
        generate(tmp_path, 2, seed=0)
