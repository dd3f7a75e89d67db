"""The worker's glue between stages: what the model is given, and how its regions map back to the post."""

from __future__ import annotations

import numpy as np

from postlens.io.fetch import FetchedImage, FetchOutcome
from postlens.schemas import ModelRef, Post, PostPrediction, PredictedEntity, Region
from stream.stages.infer import grounded_in_post, model_input

SIZE = 8


def image(url: str, status: str, value: int = 0) -> FetchedImage:
    pixels = np.full((SIZE, SIZE, 3), value, dtype=np.uint8) if status == "ok" else None
    return FetchedImage(FetchOutcome(url=url, status=status), pixels)


def test_model_gets_only_the_images_that_loaded() -> None:
    post = Post(id="p", text="hi", images=["u0", "u1", "u2"])
    request, fed = model_input(post, [image("u0", "timeout"), image("u1", "ok", 1), image("u2", "ok", 2)], SIZE)
    assert fed == [1, 2]
    assert request.images.shape == (2, SIZE, SIZE, 3) and request.images[1, 0, 0, 0] == 2


def test_post_without_usable_images_goes_text_only() -> None:
    request, fed = model_input(Post(id="p", text="hi", images=["u0"]), [image("u0", "not_image")], SIZE)
    assert fed == [] and request.images.shape == (0, SIZE, SIZE, 3) and request.text == "hi"


def test_regions_are_renumbered_to_the_posts_images() -> None:
    prediction = PostPrediction(
        entities=[
            PredictedEntity(
                text="Jordan",
                type="PER",
                start=0,
                end=6,
                confidence=0.9,
                regions=[Region(image_index=1, box=(0, 0, 0.5, 0.5), score=0.7)],
            )
        ],
        model=ModelRef(name="postlens", version="1"),
    )
    grounded = grounded_in_post(prediction, fed=[0, 2], urls=["u0", "u1", "u2"])
    (region,) = grounded.entities[0].regions
    assert (region.image_index, region.image_url, region.score) == (2, "u2", 0.7)
