"""Ask Triton's entry model ``postlens`` about posts (CONTRACTS §D).

One gRPC request per post, all in flight at once: Triton's dynamic batcher, not the client, forms the batches, so
posts from every worker share a model execution. A post the model refuses (empty text, text over the limit, bad
image tensor) comes back as a :class:`PostPrediction` with ``error`` set; a server that cannot answer raises
:class:`InferenceUnavailable` after the retries, so the caller keeps the posts and tries again later.

Torch-free on purpose: the stream worker imports it.
"""

from __future__ import annotations

import asyncio
import random
import time

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator
from tritonclient.grpc import InferInput
from tritonclient.grpc import aio as grpc_aio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from postlens.runtime.images import empty_images
from postlens.schemas import MAX_MODEL_IMAGES, ModelRef, PostPrediction
from postlens.settings import Settings

# Status codes that mean "this input is at fault": answered per post, never retried.
_PER_POST_CODES = frozenset({"StatusCode.INVALID_ARGUMENT"})
# Status codes that mean "the server is (re)starting or the model is between versions": worth waiting for.
_TRANSIENT_CODES = frozenset({"StatusCode.UNAVAILABLE", "StatusCode.NOT_FOUND"})
_BACKOFF_FIRST_S = 0.1
_BACKOFF_MAX_S = 5.0


class InferenceUnavailable(RuntimeError):
    """Triton could not answer (down, timed out, or failed internally) — the posts should be retried later."""


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


class TritonInferer:
    """An async client of the entry model; one per worker process."""

    def __init__(self, client: grpc_aio.InferenceServerClient, settings: Settings, image_size: int, version: str):
        self._client = client
        self._model = settings.triton_model
        self._timeout_s = settings.triton_timeout_s
        self._retries = settings.triton_retries
        self.image_size = image_size
        self._version = version  # the newest version at connect; named on errors the model never answered

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

    async def infer(self, batch: list[InferRequest]) -> list[PostPrediction]:
        """Predictions in the order of ``batch``; refused posts carry ``error``. Raises
        :class:`InferenceUnavailable` (and stops the batch's other requests) when Triton cannot answer."""
        requests = [asyncio.ensure_future(self._infer_one(request)) for request in batch]
        try:
            return list(await asyncio.gather(*requests))
        except BaseException:
            for request in requests:
                request.cancel()
            await asyncio.gather(*requests, return_exceptions=True)
            raise

    async def close(self) -> None:
        await self._client.close()

    async def _infer_one(self, request: InferRequest) -> PostPrediction:
        try:
            inputs = self._inputs(request)
        except UnicodeEncodeError as error:  # lone surrogates, e.g. from a "\ud800" JSON escape
            return self._refused(f"text is not valid Unicode: {error}")
        delay = _BACKOFF_FIRST_S
        attempt = 1
        while True:
            try:
                result = await self._client.infer(self._model, inputs, client_timeout=self._timeout_s)
            except InferenceServerException as error:
                status = error.status()
                if status in _PER_POST_CODES:
                    return self._refused(error.message())
                if status not in _TRANSIENT_CODES or attempt > self._retries:
                    raise InferenceUnavailable(
                        f"Triton model {self._model!r} failed after {attempt} attempt(s): {status} {error.message()}"
                    ) from error
                # Full jitter, so workers that lost the server together do not come back in lockstep.
                await asyncio.sleep(random.uniform(0, delay))
                delay = min(delay * 2, _BACKOFF_MAX_S)
                attempt += 1
            else:
                return PostPrediction.model_validate_json(result.as_numpy("RESULT")[0][0])

    def _refused(self, reason: str) -> PostPrediction:
        return PostPrediction(model=ModelRef(name=self._model, version=self._version), error=reason)

    def _inputs(self, request: InferRequest) -> list[InferInput]:
        count = request.images.shape[0]
        if count:
            # Padded with slots of the images' own shape: a wrong size is the model's to refuse, per post.
            padding = np.zeros((MAX_MODEL_IMAGES - count, *request.images.shape[1:]), dtype=np.uint8)
            images = np.concatenate([request.images, padding])
        else:
            images = empty_images(MAX_MODEL_IMAGES, self.image_size)
        mask = np.arange(MAX_MODEL_IMAGES) < count
        tensors = {
            "TEXT": np.array([[request.text.encode("utf-8")]], dtype=np.object_),
            "IMAGES": images[np.newaxis],
            "IMAGE_MASK": mask[np.newaxis],
        }
        inputs = []
        for name, array in tensors.items():
            tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs
