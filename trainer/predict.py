"""In-process prediction with a checkpoint: ``python -m trainer.predict --model DIR --posts FILE.jsonl``.

Prints one JSON line per post — the :class:`postlens.schemas.PostPrediction` the Triton entry model returns (with
the post's id filled in). A post the model cannot take (empty or over-long text, unreadable image) gets an
``error`` and no entities, like a per-request error from Triton; the other posts are unaffected.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from postlens.runtime.decode import Decoder
from postlens.runtime.exported import CARD_FILE, ExportedModel, read_model_config
from postlens.runtime.images import empty_images, load_images, stack_images, to_model_pixels
from postlens.runtime.preprocess import Preprocessor
from postlens.runtime.words import Word
from postlens.schemas import ModelRef, Post, PostPrediction, text_refusal
from postlens.settings import get_settings
from trainer.data.jsonl import resolve_image
from trainer.model.checkpoint import load_checkpoint
from trainer.model.network import ALIGNMENT_DIM, NerNetwork
from trainer.model.tokenizer import subword_tokenizer


@dataclass
class RawBatch:
    """A batch's network outputs as NumPy arrays, decodable by any :class:`Decoder` (calibration re-decodes)."""

    texts: list[str]
    words: list[list[Word]]
    emissions: np.ndarray
    word_mask: np.ndarray
    word_region_attention: np.ndarray
    image_mask: np.ndarray
    image_relevance: np.ndarray
    region_boxes: np.ndarray

    def decode(self, decoder: Decoder) -> list[PostPrediction]:
        offsets = [[(word.start, word.end) for word in post_words] for post_words in self.words]
        return decoder.decode(
            self.texts,
            offsets,
            self.emissions,
            self.word_mask,
            self.word_region_attention,
            self.image_mask,
            self.image_relevance,
            self.region_boxes,
        )


class Predictor:
    def __init__(self, network: NerNetwork, preprocessor: Preprocessor, decoder: Decoder) -> None:
        self.network = network
        self.preprocessor = preprocessor
        self.decoder = decoder
        self.max_images = network.config.max_images

    @classmethod
    def load(cls, model_dir: Path) -> Predictor:
        network, tokenizer, config, version = load_checkpoint(Path(model_dir))
        model = ModelRef(name=get_settings().triton_model, version=version)
        decoder = Decoder.from_config(config, network.crf.numpy_params(), model)
        return cls(network, Preprocessor.from_config(config, subword_tokenizer(tokenizer)), decoder)

    @contextmanager
    def _inference(self) -> Iterator[None]:
        """Eval mode without gradients, restoring the network's mode after (training validates mid-epoch)."""
        training = self.network.training
        self.network.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.network.train(training)

    def raw(self, inputs: dict[str, torch.Tensor], texts: Sequence[str], words: list[list[Word]]) -> RawBatch:
        """Run the network on encoded inputs."""
        with self._inference():
            emissions, attention, relevance, boxes = self.network(**inputs)
        return RawBatch(
            texts=list(texts),
            words=words,
            emissions=emissions.numpy(),
            word_mask=inputs["word_mask"].numpy(),
            word_region_attention=attention.numpy(),
            image_mask=inputs["image_mask"].numpy(),
            image_relevance=relevance.numpy(),
            region_boxes=boxes.numpy(),
        )

    def predict(
        self, posts: Sequence[Post], images: Sequence[Sequence[Image.Image]] | None = None
    ) -> list[PostPrediction]:
        """Predictions in the order of ``posts``. Without ``images``, each post's ``images`` are read as local files."""

        def run(texts: list[str], batch: np.ndarray, mask: np.ndarray) -> list[PostPrediction]:
            inputs, words = self.preprocessor.encode(texts, batch, mask)
            return self.raw({k: torch.from_numpy(v) for k, v in inputs.items()}, texts, words).decode(self.decoder)

        return predict_posts(posts, images, self.preprocessor.image_size, self.max_images, self.decoder.model, run)

    def embed(
        self, posts: Sequence[Post], images: Sequence[Sequence[Image.Image]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Alignment embeddings (text [n, d], image [n, d]) of the accepted posts, in order; image rows are zero
        when the strategy ignores images."""
        accepted, pixels, _ = accept_posts(
            posts, images, self.preprocessor.image_size, self.max_images, self.decoder.model
        )
        if not accepted:
            return np.zeros((0, ALIGNMENT_DIM), np.float32), np.zeros((0, ALIGNMENT_DIM), np.float32)
        batch, mask = stack_images([pixels[i] for i in accepted], self.preprocessor.image_size)
        inputs, _ = self.preprocessor.encode([posts[i].text for i in accepted], batch, mask)
        with self._inference():
            output = self.network.encode(**{k: torch.from_numpy(v) for k, v in inputs.items()})
        text = output.text_embedding.numpy()
        image = output.image_embedding.numpy() if output.image_embedding is not None else np.zeros_like(text)
        return text, image


class ExportedPredictor:
    """An exported version folder as Triton serves it (ONNX Runtime at its precision, length batching), torch-free:
    ``trainer.evaluate --model VERSION_DIR`` scores what is served, int8 included."""

    def __init__(self, model: ExportedModel, max_images: int) -> None:
        self.model = model
        self.max_images = max_images

    @classmethod
    def load(cls, version_dir: Path, precision: str | None = None) -> ExportedPredictor:
        """``precision`` None: the one the version was exported to serve (its model card)."""
        card = json.loads((version_dir / CARD_FILE).read_text())
        ref = ModelRef(name=card["name"], version=card["version"])
        model = ExportedModel.load(version_dir, ref, precision=precision or card.get("precision", "fp32"))
        return cls(model, read_model_config(version_dir).max_images)

    def predict(
        self, posts: Sequence[Post], images: Sequence[Sequence[Image.Image]] | None = None
    ) -> list[PostPrediction]:
        return predict_posts(
            posts, images, self.model.image_size, self.max_images, self.model.decoder.model, self.model.predict
        )


def predict_posts(
    posts: Sequence[Post],
    images: Sequence[Sequence[Image.Image]] | None,
    size: int,
    max_images: int,
    model: ModelRef,
    run: Callable[[list[str], np.ndarray, np.ndarray], list[PostPrediction]],
) -> list[PostPrediction]:
    """Predictions in the order of ``posts``: a refusal for each post :func:`accept_posts` refuses, ``run`` (texts,
    stacked images, their mask) on the rest as one batch; every prediction carries its post's id."""
    accepted, pixels, predictions = accept_posts(posts, images, size, max_images, model)
    if accepted:
        batch, mask = stack_images([pixels[i] for i in accepted], size)
        decoded = run([posts[i].text for i in accepted], batch, mask)
        for index, prediction in zip(accepted, decoded, strict=True):
            predictions[index] = prediction
    for post, prediction in zip(posts, predictions, strict=True):
        prediction.id = post.id
    return predictions


def accept_posts(
    posts: Sequence[Post],
    images: Sequence[Sequence[Image.Image]] | None,
    size: int,
    max_images: int,
    model: ModelRef,
) -> tuple[list[int], dict[int, np.ndarray], list[PostPrediction]]:
    """Which posts the model takes, their uint8 images, and a prediction slot per post (refusals filled in)."""
    if images is not None and len(images) != len(posts):
        raise ValueError(f"{len(posts)} posts but {len(images)} image lists")
    limit = get_settings().max_text_chars
    accepted: list[int] = []
    pixels: dict[int, np.ndarray] = {}
    predictions = [PostPrediction(model=model) for _ in posts]
    for index, post in enumerate(posts):
        refusal = text_refusal(post.text, limit)
        if refusal is not None:
            error = refusal[1]
        else:
            try:
                if images is None:
                    pixels[index] = load_images(post.model_images, size, max_images)
                else:
                    chosen = [to_model_pixels(image, size) for image in list(images[index])[:max_images]]
                    pixels[index] = np.stack(chosen) if chosen else empty_images(0, size)
                error = None
            except OSError as failure:
                error = f"cannot read image: {failure}"
        if error is None:
            accepted.append(index)
        else:
            predictions[index] = PostPrediction(model=model, error=error)
    return accepted, pixels, predictions


def read_posts(path: Path) -> list[Post]:
    """Posts from JSONL; relative image paths are taken relative to the file's folder."""
    posts = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            post = Post.model_validate_json(line)
        except ValueError as error:
            raise SystemExit(f"{path}:{line_number}: not a post: {error}") from None
        post.images = [resolve_image(image, path.parent) for image in post.images]
        posts.append(post)
    return posts


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainer.predict", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="checkpoint dir written by trainer.train")
    parser.add_argument("--posts", type=Path, required=True, help="JSONL posts (images as local paths)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))

    predictor = Predictor.load(args.model)
    posts = read_posts(args.posts)
    for first in range(0, len(posts), args.batch_size):
        for prediction in predictor.predict(posts[first : first + args.batch_size]):
            sys.stdout.write(json.dumps(prediction.model_dump(mode="json"), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
