from pathlib import Path

import pytest
from PIL import Image

from postlens.settings import get_settings
from trainer.data.conll import read_conll, write_conll
from trainer.data.load import load_examples


def twitter(name: str) -> Path:
    path = get_settings().shared_data_dir / name / "valid.txt"
    if not path.is_file():
        pytest.fail(f"shared data missing: {path} (the Twitter MNER files: POSTLENS_SHARED_DATA_DIR)")
    return path


@pytest.mark.parametrize(("dataset", "posts"), [("twitter2015", 1000), ("twitter2017", 723)])
def test_twitter_valid_splits_read_with_the_documented_post_counts(dataset: str, posts: int) -> None:
    path = twitter(dataset)
    examples, report = read_conll(path)
    assert report.posts == len(examples) == posts
    assert report.images_missing == posts and report.images_found == 0
    raw_lines = [line for line in path.read_text(encoding="utf-8").splitlines() if "\t" in line]
    assert report.tokens == len(raw_lines)
    assert set(report.entities) == {"PER", "LOC", "ORG", "MISC"}  # 2015's OTHER is MISC here
    for example in examples[:50]:
        assert example.text == " ".join(word.text for word in example.words)
        for entity in example.entities:
            assert example.text[entity.start : entity.end].strip() == example.text[entity.start : entity.end]


def test_first_twitter2015_post_reads_as_in_the_file() -> None:
    example = read_conll(twitter("twitter2015"))[0][0]
    assert example.id == "32977"
    assert example.text.startswith("RT @jonathanchait : How post-Katrina New Orleans")
    assert [(example.text[e.start : e.end], e.type) for e in example.entities] == [("New Orleans", "LOC")]


@pytest.mark.parametrize("dataset", ["twitter2015", "twitter2017"])
def test_write_then_read_gives_the_same_examples(dataset: str, tmp_path: Path) -> None:
    examples, _ = read_conll(twitter(dataset))
    write_conll(examples, tmp_path / "copy.txt")
    again, _ = read_conll(tmp_path / "copy.txt")
    assert again == examples


def test_images_are_found_by_imgid_and_missing_ones_counted(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text(
        "IMGID:111\nJordan\tB-PER\nrocks\tO\n\nIMGID:222\nin\tO\nParis\tB-LOC\n\nIMGID:333\nAcme\tB-ORG\n",
        encoding="utf-8",
    )
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "111.jpg")
    Image.new("RGB", (8, 8)).save(images / "333.png")
    examples, report = read_conll(tmp_path / "data.txt", images_dir=images)
    assert [e.images for e in examples] == [[str(images / "111.jpg")], [], [str(images / "333.png")]]
    assert (report.images_found, report.images_missing) == (2, 1)
    assert load_examples(tmp_path / "data.txt", images_dir=images) == examples


def test_bmes_character_data_is_stored_as_bio(tmp_path: Path) -> None:
    (tmp_path / "weibo.txt").write_text("北\tB-LOC\n京\tE-LOC\n很\tO\n美\tO\n李\tS-PER\n", encoding="utf-8")
    [example], _ = read_conll(tmp_path / "weibo.txt")
    assert example.id == "weibo-0"
    assert example.tags == ["B-LOC", "I-LOC", "O", "O", "B-PER"]


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_text("IMGID:1\nfine\tO\nbroken-line-without-tag\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.txt:3"):
        read_conll(tmp_path / "bad.txt")
