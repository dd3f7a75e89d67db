"""The async Triton client against a real Triton serving the exported tiny model: typed results in order, refused
posts answered in place, retries while the server is unreachable, a clear failure when it stays away."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
import pytest
from pydantic import ValidationError
from tritonclient.grpc import service_pb2

from deploy.process import free_port
from postlens.runtime.exported import read_model_config
from postlens.runtime.images import empty_images, load_images
from postlens.settings import Settings
from stream.stages.infer import InferenceUnavailable, InferRequest, ModelFault, TritonInferer
from tests.support.tcp_proxy import TcpProxy
from trainer.predict import read_posts

if TYPE_CHECKING:
    from tests.fixtures_model import ServedModel


def test_a_request_holds_at_most_four_rgb_images() -> None:
    with pytest.raises(ValidationError, match="at most 4 images"):
        InferRequest(text="five pictures", images=empty_images(5, 8))
    with pytest.raises(ValidationError, match="uint8"):
        InferRequest(text="float pixels", images=np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValidationError, match="uint8"):
        InferRequest(text="grey pixels", images=np.zeros((1, 8, 8), np.uint8))


@pytest.mark.integration
@pytest.mark.slow
async def test_connect_reads_the_image_size_the_model_takes(served_model: ServedModel) -> None:
    inferer = await TritonInferer.connect(served_model.settings())
    try:
        version_dir = served_model.repo / "postlens" / served_model.version
        assert inferer.image_size == read_model_config(version_dir).vision_encoder.image_size
    finally:
        await inferer.close()


@pytest.mark.integration
@pytest.mark.slow
async def test_predictions_come_back_in_order_with_refused_posts_in_place(
    served_model: ServedModel, model_data: Path
) -> None:
    posts = read_posts(model_data / "test.jsonl")[:3]
    inferer = await TritonInferer.connect(served_model.settings())
    size = inferer.image_size
    good = [InferRequest(text=post.text, images=load_images(post.model_images, size, 4)) for post in posts]
    refused = {
        1: (InferRequest(text="", images=empty_images(0, size)), "empty text"),
        3: (InferRequest(text="x" * 10_000, images=empty_images(0, size)), "over the limit"),
        4: (InferRequest(text="tiny picture", images=empty_images(1, size // 2)), "IMAGES"),
        5: (InferRequest(text="lone \ud800 surrogate", images=empty_images(0, size)), "not valid Unicode"),
    }
    batch = list(good)
    for position, (request, _) in sorted(refused.items()):
        batch.insert(position, request)
    try:
        predictions = await inferer.infer(batch)
    finally:
        await inferer.close()

    assert len(predictions) == len(batch)
    for position, (request, prediction) in enumerate(zip(batch, predictions, strict=True)):
        assert prediction.model.name == "postlens"
        if position in refused:
            assert prediction.error and refused[position][1] in prediction.error
            assert not prediction.entities
            continue
        assert prediction.error is None
        for entity in prediction.entities:  # each answer belongs to the post at its position
            assert request.text[entity.start : entity.end] == entity.text


@pytest.mark.integration
@pytest.mark.slow
async def test_requests_are_retried_while_the_server_is_unreachable(served_model: ServedModel) -> None:
    host, port = served_model.url.rsplit(":", 1)
    with TcpProxy(host, int(port)) as proxy:
        inferer = await TritonInferer.connect(
            served_model.settings(triton_url=f"127.0.0.1:{proxy.port}", triton_retries=8)
        )
        try:
            request = InferRequest(text="Lyon is a city", images=empty_images(0, inferer.image_size))
            proxy.close()  # the server "goes away"…
            started = time.monotonic()
            pending = asyncio.create_task(inferer.infer([request]))
            await asyncio.sleep(1.0)
            assert not pending.done(), "infer gave up while retries were left"
            proxy.open()  # …and comes back
            [prediction] = await pending
        finally:
            await inferer.close()
    assert prediction.error is None
    assert time.monotonic() - started >= 1.0


@pytest.mark.integration
@pytest.mark.slow
async def test_a_server_that_stays_away_fails_the_batch_after_the_retries(served_model: ServedModel) -> None:
    host, port = served_model.url.rsplit(":", 1)
    with TcpProxy(host, int(port)) as proxy:
        inferer = await TritonInferer.connect(
            served_model.settings(triton_url=f"127.0.0.1:{proxy.port}", triton_retries=2)
        )
        try:
            proxy.close()
            with pytest.raises(InferenceUnavailable, match="after 3 attempt"):
                await inferer.infer([InferRequest(text="Lyon is a city", images=empty_images(0, inferer.image_size))])
        finally:
            await inferer.close()


async def test_connect_to_no_server_fails_with_the_address() -> None:
    url = f"localhost:{free_port()}"
    started = time.monotonic()
    with pytest.raises(InferenceUnavailable, match=url):
        await TritonInferer.connect(Settings(triton_url=url, triton_timeout_s=1.0))
    assert time.monotonic() - started < 5.0


@pytest.mark.integration
async def test_a_post_that_fails_its_model_execution_is_isolated_and_the_others_answered(
    faulty_model: ServedModel,
) -> None:
    inferer = await TritonInferer.connect(faulty_model.settings())
    try:
        texts = ["Lyon is a city", "POISON pill", "Paris in spring", "GARBLE me", "Rome"]
        batch = [InferRequest(text=text, images=empty_images(0, inferer.image_size)) for text in texts]
        results = await inferer.infer(batch)  # one execution at first: all five fail, then each is asked alone
    finally:
        await inferer.close()
    faults = {texts[i]: result.kind for i, result in enumerate(results) if isinstance(result, ModelFault)}
    assert faults == {"POISON pill": "model_error", "GARBLE me": "bad_answer"}
    assert all(result.error is None for result in results if not isinstance(result, ModelFault))


@pytest.mark.integration
async def test_a_post_that_times_out_alone_is_its_fault_not_an_outage(faulty_model: ServedModel) -> None:
    inferer = await TritonInferer.connect(faulty_model.settings(triton_timeout_s=1.0))
    try:
        texts = ["Lyon is a city", "SLOW post", "Rome"]
        batch = [InferRequest(text=text, images=empty_images(0, inferer.image_size)) for text in texts]
        results = await inferer.infer(batch)  # the slow one holds up the others' shared execution at first
    finally:
        await inferer.close()
    faults = {texts[i]: result.kind for i, result in enumerate(results) if isinstance(result, ModelFault)}
    assert faults == {"SLOW post": "timeout"}


@pytest.mark.integration
async def test_a_model_that_fails_every_request_is_an_outage_not_the_posts_fault(faulty_model: ServedModel) -> None:
    inferer = await TritonInferer.connect(faulty_model.settings())
    plain = InferRequest(text="HEAL Lyon is a city", images=empty_images(0, inferer.image_size))
    try:
        batch = [InferRequest(text=text, images=empty_images(0, inferer.image_size)) for text in ("BREAK", "Lyon")]
        with pytest.raises(InferenceUnavailable, match="answers no post"):
            await inferer.infer(batch)  # no dead letters: the caller keeps the batch and waits
    finally:
        healed = await inferer.infer([plain])  # the model's state is shared by the session's other tests
        await inferer.close()
    assert not isinstance(healed[0], ModelFault)


@pytest.mark.parametrize("images", [0, 1, 4])
async def test_a_request_is_the_post_text_and_images_as_triton_tensors(images: int) -> None:
    size = 8
    inferer = TritonInferer(grpc.aio.insecure_channel("localhost:1"), Settings(), size, "1")
    try:
        pixels = np.random.default_rng(images).integers(0, 256, (images, size, size, 3), dtype=np.uint8)
        text = "Lyon ☀ \U0001f600"
        serialized = inferer._request(InferRequest(text=text, images=pixels))  # noqa: SLF001  # the bytes sent
        sent = service_pb2.ModelInferRequest.FromString(serialized)
    finally:
        await inferer.close()
    slots = np.concatenate([pixels, np.zeros((4 - images, size, size, 3), np.uint8)])
    tensor = service_pb2.ModelInferRequest.InferInputTensor
    assert sent == service_pb2.ModelInferRequest(
        model_name="postlens",
        inputs=[
            tensor(name="TEXT", datatype="BYTES", shape=[1, 1]),
            tensor(name="IMAGES", datatype="UINT8", shape=[1, 4, size, size, 3]),
            tensor(name="IMAGE_MASK", datatype="BOOL", shape=[1, 4]),
        ],
        raw_input_contents=[
            len(text.encode()).to_bytes(4, "little") + text.encode(),  # a BYTES element: its length, then it
            slots.tobytes(),
            bytes([1] * images + [0] * (4 - images)),
        ],
    )
