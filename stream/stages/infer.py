"""Ask Triton's entry model ``postlens`` about posts (its tensors: docs/contracts.md).

One gRPC request per post, all in flight at once: Triton's dynamic batcher, not the client, forms the batches, so
posts from every worker share a model execution. A post the model refuses (empty text, text over the limit, bad
image tensor) comes back as a :class:`PostPrediction` with ``error`` set; a server that cannot answer raises
:class:`InferenceUnavailable` after the retries, so the caller keeps the posts and tries again later.

A request failing with any other status (``INTERNAL``…) or timing out may be the fault of one post that shared its
model execution with others, so every such post is asked again alone, one at a time. A post that still fails alone
is blamed only once the model has shown it answers (a circuit breaker: a plain post is asked, patiently; when that
fails too — a version that is ready but fails every request, a server too slow for anything — the batch raises
:class:`InferenceUnavailable` and waits like any outage), and after one last try alone it comes back as a
:class:`ModelFault` (the worker dead-letters it); the others are answered.

Torch-free on purpose: the stream worker imports it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator
from tritonclient.grpc import InferInput, InferResult
from tritonclient.grpc import aio as grpc_aio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from postlens.failures import InferFailure
from postlens.io.fetch import FetchedImage
from postlens.runtime.images import empty_images
from postlens.schemas import MAX_MODEL_IMAGES, ModelRef, Post, PostPrediction, Region
from postlens.settings import Settings

# Status codes that mean "this input is at fault": answered per post, never retried.
_PER_POST_CODES = frozenset({"StatusCode.INVALID_ARGUMENT"})
# Status codes that mean "the server is (re)starting or the model is between versions": worth waiting for.
_TRANSIENT_CODES = frozenset({"StatusCode.UNAVAILABLE", "StatusCode.NOT_FOUND"})
# A timed-out request: the post (asked again alone) or the server (when it answers nothing else either).
_TIMEOUT_CODE = "StatusCode.DEADLINE_EXCEEDED"
_AVAILABILITY_CODES = _TRANSIENT_CODES | {"StatusCode.CANCELLED"}
# Faults that may be another post's (a shared execution) or the server's: asked again alone, then judged.
_ASK_ALONE = frozenset({InferFailure.MODEL_ERROR, InferFailure.TIMEOUT})
_CANARY_TEXT = "PostLens checks that the model answers"
_CANARY_PATIENCE = 3  # × triton_timeout_s
_BACKOFF_FIRST_S = 0.1
_BACKOFF_MAX_S = 5.0


class InferenceUnavailable(RuntimeError):
    """Triton could not answer (down, timed out, or failed internally) — the posts should be retried later."""


@dataclass(frozen=True)
class ModelFault:
    """Triton failed this one post (even alone, with the model ready), or answered it with something unreadable."""

    kind: InferFailure  # MODEL_ERROR (a gRPC status), TIMEOUT or BAD_ANSWER
    message: str


InferOutcome = PostPrediction | ModelFault


class InferRequest(BaseModel):
    """One post as the model sees it: raw text and up to four images already resized to the model's size."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    text: str
    images: np.ndarray  # uint8 [k, S, S, 3], k ≤ 4

    @field_validator("images")
    @classmethod
    def _image_stack(cls, images: np.ndarray) -> np.ndarray:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [k, S, S, 3], got {images.dtype} {list(images.shape)}")
        if images.shape[0] > MAX_MODEL_IMAGES:
            raise ValueError(f"at most {MAX_MODEL_IMAGES} images per post, got {images.shape[0]}")
        return images


class Model(Protocol):
    """What the pipeline needs of a model: :class:`TritonInferer`, or a stand-in in tests."""

    image_size: int  # pixels of each side of the images it takes

    async def infer(self, batch: Sequence[InferRequest]) -> list[InferOutcome]:
        """One outcome per request, in order; raises :class:`InferenceUnavailable` when it cannot answer now."""

    async def close(self) -> None: ...


class TritonInferer:
    """An async client of the entry model; one per worker process."""

    def __init__(self, client: grpc_aio.InferenceServerClient, settings: Settings, image_size: int, version: str):
        self._client = client
        self._model = settings.triton_model
        self._timeout_s = settings.triton_timeout_s
        self._retries = settings.triton_retries
        self.image_size = image_size
        self._version = version  # the newest version at connect; named on errors the model never answered
        # A text-only post's image tensors are always the same: built once, shared by every request (read-only).
        self._no_images = _tensors(
            {
                "IMAGES": empty_images(MAX_MODEL_IMAGES, image_size)[np.newaxis],
                "IMAGE_MASK": np.zeros((1, MAX_MODEL_IMAGES), dtype=np.bool_),
            }
        )

    @classmethod
    async def connect(cls, settings: Settings) -> TritonInferer:
        """Wait (up to ``triton_timeout_s``) until the model is ready, then read the image size it expects."""
        client = grpc_aio.InferenceServerClient(settings.triton_url)
        deadline = time.monotonic() + settings.triton_timeout_s
        delay = _BACKOFF_FIRST_S
        last_problem = "not ready"
        while True:
            try:
                if await client.is_model_ready(settings.triton_model, client_timeout=settings.triton_timeout_s):
                    break
            except InferenceServerException as error:
                last_problem = error.message()
            if time.monotonic() + delay > deadline:
                await client.close()
                raise InferenceUnavailable(
                    f"Triton model {settings.triton_model!r} at {settings.triton_url} is not ready after "
                    f"{settings.triton_timeout_s:g}s: {last_problem}"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX_S)
        metadata = await client.get_model_metadata(settings.triton_model, as_json=True)
        images_shape = next(tensor["shape"] for tensor in metadata["inputs"] if tensor["name"] == "IMAGES")
        image_size = int(images_shape[-2])  # [batch, 4, S, S, 3]
        version = max(metadata["versions"], key=int)
        return cls(client, settings, image_size, version)

    async def infer(self, batch: Sequence[InferRequest]) -> list[InferOutcome]:
        """Results in the order of ``batch``: predictions (refused posts carry ``error``) and :class:`ModelFault`
        for posts Triton fails alone. Raises :class:`InferenceUnavailable` (and stops the batch's other requests)
        when Triton cannot answer."""
        results: list[InferOutcome] = await self._all_at_once(batch)
        for position in _failing(results):
            # Alone, so the dynamic batcher cannot put it in one execution with another post.
            results[position] = await self._infer_one(batch[position])
        if still := _failing(results):
            # The posts are to blame only if the model answers a plain one; then each gets a last try alone (it may
            # have failed only behind another's slow execution), the model free of a timed-out one's before the next.
            await self._ensure_answers(results[still[0]])
            for position in still:
                results[position] = outcome = await self._infer_one(batch[position])
                if position != still[-1] and isinstance(outcome, ModelFault) and outcome.kind == InferFailure.TIMEOUT:
                    await self._ensure_answers(outcome)
        return results

    async def _all_at_once(self, batch: Sequence[InferRequest]) -> list[InferOutcome]:
        requests = [asyncio.ensure_future(self._infer_one(request)) for request in batch]
        try:
            return list(await asyncio.gather(*requests))
        except BaseException:
            for request in requests:
                request.cancel()
            await asyncio.gather(*requests, return_exceptions=True)
            raise

    async def _ensure_answers(self, fault: InferOutcome) -> None:
        """Raise :class:`InferenceUnavailable` unless the model is ready and answers a plain post (a circuit
        breaker: a version that fails every request, or a server too slow for any, is an outage, not the posts')."""
        try:
            ready = await self._client.is_model_ready(self._model, client_timeout=self._timeout_s)
        except InferenceServerException as error:
            raise InferenceUnavailable(f"Triton model {self._model!r}: {error.message()}") from error
        if not ready:
            raise InferenceUnavailable(f"Triton model {self._model!r} is not ready")
        plain = InferRequest(text=_CANARY_TEXT, images=empty_images(0, self.image_size))
        # Patient: it may queue behind an execution the timed-out posts still hold.
        canary = await self._infer_one(plain, timeout_s=self._timeout_s * _CANARY_PATIENCE)
        if isinstance(canary, ModelFault):
            raise InferenceUnavailable(
                f"Triton model {self._model!r} answers no post ({canary.message}); posts failed with: {fault}"
            )

    async def close(self) -> None:
        await self._client.close()

    async def _infer_one(self, request: InferRequest, timeout_s: float | None = None) -> InferOutcome:
        timeout_s = timeout_s or self._timeout_s
        try:
            inputs = self._inputs(request)
        except UnicodeEncodeError as error:  # lone surrogates, e.g. from a "\ud800" JSON escape
            return self._refused(f"text is not valid Unicode: {error}")
        delay = _BACKOFF_FIRST_S
        attempt = 1
        while True:
            try:
                result = await self._client.infer(self._model, inputs, client_timeout=timeout_s)
            except InferenceServerException as error:
                status = error.status()
                if status in _PER_POST_CODES:
                    return self._refused(error.message())
                if status == _TIMEOUT_CODE:
                    return ModelFault(InferFailure.TIMEOUT, f"no answer in {timeout_s:g} s: {error.message()}")
                if status not in _AVAILABILITY_CODES:
                    return ModelFault(InferFailure.MODEL_ERROR, f"{status} {error.message()}")
                if status not in _TRANSIENT_CODES or attempt > self._retries:
                    raise InferenceUnavailable(
                        f"Triton model {self._model!r} failed after {attempt} attempt(s): {status} {error.message()}"
                    ) from error
                # Full jitter, so workers that lost the server together do not come back in lockstep.
                await asyncio.sleep(random.uniform(0, delay))
                delay = min(delay * 2, _BACKOFF_MAX_S)
                attempt += 1
            else:
                return self._answer(result)

    @staticmethod
    def _answer(result: InferResult) -> InferOutcome:
        try:
            return PostPrediction.model_validate_json(result.as_numpy("RESULT")[0][0])
        except (ValueError, TypeError, IndexError) as error:  # pydantic's ValidationError is a ValueError
            return ModelFault(InferFailure.BAD_ANSWER, f"the model's answer is not a prediction: {error}")

    def _refused(self, reason: str) -> PostPrediction:
        return PostPrediction(model=ModelRef(name=self._model, version=self._version), error=reason)

    def _inputs(self, request: InferRequest) -> list[InferInput]:
        [text] = _tensors({"TEXT": np.array([[request.text.encode("utf-8")]], dtype=np.object_)})
        count = request.images.shape[0]
        if not count:
            return [text, *self._no_images]
        # Padded with slots of the images' own shape: a wrong size is the model's to refuse, per post.
        padding = np.zeros((MAX_MODEL_IMAGES - count, *request.images.shape[1:]), dtype=np.uint8)
        images = np.concatenate([request.images, padding])
        mask = np.arange(MAX_MODEL_IMAGES) < count
        return [text, *_tensors({"IMAGES": images[np.newaxis], "IMAGE_MASK": mask[np.newaxis]})]


def _tensors(arrays: dict[str, np.ndarray]) -> list[InferInput]:
    inputs = []
    for name, array in arrays.items():
        tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _failing(results: list[InferOutcome]) -> list[int]:
    """Positions of the posts to ask again alone."""
    return [position for position, r in enumerate(results) if isinstance(r, ModelFault) and r.kind in _ASK_ALONE]


def model_input(post: Post, images: list[FetchedImage], image_size: int) -> tuple[InferRequest, list[int]]:
    """The model's request for ``post`` and, per image slot, the index of that image in the post."""
    fed = [(index, image.pixels) for index, image in enumerate(images) if image.pixels is not None]
    pixels = np.stack([fed_pixels for _, fed_pixels in fed]) if fed else empty_images(0, image_size)
    return InferRequest(text=post.text, images=pixels), [index for index, _ in fed]


def grounded_in_post(prediction: PostPrediction, fed: Sequence[int], urls: Sequence[str]) -> PostPrediction:
    """Re-number regions from the model's image slots (only images that loaded) to the post's own image list."""
    if not any(entity.regions for entity in prediction.entities):
        return prediction  # nothing to re-number (every text-only post)
    entities = [
        entity.model_copy(
            update={
                "regions": [
                    Region(
                        image_index=fed[region.image_index],
                        box=region.box,
                        score=region.score,
                        image_url=urls[fed[region.image_index]],
                    )
                    for region in entity.regions
                ]
            }
        )
        for entity in prediction.entities
    ]
    return prediction.model_copy(update={"entities": entities})
