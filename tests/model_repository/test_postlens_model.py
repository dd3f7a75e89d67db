"""The entry model ``postlens`` served by a real Triton: parity with in-process prediction (the ``cross`` model and
each seed strategy's), dynamic batching, per-request errors, and a new version rolling out under load."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import tritonclient.grpc.aio as grpc_aio
from tritonclient.grpc import InferInput
from tritonclient.utils import InferenceServerException

from postlens.runtime.images import load_images
from postlens.schemas import Post, PostPrediction
from postlens.settings import Settings
from stream.stages.infer import InferRequest, TritonInferer
from tests.fixtures_model import SEED_STRATEGIES
from tests.support.triton_stats import counts, counts_once_recorded
from trainer.predict import Predictor, read_posts

if TYPE_CHECKING:
    from tests.fixtures_model import ServedModel

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOLERANCE = 1e-4


def assert_same_prediction(expected: PostPrediction, actual: PostPrediction, post: Post) -> None:
    """Same entities (span, type, region image) and confidences, relevance, boxes and scores within TOLERANCE."""
    where = f"post {post.id} ({post.text!r}, {len(post.images)} images)"
    assert actual.error is None, f"{where}: {actual.error}"
    spans = [(entity.start, entity.end, entity.type, entity.text) for entity in expected.entities]
    assert [(entity.start, entity.end, entity.type, entity.text) for entity in actual.entities] == spans, where
    assert actual.image_relevance == pytest.approx(expected.image_relevance, abs=TOLERANCE), where
    for want, got in zip(expected.entities, actual.entities, strict=True):
        assert got.confidence == pytest.approx(want.confidence, abs=TOLERANCE), f"{where}: {want.text}"
        assert [region.image_index for region in got.regions] == [region.image_index for region in want.regions], where
        for want_region, got_region in zip(want.regions, got.regions, strict=True):
            assert got_region.box == pytest.approx(want_region.box, abs=TOLERANCE), f"{where}: {want.text}"
            assert got_region.score == pytest.approx(want_region.score, abs=TOLERANCE), f"{where}: {want.text}"


@pytest.fixture(scope="module")
def test_posts(model_data: Path) -> list[Post]:
    return read_posts(model_data / "test.jsonl")


def requests_for(posts: list[Post], image_size: int) -> list[InferRequest]:
    return [InferRequest(text=post.text, images=load_images(post.model_images, image_size, 4)) for post in posts]


async def assert_served_equals_in_process(
    settings: Settings, checkpoint: Path, version: str, test_posts: list[Post]
) -> None:
    """Posts with 0, 1 and 2–4 images: the model ``settings.triton_model`` serves what ``checkpoint`` predicts in
    process."""
    by_images = {count: [post for post in test_posts if min(len(post.images), 4) == count] for count in range(5)}
    posts = by_images[0][:8] + by_images[1][:8] + [post for count in (2, 3, 4) for post in by_images[count][:4]]
    assert by_images[0] and by_images[1] and any(by_images[count] for count in (2, 3, 4)), (
        "the synthetic set lacks a case"
    )
    expected = Predictor.load(checkpoint).predict(posts)
    assert any(prediction.entities for prediction in expected), (
        "the tiny model predicts nothing; parity would be vacuous"
    )

    inferer = await TritonInferer.connect(settings)
    try:
        actual = await inferer.infer(requests_for(posts, inferer.image_size))
    finally:
        await inferer.close()

    for post, want, got in zip(posts, expected, actual, strict=True):
        assert got.model.name == settings.triton_model
        assert got.model.version == version
        assert_same_prediction(want, got, post)


async def test_served_predictions_equal_in_process_predictions(
    served_model: ServedModel, tiny_checkpoint: Path, test_posts: list[Post]
) -> None:
    await assert_served_equals_in_process(served_model.settings(), tiny_checkpoint, served_model.version, test_posts)


@pytest.mark.parametrize("strategy", SEED_STRATEGIES)
async def test_each_seed_strategy_serves_what_it_predicts_in_process(
    strategy: str, served_seeds: ServedModel, seed_checkpoints: dict[str, Path], test_posts: list[Post]
) -> None:
    model = f"postlens-{strategy}"
    settings = served_seeds.settings(triton_model=model)
    await assert_served_equals_in_process(
        settings, seed_checkpoints[strategy], served_seeds.version_of(model), test_posts
    )


async def test_concurrent_requests_are_batched_without_changing_results(
    served_model: ServedModel, test_posts: list[Post]
) -> None:
    posts = test_posts[:48]
    inferer = await TritonInferer.connect(served_model.settings())
    statistics_client = grpc_aio.InferenceServerClient(served_model.url)
    try:
        requests = requests_for(posts, inferer.image_size)
        one_by_one = [(await inferer.infer([request]))[0] for request in requests]
        before = await counts(statistics_client, "postlens")
        together = await inferer.infer(requests)
        after = await counts_once_recorded(statistics_client, "postlens", before[0] + len(posts))
    finally:
        await inferer.close()
        await statistics_client.close()

    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == len(posts)
    assert executions < inferences, f"{inferences} requests took {executions} model executions: nothing was batched"
    for post, alone, batched in zip(posts, one_by_one, together, strict=True):
        assert_same_prediction(alone, batched, post)


def _raw_inputs(text: bytes, images: np.ndarray, mask: np.ndarray) -> list[InferInput]:
    tensors = {
        "TEXT": np.array([[text]], dtype=np.object_),
        "IMAGES": images[np.newaxis],
        "IMAGE_MASK": mask[np.newaxis],
    }
    types = {"TEXT": "BYTES", "IMAGES": "UINT8", "IMAGE_MASK": "BOOL"}
    inputs = []
    for name, array in tensors.items():
        tensor = InferInput(name, list(array.shape), types[name])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


async def test_bad_inputs_get_their_own_errors_and_the_model_keeps_serving(served_model: ServedModel) -> None:
    client = grpc_aio.InferenceServerClient(served_model.url)
    metadata = await client.get_model_metadata("postlens", as_json=True)
    size = int(next(tensor for tensor in metadata["inputs"] if tensor["name"] == "IMAGES")["shape"][2])
    images, mask = np.zeros((4, size, size, 3), np.uint8), np.zeros(4, bool)
    wrong_size = np.zeros((4, size // 2, size // 2, 3), np.uint8)
    bad = {  # case: (inputs, what the error names)
        "empty text": (_raw_inputs(b"", images, mask), "empty text"),
        "blank text": (_raw_inputs(b" \n\t ", images, mask), "empty text"),
        "10k-character text": (_raw_inputs(b"word " * 2000, images, mask), "over the limit"),
        "text that is not UTF-8": (_raw_inputs(b"caf\xe9 in Paris", images, mask), "UTF-8"),
        "images of the wrong size": (_raw_inputs(b"Paris", wrong_size, mask), "IMAGES"),
        "three image slots": (_raw_inputs(b"Paris", images[:3], mask), "IMAGES"),
        "a mask of three slots": (_raw_inputs(b"Paris", images, mask[:3]), "IMAGE_MASK"),
    }
    good = _raw_inputs(b"Paris is lovely", images, mask)
    try:
        # Bad and good requests together, so they may share a batch: only the bad ones fail.
        outcomes = await asyncio.gather(
            *(client.infer("postlens", inputs) for inputs, _ in bad.values()),
            *(client.infer("postlens", good) for _ in range(2)),
            return_exceptions=True,
        )
        for (case, (_, named)), outcome in zip(bad.items(), outcomes[: len(bad)], strict=True):
            assert isinstance(outcome, InferenceServerException), f"{case} was accepted"
            assert outcome.status() == "StatusCode.INVALID_ARGUMENT", f"{case}: {outcome.status()} {outcome.message()}"
            assert named in outcome.message(), f"{case}: unclear error {outcome.message()!r}"
        for outcome in outcomes[len(bad) :]:
            assert not isinstance(outcome, Exception), f"a good request failed beside bad ones: {outcome}"
            PostPrediction.model_validate_json(outcome.as_numpy("RESULT")[0][0])
        assert await client.is_model_ready("postlens")
        after = await client.infer("postlens", good)
        assert PostPrediction.model_validate_json(after.as_numpy("RESULT")[0][0]).error is None
    finally:
        await client.close()


async def test_new_version_rolls_out_under_load_without_failed_requests(
    exported_repo: Path,
    tiny_checkpoint: Path,
    start_triton: Callable[[Path], ServedModel],
    tmp_path: Path,
    test_posts: list[Post],
) -> None:
    from trainer.export import export_model, load_in_triton

    served = start_triton(Path(shutil.copytree(exported_repo, tmp_path / "repository")))
    inferer = await TritonInferer.connect(served.settings())
    requests = requests_for(test_posts[:4], inferer.image_size)
    answers: list[PostPrediction] = []
    failures: list[BaseException] = []
    switched = asyncio.Event()

    async def steady_stream() -> None:
        # A few posts in flight all the time, until two seconds after the switch.
        stop_at: float | None = None
        while stop_at is None or time.monotonic() < stop_at:
            if stop_at is None and switched.is_set():
                stop_at = time.monotonic() + 2.0
            try:
                answers.extend(await inferer.infer(requests))
            except Exception as error:  # noqa: BLE001 — every failure is counted; none may happen
                failures.append(error)

    def roll_out() -> str:
        version_dir = export_model(tiny_checkpoint, served.repo)
        return load_in_triton(served.http_url, "postlens", int(version_dir.name))

    stream = asyncio.create_task(steady_stream())
    try:
        outcome = await asyncio.to_thread(roll_out)
        switched.set()
        await stream
    finally:
        switched.set()
        await inferer.close()

    assert "version 2" in outcome
    assert not failures, f"{len(failures)} requests failed during the rollout, e.g. {failures[0]!r}"
    errors = [answer.error for answer in answers if answer.error]
    assert not errors, f"{len(errors)} posts were refused during the rollout: {errors[0]}"
    versions = [answer.model.version for answer in answers]
    assert versions[0] == "1" and versions[-1] == "2", f"served versions went {versions[0]} … {versions[-1]}"
    assert set(versions) == {"1", "2"}
