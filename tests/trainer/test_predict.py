"""Prediction with a trained checkpoint: the CLI's JSON lines, refusals per post, and results that do not depend on
how posts are batched or whether images come as files or as PIL images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from postlens.schemas import Post, PostPrediction
from trainer.data.jsonl import read_jsonl
from trainer.predict import Predictor, main


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint: Path) -> Predictor:
    return Predictor.load(tiny_checkpoint)


@pytest.fixture(scope="module")
def posts(model_data: Path) -> list[Post]:
    examples, _ = read_jsonl(model_data / "test.jsonl")
    return [Post(id=e.id, text=e.text, images=e.images) for e in examples]


def test_cli_prints_one_prediction_per_post(
    tiny_checkpoint: Path, model_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = [json.loads(line) for line in (model_data / "test.jsonl").read_text().splitlines()[:6]]
    for record in records:  # the file moves away from images/, so its relative paths become absolute
        record["images"] = [str(model_data / image) for image in record["images"]]
    posts_file = tmp_path / "posts.jsonl"
    posts_file.write_text("".join(json.dumps(r) + "\n" for r in [*records, {"id": "blank", "text": "  "}]))
    main(["--model", str(tiny_checkpoint), "--posts", str(posts_file)])  # in-process: the same argv as the command
    predictions = [PostPrediction.model_validate_json(line) for line in capsys.readouterr().out.splitlines()]
    assert [p.id for p in predictions] == [r["id"] for r in records] + ["blank"]
    version = yaml.safe_load((tiny_checkpoint / "config.yaml").read_text())["version"]
    assert all(p.model.name == "postlens" and p.model.version == version for p in predictions)
    assert predictions[-1].error == "empty text" and not predictions[-1].entities
    for record, prediction in zip(records, predictions[:-1], strict=True):  # the last: the blank post, above
        text = record["text"]
        assert prediction.error is None
        for entity in prediction.entities:
            assert text[entity.start : entity.end] == entity.text
            assert 0 <= entity.confidence <= 1


def test_bad_posts_are_refused_one_by_one(predictor: Predictor, posts: list[Post], tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    batch = [
        posts[0],
        Post(id="long", text="word " * 2000),
        Post(id="unreadable", text="Jordan is trending right now", images=[str(broken)]),
        Post(id="missing", text="Jordan is trending right now", images=[str(tmp_path / "nowhere.png")]),
        posts[1],
    ]
    predictions = predictor.predict(batch)
    assert "over the limit" in predictions[1].error
    assert "cannot read image" in predictions[2].error and "cannot read image" in predictions[3].error
    assert predictions[0].error is None and predictions[4].error is None
    assert_same_prediction(predictions[0], predictor.predict([posts[0]])[0])


def assert_same_prediction(one: PostPrediction, other: PostPrediction) -> None:
    """The same entities and regions; scores equal up to float rounding, which depends on the batch's padded shape."""
    assert [(e.start, e.end, e.type) for e in one.entities] == [(e.start, e.end, e.type) for e in other.entities]
    for a, b in zip(one.entities, other.entities, strict=True):
        assert a.confidence == pytest.approx(b.confidence, abs=1e-4)
        assert [r.image_index for r in a.regions] == [r.image_index for r in b.regions]
    assert one.image_relevance == pytest.approx(other.image_relevance, abs=1e-4)


def test_batching_and_image_source_do_not_change_predictions(predictor: Predictor, posts: list[Post]) -> None:
    together = predictor.predict(posts[:12])
    alone = [predictor.predict([post])[0] for post in posts[:12]]
    loaded = []
    for post in posts[:12]:
        images = [Image.open(path) for path in post.images]
        loaded.append(predictor.predict([post], images=[images])[0])
    for joint, single, from_pil in zip(together, alone, loaded, strict=True):
        assert_same_prediction(joint, single)
        assert_same_prediction(joint, from_pil)
    assert predictor.predict(posts[:12]) == together  # and twice is the same


def test_embeddings_have_one_row_per_post(predictor: Predictor, posts: list[Post]) -> None:
    with_images = [post for post in posts if post.images][:5]
    text, image = predictor.embed(with_images)
    assert text.shape == image.shape == (len(with_images), text.shape[1])
    assert (abs(image).sum(axis=1) > 0).all()
