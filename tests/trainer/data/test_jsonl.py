import json
import re
from pathlib import Path

import pytest

from trainer.data.jsonl import read_jsonl, write_jsonl
from trainer.data.load import load_examples


def write_lines(path: Path, *records: dict) -> Path:
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    return path


def span_texts(example) -> list[tuple[str, str]]:
    return [(example.text[e.start : e.end], e.type) for e in example.entities]


TEXT = "RT @fan: Jordan Smith visited #Paris 🇫🇷 with AT&T's CEO"
LABEL = {
    "id": "p1",
    "text": TEXT,
    "images": ["images/a.png", "https://cdn.example.com/b.jpg"],
    "entities": [  # deliberately not in text order
        {"start": TEXT.index("AT&T"), "end": TEXT.index("AT&T") + 4, "type": "ORG"},
        {"start": TEXT.index("Jordan"), "end": TEXT.index(" visited"), "type": "PER"},
    ],
    "boxes": [{"entity": 1, "image_index": 0, "box": [0.0, 0.0, 0.5, 0.5]}],
    "subsets": ["ambiguous"],
}


def test_character_spans_become_bio_tags_and_come_back(tmp_path: Path) -> None:
    [example], report = read_jsonl(write_lines(tmp_path / "labels.jsonl", LABEL))
    assert span_texts(example) == [("Jordan Smith", "PER"), ("AT&T", "ORG")]
    assert example.tags[3:5] == ["B-PER", "I-PER"]
    # The box named entity 1 of the file's list (Jordan Smith), which is entity 0 in text order.
    assert example.boxes[0].entity == 0
    assert example.images == [str(tmp_path / "images/a.png"), "https://cdn.example.com/b.jpg"]
    assert report.widened_spans == [] and report.entities == {"PER": 1, "ORG": 1}


@pytest.mark.parametrize("form", ["spans", "tags"])
def test_write_then_read_is_lossless(tmp_path: Path, form: str) -> None:
    other = {"id": 7, "text": "nothing here 😂", "entities": []}
    unlabeled = {"id": "u1", "text": "just a post", "images": ["/abs/pic.png"]}
    examples, _ = read_jsonl(write_lines(tmp_path / "in.jsonl", LABEL, other, unlabeled))
    write_jsonl(examples, tmp_path / "out.jsonl", form=form)
    again, _ = read_jsonl(tmp_path / "out.jsonl")
    assert again == examples
    written = json.loads((tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert written["images"][0] == "images/a.png"  # still relative to the file's folder
    if form == "spans":
        assert sorted(written["entities"], key=lambda e: e["start"]) == sorted(
            LABEL["entities"], key=lambda e: e["start"]
        )


def test_token_tag_form_in_any_scheme(tmp_path: Path) -> None:
    record = {"id": "t", "tokens": ["Visit", "New", "York", "now"], "tags": ["O", "B-LOC", "E-LOC", "O"]}
    with_text = {
        "id": "u",
        "text": "Visit  New York!",
        "tokens": ["Visit", "New", "York", "!"],
        "tags": ["O", "B-OTHER", "I-OTHER", "O"],
    }
    first, second = read_jsonl(write_lines(tmp_path / "t.jsonl", record, with_text))[0]
    assert first.text == "Visit New York now" and span_texts(first) == [("New York", "LOC")]
    assert span_texts(second) == [("New York", "MISC")]


def test_span_inside_a_word_is_widened_and_reported_or_rejected(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "w.jsonl",
        {"id": "w", "text": "go #Obama2024 now", "entities": [{"start": 4, "end": 9, "type": "PER"}]},
    )
    [example], report = read_jsonl(path)
    assert span_texts(example) == [("#Obama2024", "PER")]
    assert len(report.widened_spans) == 1 and "w.jsonl:1" in report.widened_spans[0]
    with pytest.raises(ValueError, match=r"w.jsonl:1: .*does not align"):
        read_jsonl(path, strict=True)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {
                "id": "a",
                "text": "AT&T",
                "entities": [{"start": 0, "end": 2, "type": "ORG"}, {"start": 3, "end": 4, "type": "ORG"}],
            },
            "overlap",
        ),
        ({"id": "b", "text": "hi", "entities": [{"start": 0, "end": 2, "type": "PERSON"}]}, "unknown entity type"),
        ({"id": "c", "text": "hi", "entities": [{"start": 0, "end": 9, "type": "PER"}]}, "past the end"),
        ({"id": "d", "tokens": ["a"], "tags": ["O", "O"]}, "1 tokens but 2 tags"),
        ({"text": "no id"}, "id"),
    ],
)
def test_bad_labels_fail_with_file_line_and_reason(tmp_path: Path, record: dict, message: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl", {"id": "ok", "text": "fine", "entities": []}, record)
    with pytest.raises(ValueError, match=rf"bad.jsonl:2: (?s:.*){message}"):
        load_examples(path)


def test_not_json_is_reported_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"id": "x", "text": "y"}\n{not json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape("broken.jsonl:2")):
        load_examples(path)


def test_examples_always_hold_valid_canonical_bio(tmp_path: Path) -> None:
    record = {"id": "r", "tokens": ["a", "b", "c"], "tags": ["I-OTHER", "O", "I-PER"]}
    [example], _ = read_jsonl(write_lines(tmp_path / "r.jsonl", record))
    assert example.tags == ["B-MISC", "O", "B-PER"]
