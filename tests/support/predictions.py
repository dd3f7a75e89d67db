"""An exported version's predictions on labeled posts, in process or from a Triton serving it (how much two sets of
predictions agree: trainer.evaluate.entity_agreement)."""

from __future__ import annotations

from postlens.runtime.exported import ExportedModel
from postlens.runtime.images import load_images, stack_images
from postlens.schemas import Post, PostPrediction
from postlens.settings import Settings
from stream.stages.infer import InferOutcome, InferRequest, TritonInferer

AGREEMENT = 0.99  # of the entities either precision finds, both must find this share (the gate)


def predict(model: ExportedModel, posts: list[Post], batch: int = 32) -> list[PostPrediction]:
    predictions = []
    for first in range(0, len(posts), batch):
        chunk = posts[first : first + batch]
        images, mask = stack_images(
            [load_images(post.model_images, model.image_size, 4) for post in chunk], model.image_size
        )
        predictions += model.predict([post.text for post in chunk], images, mask)
    return predictions


async def served(settings: Settings, posts: list[Post]) -> list[InferOutcome]:
    """What the Triton of ``settings`` answers for ``posts``, through the stream's client."""
    inferer = await TritonInferer.connect(settings)
    try:
        return await inferer.infer(
            [InferRequest(text=p.text, images=load_images(p.model_images, inferer.image_size, 4)) for p in posts]
        )
    finally:
        await inferer.close()
