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
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions, service_pb2, service_pb2_grpc

from postlens.failures import InferFailure
from postlens.io.fetch import FetchedImage
from postlens.runtime.images import empty_images
from postlens.schemas import MAX_MODEL_IMAGES, ModelRef, Post, PostPrediction, Region
from postlens.settings import Settings

# Status codes that mean "this input is at fault": answered per post, never retried.
_PER_POST_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT})
# Status codes that mean "the server is (re)starting or the model is between versions": worth waiting for.
_TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND})
# A timed-out request: the post (asked again alone) or the server (when it answers nothing else either).
_TIMEOUT_CODE = grpc.StatusCode.DEADLINE_EXCEEDED
_AVAILABILITY_CODES = _TRANSIENT_CODES | {grpc.StatusCode.CANCELLED}
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


def _channel(url: str) -> grpc.aio.Channel:
    """A channel with tritonclient's own options (messages of any size, its keepalive defaults)."""
    keepalive = KeepAliveOptions()
    return grpc.aio.insecure_channel(
        url,
        options=[
            ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ],
    )


def _status(error: grpc.aio.AioRpcError) -> str:
    return f"{error.code()} {error.details()}"


class TritonInferer:
    """An async client of the entry model; one per worker process.

    It speaks Triton's gRPC protocol through the generated stub (``tritonclient.grpc.service_pb2``) and serializes
    each request itself: tritonclient's ``InferInput`` and ``InferResult`` go through NumPy for every tensor, which
    cost a worker more CPU than the rest of the request (reports/bench.md, "Worker profile").
    """

    def __init__(self, channel: grpc.aio.Channel, settings: Settings, image_size: int, version: str):
        self._channel = channel
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        # Requests go out as bytes serialized here (:meth:`_request`), answers come back parsed by protobuf.
        self._model_infer = channel.unary_unary(
            _MODEL_INFER, request_serializer=None, response_deserializer=service_pb2.ModelInferResponse.FromString
        )
        self._model = settings.triton_model
        self._timeout_s = settings.triton_timeout_s
        self._retries = settings.triton_retries
        self.image_size = image_size
        self._version = version  # the newest version at connect; named on errors the model never answered
        # A text-only post's request is always the same but for its text: the rest is serialized once.
        self._no_images = self._image_parts(empty_images(MAX_MODEL_IMAGES, image_size), 0)

    @classmethod
    async def connect(cls, settings: Settings) -> TritonInferer:
        """Wait (up to ``triton_timeout_s``) until the model is ready, then read the image size it expects."""
        channel = _channel(settings.triton_url)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        deadline = time.monotonic() + settings.triton_timeout_s
        delay = _BACKOFF_FIRST_S
        last_problem = "not ready"
        while True:
            try:
                ready = await stub.ModelReady(
                    service_pb2.ModelReadyRequest(name=settings.triton_model), timeout=settings.triton_timeout_s
                )
                if ready.ready:
                    break
            except grpc.aio.AioRpcError as error:
                last_problem = _status(error)
            if time.monotonic() + delay > deadline:
                await channel.close()
                raise InferenceUnavailable(
                    f"Triton model {settings.triton_model!r} at {settings.triton_url} is not ready after "
                    f"{settings.triton_timeout_s:g}s: {last_problem}"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX_S)
        metadata = await stub.ModelMetadata(
            service_pb2.ModelMetadataRequest(name=settings.triton_model), timeout=settings.triton_timeout_s
        )
        images_shape = next(tensor.shape for tensor in metadata.inputs if tensor.name == "IMAGES")
        image_size = int(images_shape[-2])  # [batch, 4, S, S, 3]
        version = max(metadata.versions, key=int)
        return cls(channel, settings, image_size, version)

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
        """Every post's request in flight at once. grpc.aio runs each call as a task of its own, so the first
        answers are awaited in order with no task of ours; the posts Triton could not take then (it is between
        states) are asked again together, each waiting it out in :meth:`_infer_one`."""
        calls = [
            serialized
            if isinstance(serialized, PostPrediction)
            else self._model_infer(serialized, timeout=self._timeout_s)
            for serialized in map(self._serialized, batch)
        ]
        try:
            results = [await self._first_outcome(call) for call in calls]
        except BaseException:
            for call in calls:
                if not isinstance(call, PostPrediction):
                    call.cancel()
            raise
        retried = [
            asyncio.ensure_future(self._infer_one(request, failed_attempts=1))
            for request, outcome in zip(batch, results, strict=True)
            if outcome is None
        ]
        try:
            answers = iter(await asyncio.gather(*retried))
        except BaseException:
            for request in retried:
                request.cancel()
            await asyncio.gather(*retried, return_exceptions=True)
            raise
        return [next(answers) if outcome is None else outcome for outcome in results]

    async def _first_outcome(self, call: grpc.aio.UnaryUnaryCall | PostPrediction) -> InferOutcome | None:
        """The outcome of a post's first call; None when it is worth asking again."""
        if isinstance(call, PostPrediction):
            return call
        try:
            return _answer(await call)
        except grpc.aio.AioRpcError as error:
            return self._judged(error, 1, self._timeout_s)

    async def _ensure_answers(self, fault: InferOutcome) -> None:
        """Raise :class:`InferenceUnavailable` unless the model is ready and answers a plain post (a circuit
        breaker: a version that fails every request, or a server too slow for any, is an outage, not the posts')."""
        try:
            ready = await self._stub.ModelReady(
                service_pb2.ModelReadyRequest(name=self._model), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as error:
            raise InferenceUnavailable(f"Triton model {self._model!r}: {_status(error)}") from error
        if not ready.ready:
            raise InferenceUnavailable(f"Triton model {self._model!r} is not ready")
        plain = InferRequest(text=_CANARY_TEXT, images=empty_images(0, self.image_size))
        # Patient: it may queue behind an execution the timed-out posts still hold.
        canary = await self._infer_one(plain, timeout_s=self._timeout_s * _CANARY_PATIENCE)
        if isinstance(canary, ModelFault):
            raise InferenceUnavailable(
                f"Triton model {self._model!r} answers no post ({canary.message}); posts failed with: {fault}"
            )

    async def close(self) -> None:
        await self._channel.close()

    async def _infer_one(
        self, request: InferRequest, timeout_s: float | None = None, failed_attempts: int = 0
    ) -> InferOutcome:
        """Ask about one post, again while Triton is between states (``failed_attempts`` already made)."""
        timeout_s = timeout_s or self._timeout_s
        serialized = self._serialized(request)
        if isinstance(serialized, PostPrediction):
            return serialized
        attempt = failed_attempts
        while True:
            if attempt:
                # Full jitter, so workers that lost the server together do not come back in lockstep.
                await asyncio.sleep(random.uniform(0, min(_BACKOFF_FIRST_S * 2 ** (attempt - 1), _BACKOFF_MAX_S)))
            attempt += 1
            try:
                return _answer(await self._model_infer(serialized, timeout=timeout_s))
            except grpc.aio.AioRpcError as error:
                if (outcome := self._judged(error, attempt, timeout_s)) is not None:
                    return outcome

    def _judged(self, error: grpc.aio.AioRpcError, attempt: int, timeout_s: float) -> InferOutcome | None:
        """What a failed call means for its post: its outcome, or None to ask again (Triton is between states);
        raises :class:`InferenceUnavailable` when it cannot answer (out of attempts, or its channel closed)."""
        status = error.code()
        if status in _PER_POST_CODES:
            return self._refused(error.details() or str(status))
        if status == _TIMEOUT_CODE:
            return ModelFault(InferFailure.TIMEOUT, f"no answer in {timeout_s:g} s: {error.details()}")
        if status not in _AVAILABILITY_CODES:
            return ModelFault(InferFailure.MODEL_ERROR, _status(error))
        if status not in _TRANSIENT_CODES or attempt > self._retries:
            raise InferenceUnavailable(
                f"Triton model {self._model!r} failed after {attempt} attempt(s): {_status(error)}"
            ) from error
        return None

    def _serialized(self, request: InferRequest) -> bytes | PostPrediction:
        """The request's bytes, or the post's refusal when its text cannot be sent."""
        try:
            return self._request(request)
        except UnicodeEncodeError as error:  # lone surrogates, e.g. from a "\ud800" JSON escape
            return self._refused(f"text is not valid Unicode: {error}")

    def _refused(self, reason: str) -> PostPrediction:
        return PostPrediction(model=ModelRef(name=self._model, version=self._version), error=reason)

    def _request(self, request: InferRequest) -> bytes:
        """The serialized ``ModelInferRequest``. A serialized message is its fields' encodings one after another, a
        repeated field's elements possibly in several runs: the tensors' descriptions, the text, then the images (all
        but the text serialized once per connection for text-only posts)."""
        text = request.text.encode("utf-8")
        count = request.images.shape[0]
        if count:
            # Padded with slots of the images' own shape: a wrong size is the model's to refuse, per post.
            padding = np.zeros((MAX_MODEL_IMAGES - count, *request.images.shape[1:]), dtype=np.uint8)
            head, images = self._image_parts(np.concatenate([request.images, padding]), count)
        else:
            head, images = self._no_images
        raw_text = service_pb2.ModelInferRequest(raw_input_contents=[_BYTES_LENGTH.pack(len(text)) + text])
        return head + raw_text.SerializeToString() + images

    def _image_parts(self, slots: np.ndarray, count: int) -> tuple[bytes, bytes]:
        """The serialized request's parts around the text for one post's image slots (its ``count`` images first):
        the model's name and the tensors' descriptions; the raw IMAGES ([1, 4, S, S, 3]) and IMAGE_MASK ([1, 4])."""
        tensor = service_pb2.ModelInferRequest.InferInputTensor
        head = service_pb2.ModelInferRequest(
            model_name=self._model,
            inputs=[
                tensor(name="TEXT", datatype="BYTES", shape=[1, 1]),
                tensor(name="IMAGES", datatype="UINT8", shape=[1, *slots.shape]),
                tensor(name="IMAGE_MASK", datatype="BOOL", shape=[1, MAX_MODEL_IMAGES]),
            ],
        )
        mask = np.arange(MAX_MODEL_IMAGES) < count
        images = service_pb2.ModelInferRequest(raw_input_contents=[slots.tobytes(), mask.tobytes()])
        return head.SerializeToString(), images.SerializeToString()


# A BYTES tensor's raw contents: each element as its length (4 bytes, little-endian), then its bytes. Written here
# for the one element a request and an answer hold: tritonclient.utils' serialize_byte_tensor and
# deserialize_bytes_tensor do the same through NumPy object arrays, the per-post cost this client removes.
_BYTES_LENGTH = struct.Struct("<I")
_MODEL_INFER = f"/{service_pb2.DESCRIPTOR.services_by_name['GRPCInferenceService'].full_name}/ModelInfer"


def _answer(answer: service_pb2.ModelInferResponse) -> InferOutcome:
    """The prediction in the RESULT tensor (one BYTES element: a PostPrediction's JSON)."""
    try:
        [raw] = [
            content
            for output, content in zip(answer.outputs, answer.raw_output_contents, strict=True)
            if output.name == "RESULT"
        ]
        (length,) = _BYTES_LENGTH.unpack_from(raw)
        return PostPrediction.model_validate_json(raw[_BYTES_LENGTH.size : _BYTES_LENGTH.size + length])
    except (ValueError, struct.error) as error:  # pydantic's ValidationError is a ValueError
        return ModelFault(InferFailure.BAD_ANSWER, f"the model's answer is not a prediction: {error}")


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
